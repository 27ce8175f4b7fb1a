"""MEND, ENN, EFK, FT and FT+KL on the embedded world's gen experiment, through one trainer.

  python benchmarks/compare_editors.py                       # the full schedule of configs/gen.py
  python benchmarks/compare_editors.py --max_iters 500       # shorter meta-training
  python benchmarks/compare_editors.py --algs mend,ft --final_eval_steps 100

Each editor is meta-trained (FT and FT+KL have nothing to train) with
configs/gen.py's world settings and its algorithm's world defaults
(config_lib.WORLD_ALG_DEFAULTS), then evaluated once on the validation edits.
Prints a markdown table: edit success (edit/acc_val), perplexity drawdown
(perplexity/post - perplexity/pre), the median time of one jitted edit, the
wall time of meta-training (compilation and periodic validation included, the
final evaluation not), the steps trained and the step of the editor that early
stopping kept (the best loss/total_edit_val, as in the reference), next to the
paper's distilGPT-2 column.
"""
import argparse
import json
import os
import shutil
import time

import common

EDITORS = {  # name: (alg, config overrides)
    "mend": ("mend", {}),
    "enn": ("enn", {}),
    "efk": ("efk", {}),
    "ft": ("ft", {}),
    "ft+kl": ("ft", {"ft.locality": True}),
}
PAPER = {  # distilGPT-2 on wikitext: edit success / perplexity drawdown (MEND paper, Table 3)
    "ft": (0.29, 0.938), "ft+kl": (0.17, 0.059), "enn": (0.93, 0.094), "efk": (0.25, 0.595), "mend": (0.86, 0.225),
}
LABELS = {"mend": "MEND", "enn": "ENN", "efk": "EFK (KE)", "ft": "FT", "ft+kl": "FT+KL"}


def gen_config(alg: str, overrides: dict, args):
    c = common.shorten(common.override(common.load_config("gen"), {"alg": alg, **overrides}), args.max_iters)
    c.final_eval_steps = args.final_eval_steps
    c.async_checkpointing = False
    return c


def run_one(name: str, args) -> dict:
    from mend_jax import experiments
    from mend_jax.trainer import Trainer

    alg, overrides = EDITORS[name]
    config = gen_config(alg, overrides, args)
    workdir = os.path.join(args.workdir, name.replace("+", "_"))
    if os.path.isdir(workdir) and not args.resume:
        shutil.rmtree(workdir)
    experiment = experiments.build(config)
    start = time.perf_counter()
    results = Trainer(config, experiment, workdir).run()
    total = time.perf_counter() - start
    trained = results["steps_trained"]
    r = results["results"]
    return {
        "editor": name,
        "edit_success": r["edit/acc_val"],
        "ppl_drawdown": r["drawdown_val"],
        "ppl_pre": r["perplexity/pre_val"],
        "edit_time_s": r["time/edit_val"],
        "train_time_s": max(total - r["time/eval_val"], 0.0) if trained else 0.0,
        "steps": trained,
        # The validation step of the editor early stopping kept (best loss/total_edit_val), as the
        # main command prints it; results["step"] counts that editor's updates (one more).
        "selected_step": results["kept_step"],
        "n_edits": int(r["n_edits_evaluated_val"]),
        "results_path": results["results_path"],
    }


def table(rows) -> str:
    lines = [
        "| editor | edit success | perplexity drawdown | edit time | training time | steps trained / kept "
        "| paper (distilGPT-2) ES / DD |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        es, dd = PAPER[row["editor"]]
        train = f"{row['train_time_s']:.0f} s" if row["steps"] else "none"
        steps = f"{row['steps']} / {row['selected_step']}" if row["steps"] else "-"
        lines.append(
            f"| {LABELS[row['editor']]} | {row['edit_success']:.3f} | {row['ppl_drawdown']:+.3f} "
            f"| {row['edit_time_s'] * 1e3:.1f} ms | {train} | {steps} | {es:.2f} / {dd:.3f} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algs", default=",".join(EDITORS), help=f"comma-separated subset of {','.join(EDITORS)}")
    ap.add_argument("--max_iters", type=int, default=None, help="meta-training steps (default: configs/gen.py's)")
    ap.add_argument("--final_eval_steps", type=int, default=-1, help="validation edits to score (-1: all)")
    ap.add_argument("--workdir", default=os.path.join("runs", "compare_editors"))
    ap.add_argument("--resume", action="store_true", help="continue runs found in --workdir instead of restarting")
    args = ap.parse_args()
    names = [n.strip() for n in args.algs.split(",") if n.strip()]
    unknown = [n for n in names if n not in EDITORS]
    if unknown:
        ap.error(f"unknown editors {unknown}; choose from {list(EDITORS)}")
    rows = []
    for name in names:
        print(f"=== {name}", flush=True)
        rows.append(run_one(name, args))
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "summary.json"), "w") as f:
        json.dump(rows, f, indent=2)
    n_edits = {row["n_edits"] for row in rows}
    print(f"\ngen on the embedded world, {'/'.join(map(str, sorted(n_edits)))} validation edits")
    print(table(rows))


if __name__ == "__main__":
    main()
