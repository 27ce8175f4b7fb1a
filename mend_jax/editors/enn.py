"""Editable Neural Networks (Sinitsin et al. 2020), as the MEND reference runs them.

An edit is `n_edit_steps` steps of plain SGD on the inner matrices,
W ← W − α_l ∇_W L_edit, with one learnable α_l per matrix (init `edit_lr`).
The meta-gradient flows through the steps: second order by default (JAX
differentiates through `jax.grad`); `first_order=True` treats each inner
gradient as a constant, like the reference's `fomaml_callback`. With
`train_base=True` (the reference's ENN default) the base model is meta-trained
too; see train_base.py.
"""
import jax
import ml_collections

from mend_jax.editors.base import EditTarget, Params, edit_lrs_init, inner_values, replace_inner


class ENN:
    def __init__(self, target: EditTarget, base_params: Params, cfg: ml_collections.ConfigDict, edit_lr: float):
        if cfg.n_edit_steps < 1:
            raise ValueError(f"enn.n_edit_steps must be >= 1, got {cfg.n_edit_steps}")
        self.target = target
        self.cfg = cfg
        self.edit_lr = edit_lr

    def init(self, rng: jax.Array, base_params: Params):
        return {"edit_lrs": edit_lrs_init(len(self.target.inner_paths), self.edit_lr)}, {}

    def param_labels(self, params: Params):
        return {"edit_lrs": "edit_lrs"}

    def edit_loss(self, base_params: Params, inner, edit_batch) -> jax.Array:
        params = replace_inner(base_params, dict(zip(self.target.inner_paths, inner)))
        return self.target.nll(self.target.logits(params, edit_batch), edit_batch)

    def edit(self, params: Params, stats, base_params: Params, edit_batch, train: bool):
        inner = inner_values(base_params, self.target.inner_paths)
        pre_loss = None
        for _ in range(self.cfg.n_edit_steps):
            loss, grads = jax.value_and_grad(self.edit_loss, argnums=1)(base_params, inner, edit_batch)
            if self.cfg.first_order:
                grads = jax.lax.stop_gradient(grads)
            pre_loss = loss if pre_loss is None else pre_loss
            inner = tuple(w - (lr * g).astype(w.dtype) for w, g, lr in zip(inner, grads, params["edit_lrs"]))
        edited = replace_inner(base_params, dict(zip(self.target.inner_paths, inner)))
        return edited, stats, {"loss/pre_edit": pre_loss}
