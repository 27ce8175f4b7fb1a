"""Edit success against locality for a trained editor whose edits are scaled.

  python benchmarks/edit_scale.py runs/gen_mend_world
  python benchmarks/edit_scale.py runs/gen_mend_world --scales 0.5,1,1.25,1.5,2

Restores the editor a run kept (its best checkpoint), multiplies every learned
step size α (`params["edit_lrs"]`) by each scale s, and scores the whole
validation split as the run's final evaluation does. s = 1 is the run's own
result. The rows trace the edit-success / drawdown frontier that the editor
reaches, so that a run's operating point can be told apart from its capacity:
the training loss c_edit·L_edit + c_loc·L_loc chooses where on the frontier
early stopping keeps it.
"""
import argparse
import json
import os
import tempfile

import ml_collections

from mend_jax import config_checks, experiments
from mend_jax.checkpointing import Checkpointer
from mend_jax.trainer import Trainer


def kept_state(run_dir: str, trainer: Trainer):
    ckpt = Checkpointer(run_dir, async_save=False)
    try:
        state = ckpt.restore(trainer.init_state(), "best")
    finally:
        ckpt.close()
    if state is None:
        raise SystemExit(f"{run_dir}: no best checkpoint under checkpoints/ (a finished training run is needed)")
    return state


def scaled(state, scale: float):
    return state.replace(params={**state.params, "edit_lrs": state.params["edit_lrs"] * scale})


def frontier(run_dir: str, scales, eval_steps: int = -1):
    """[{scale, edit_success, drawdown, n_edits, metrics}] for the kept editor of `run_dir`, and (config, state)."""
    saved = config_checks.load(run_dir)
    if saved is None:
        raise SystemExit(f"{run_dir}: no {os.path.relpath(config_checks.config_path(run_dir), run_dir)}")
    config = ml_collections.ConfigDict(saved)
    trainer = Trainer(config, experiments.build(config), tempfile.mkdtemp(prefix="edit_scale_"))
    state = kept_state(run_dir, trainer)
    if "edit_lrs" not in state.params:
        raise SystemExit(f"{run_dir}: a {config.alg} editor has no learned step sizes (params['edit_lrs']) to scale")
    rows = []
    for scale in scales:
        m = trainer.evaluate(scaled(state, float(scale)), eval_steps)
        rows.append({"scale": float(scale), "edit_success": m["edit/acc"], "drawdown": m["drawdown"],
                     "n_edits": m["n_edits_evaluated"]})
        print(json.dumps(rows[-1]), flush=True)
        rows[-1]["metrics"] = m
    return rows, config, state


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="the --workdir of a finished MEND or ENN run")
    ap.add_argument("--scales", default="0.75,1,1.1,1.25,1.5,2")
    ap.add_argument("--eval_steps", type=int, default=-1, help="validation batches to score (-1: all)")
    args = ap.parse_args()
    rows, config, state = frontier(args.run_dir, args.scales.split(","), args.eval_steps)
    kind = "ppl" if config.task == "gen" else "acc"
    print(f"\n{args.run_dir}: {config.alg}, kept step {int(state.best_step)}, {rows[-1]['n_edits']} validation edits")
    print(f"| α scale | edit success | {kind} drawdown |\n| --- | --- | --- |")
    for r in rows:
        print(f"| {r['scale']:g} | {r['edit_success']:.3f} | {r['drawdown']:+.3f} |")


if __name__ == "__main__":
    main()
