"""Schedule sweep on an embedded-world experiment, selected as the reference selects.

  python benchmarks/world_sweep.py --task gen --grid lr=1e-3,3e-4,1e-4
  python benchmarks/world_sweep.py --task gen --grid lr=1e-4 --grid c_loc=1,3 --max_iters 3000

Every combination of the `--grid KEY=V1,V2,...` values (dotted config keys, as on
the command line) is meta-trained with configs/TASK.py's world settings. A run's
editor is the one early stopping keeps, the lowest validation `loss/total_edit`,
as in the reference; the table gives that editor's final evaluation on the whole
validation split, the step it was kept at, the training-split edit success near
that step (to show over-fitting), and the wall time of the whole run. Choose
between runs by the first column, the reference's selection metric.
"""
import argparse
import ast
import itertools
import json
import os
import shutil
import time

import common


def parse_grid(items):
    grid = {}
    for item in items:
        key, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"--grid expects KEY=V1,V2,..., got {item!r}")
        grid[key] = [_value(v) for v in values.split(",")]
    return grid


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def train_success_near(rows, step: int, window: int) -> float:
    """Mean training edit success over the logged steps within `window` before `step`."""
    near = [r["edit/acc"] for r in rows if "edit/acc" in r and step - window <= r["step"] <= step]
    return sum(near) / len(near) if near else float("nan")


def run_one(task: str, overrides: dict, args) -> dict:
    from mend_jax import experiments
    from mend_jax.metric_log import read_metrics
    from mend_jax.trainer import Trainer

    config = common.load_config(task)
    config.async_checkpointing = False
    if args.max_iters is not None:
        config.max_iters = args.max_iters
    common.override(config, overrides)
    name = ",".join(f"{k}={v}" for k, v in overrides.items()) or "default"
    workdir = os.path.join(args.workdir, task, name.replace("/", "_"))
    if os.path.isdir(workdir):
        shutil.rmtree(workdir)
    start = time.perf_counter()
    results = Trainer(config, experiments.build(config), workdir).run()
    wall = time.perf_counter() - start
    r = results["results"]
    history = read_metrics(workdir)
    val = [row for row in history if "edit/acc_val" in row]
    return {
        "run": name,
        "best_val_loss": min(row["loss/total_edit_val"] for row in val),
        "edit_success": r["edit/acc_val"],
        "drawdown": r["drawdown_val"],
        "kept_step": results["kept_step"],
        "train_edit_success": train_success_near(history, results["kept_step"], config.val_interval),
        "val_curve": [(row["step"], round(row["edit/acc_val"], 3), round(row["drawdown_val"], 3)) for row in val],
        "wall_s": wall,
    }


def table(task: str, rows) -> str:
    dd = "ppl drawdown" if task == "gen" else "acc drawdown"
    lines = [
        f"| run | best val loss/total_edit | edit success | {dd} | kept step | train ES near it "
        "| validations (step: ES / DD) | wall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        curve = ", ".join(f"{s}: {es:.2f}/{d:+.2f}" for s, es, d in row["val_curve"])
        lines.append(
            f"| {row['run']} | {row['best_val_loss']:.4f} | {row['edit_success']:.3f} | {row['drawdown']:+.3f} | {row['kept_step']} "
            f"| {row['train_edit_success']:.2f} | {curve} | {row['wall_s']:.0f} s |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="gen", choices=["gen", "qa", "fc"])
    ap.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,... (repeat for a product)")
    ap.add_argument("--max_iters", type=int, default=None)
    ap.add_argument("--workdir", default=os.path.join("runs", "world_sweep"))
    args = ap.parse_args()
    grid = parse_grid(args.grid)
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
    rows = []
    for overrides in combos:
        print(f"=== {overrides}", flush=True)
        rows.append(run_one(args.task, overrides, args))
        print(table(args.task, rows[-1:]), flush=True)
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, f"{args.task}_summary.json"), "a") as f:
        f.write(json.dumps(rows) + "\n")
    print(f"\n{args.task} on the embedded world")
    print(table(args.task, rows))


if __name__ == "__main__":
    main()
