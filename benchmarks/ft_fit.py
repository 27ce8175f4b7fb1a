"""How well FT fits the edits it makes together: the edited prompts against their rephrasings.

  python benchmarks/ft_fit.py runs/multi_edit_ft/ft_25     # after benchmarks/multi_edit.py --algs ft

FT takes RMSprop steps until every edit of its batch is answered right on the
edited prompt (or `ft.max_edit_steps` are spent). This edits each validation
batch of a finished FT run once and prints the accuracy on the edited prompts
(edit_inner: what FT fits), on their rephrasings (edit_outer: edit success) and
the steps each batch took. A batch whose edited prompts are all right shows
that the inner matrices can hold its k edits at once.
"""
import argparse

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mend_jax import config_checks, experiments, losses, meta


def fit(config):
    exp = experiments.build(config)
    editor, target = exp.editor, exp.editor.target
    edit = jax.jit(lambda batch: editor.edit({}, {}, exp.base_params, batch, train=False))
    correct = {"edit_inner": [], "edit_outer": []}
    steps = []
    for i in range(exp.val_data.n_eval_batches):
        batch = jax.tree_util.tree_map(jnp.asarray, exp.val_data.eval_batch(i))
        edited, _, info = edit(meta.edit_inputs(batch))
        for name, rows in correct.items():
            stats = losses.token_stats(target.logits(edited, batch[name]), batch[name]["labels"], target.shift_labels)
            rows.append(np.asarray(stats.correct))
        steps.append(int(info["edit/n_steps"]))
    return {name: float(np.concatenate(rows).mean()) for name, rows in correct.items()}, steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="the --workdir of an FT run (benchmarks/multi_edit.py --algs ft, or the train CLI)")
    args = ap.parse_args()
    saved = config_checks.load(args.run_dir)
    if saved is None:
        raise SystemExit(f"{args.run_dir}: no saved config")
    config = ml_collections.ConfigDict(saved)
    if config.alg != "ft":
        raise SystemExit(f"{args.run_dir}: alg {config.alg!r}; this measures FT's fit")
    acc, steps = fit(config)
    cap = config.ft.max_edit_steps
    print(f"{args.run_dir}: k = {config.data.n_edits}, {len(steps)} batches")
    print("| edited prompts right | rephrasings right | steps per batch (mean / max) | batches at the step cap |")
    print("| --- | --- | --- | --- |")
    print(f"| {acc['edit_inner']:.3f} | {acc['edit_outer']:.3f} | {np.mean(steps):.1f} / {max(steps)} "
          f"| {sum(s >= cap for s in steps)} of {len(steps)} |")


if __name__ == "__main__":
    main()
