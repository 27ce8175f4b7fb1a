"""fc: a run's editor on flips and on keeps apart, and how MEND's edit follows the gradient.

  python benchmarks/flip_keep.py runs/fc_mend_world
  python benchmarks/flip_keep.py runs/fc_mend_world --scales 1,2,4
  python benchmarks/flip_keep.py runs/fc_ft_world              # FT: no α's to scale

An fc edit sets a claim's label to the alternative (a flip) or to the model's own
prediction (a keep) with probability 0.5 each. This scores the whole dev split twice,
every edit a flip and every edit a keep, with a trained editor's α's scaled by s
(as benchmarks/edit_scale.py does). For MEND it then compares, per inner matrix of
the first --grad_batches dev edits, the raw gradient Σ x ⊗ δ with the editor's
pseudo-gradient Σ ũ ⊗ δ̃: their sizes and the cosine between them.
"""
import argparse
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from edit_scale import kept_state, scaled
from mend_jax import config_checks, experiments, meta
from mend_jax.editors.mend import MEND, inner_factors
from mend_jax.trainer import Trainer


def split_scores(trainer, data, state, scales, learned: bool):
    rows = []
    for flip_prob, name in ((1.0, "flips"), (0.0, "keeps")):
        data.flip_prob = flip_prob
        for s in (scales if learned else [1.0]):
            m = trainer.evaluate(scaled(state, s) if learned else state, -1)
            rows.append((name, s, m["edit/acc"], m["drawdown"], m["loss/edit"], m["loss/pre_edit"]))
    data.flip_prob = 0.5
    return rows


def edit_and_gradient(exp, editor: MEND, state, batch):
    """{inner path: (raw gradient Σ x ⊗ δ, MEND's pseudo-gradient Σ ũ ⊗ δ̃)} for one edit batch."""
    target = editor.target
    _, _, factors = inner_factors(target.module, exp.base_params, target.inner_paths, target.nll,
                                  meta.edit_inputs(batch))
    pseudo, _ = editor.pseudo_gradients(state.params, state.stats, factors, False)
    out = {}
    for path in target.inner_paths:
        x, delta = (f.astype(jnp.float32) for f in factors[path])
        out[path] = (jnp.einsum("...i,...o->io", x, delta), pseudo[path])
    return out


def gradient_following(exp, editor: MEND, state, n_batches: int):
    out = []
    for flip_prob, name in ((1.0, "flips"), (0.0, "keeps")):
        exp.val_data.flip_prob = flip_prob
        raw, pseudo, cos = [], [], []
        for i in range(n_batches):
            batch = jax.tree_util.tree_map(jnp.asarray, exp.val_data.eval_batch(i))
            for g, p in edit_and_gradient(exp, editor, state, batch).values():
                raw.append(float(jnp.linalg.norm(g)))
                pseudo.append(float(jnp.linalg.norm(p)))
                cos.append(float(jnp.vdot(g, p) / (raw[-1] * pseudo[-1] + 1e-30)))
        out.append((name, np.median(raw), np.median(pseudo), np.median(cos)))
    exp.val_data.flip_prob = 0.5
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="the --workdir of a finished fc run")
    ap.add_argument("--scales", default="1,2,4")
    ap.add_argument("--grad_batches", type=int, default=100, help="dev edits for the gradient comparison")
    args = ap.parse_args()
    saved = config_checks.load(args.run_dir)
    if saved is None:
        raise SystemExit(f"{args.run_dir}: no saved config (a finished fc run is needed)")
    config = ml_collections.ConfigDict(saved)
    if config.task != "fc":
        raise SystemExit(f"{args.run_dir}: task {config.task!r}; flips and keeps exist only in fc")
    exp = experiments.build(config)
    trainer = Trainer(config, exp, tempfile.mkdtemp(prefix="flip_keep_"))
    learned = config.alg != "ft"
    state = kept_state(args.run_dir, trainer) if learned else trainer.init_state()
    learned = learned and "edit_lrs" in state.params
    print(f"\n{args.run_dir}: {config.alg}")
    print("| edits | α scale | edit success | acc drawdown | loss on the rephrase, edited | loss on the claim, unedited |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, s, es, dd, loss, pre in split_scores(trainer, exp.val_data, state, [float(s) for s in args.scales.split(",")], learned):
        print(f"| {name} | {s:g} | {es:.3f} | {dd:+.3f} | {loss:.3f} | {pre:.3f} |")
    editor = getattr(exp.editor, "editor", exp.editor)  # a train_base wrapper holds the editor
    if isinstance(editor, MEND):
        print(f"\nMEND's edit against the raw gradient, median over the inner matrices of {args.grad_batches} dev edits:")
        print("| edits | raw gradient norm | pseudo-gradient norm | cosine |\n| --- | --- | --- | --- |")
        for name, raw, pseudo, cos in gradient_following(exp, editor, state, args.grad_batches):
            print(f"| {name} | {raw:.3g} | {pseudo:.3g} | {cos:+.3f} |")


if __name__ == "__main__":
    main()
