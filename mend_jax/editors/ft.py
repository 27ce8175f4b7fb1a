"""Fine-tuning baselines: FT, and FT+KL with `ft.locality=True`.

An edit is up to `max_edit_steps` RMSprop steps (PyTorch's defaults: decay
0.99, eps 1e-8 outside the square root) on additive residuals of the inner
matrices, at `edit_lr`, with gradients clipped to `grad_clip`. Before each step
the edit is checked: once every labelled token of the edit is the argmax, it
stops. FT+KL minimises `locality_cedit · L_edit + KL(p_base ‖ p_edited)` on a
held-out locality batch: the first training batch's, bound by the trainer.

There is nothing to meta-train (`needs_training = False`). The loop is a
`lax.while_loop`, so an edit stays jittable and vmaps over many edits (each
stops on its own: finished edits no longer change).
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mend_jax import losses
from mend_jax.editors.base import EditTarget, Params, add_to_inner, inner_values


class FT:
    needs_training = False

    def __init__(
        self, target: EditTarget, base_params: Params, cfg: ml_collections.ConfigDict, edit_lr: float,
        grad_clip: float, heldout_loc=None,
    ):
        self.target = target
        self.cfg = cfg
        self.heldout_loc = heldout_loc
        self.optimizer = optax.chain(
            optax.clip_by_global_norm(grad_clip),
            optax.rmsprop(edit_lr, decay=0.99, eps=1e-8, eps_in_sqrt=False),
        )

    def bind_data(self, train_data) -> None:
        """FT+KL's held-out locality batch: the first training batch's locality part."""
        if self.cfg.locality and self.heldout_loc is None:
            self.heldout_loc = jax.tree_util.tree_map(jnp.asarray, train_data.train_batch(0)["loc"])

    def init(self, rng: jax.Array, base_params: Params):
        return {}, {}

    def param_labels(self, params: Params):
        return {}

    def edit(self, params: Params, stats, base_params: Params, edit_batch, train: bool):
        from mend_jax.meta import loc_mask  # imported here: meta imports the editors package

        target, cfg, paths = self.target, self.cfg, self.target.inner_paths
        if cfg.locality:
            if self.heldout_loc is None:
                raise ValueError("FT+KL needs a held-out locality batch: call bind_data(train_data) first")
            loc = self.heldout_loc
            loc_pre = jax.lax.stop_gradient(target.logits(base_params, loc))

        def loss_fn(residuals):
            edited = add_to_inner(base_params, dict(zip(paths, residuals)))
            logits = target.logits(edited, edit_batch)
            loss = target.nll(logits, edit_batch)
            if cfg.locality:
                kl = losses.kl_loc(loc_pre, target.logits(edited, loc), loc_mask(loc))
                loss = cfg.locality_cedit * loss + kl
            return loss, logits

        def succeeded(logits):
            return losses.token_stats(logits, edit_batch["labels"], target.shift_labels).correct.all()

        def step(carry):
            n_steps, residuals, opt_state, _ = carry
            (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(residuals)
            done = succeeded(logits)
            updates, new_opt_state = self.optimizer.update(grads, opt_state, residuals)
            new_residuals = optax.apply_updates(residuals, updates)
            keep = lambda old, new: jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), old, new)
            n_steps = n_steps + (~done).astype(jnp.int32)
            return n_steps, keep(residuals, new_residuals), keep(opt_state, new_opt_state), done

        def not_finished(carry):
            n_steps, _, _, done = carry
            return (~done) & (n_steps < cfg.max_edit_steps)

        residuals = tuple(jnp.zeros_like(w) for w in inner_values(base_params, paths))
        carry = (jnp.zeros((), jnp.int32), residuals, self.optimizer.init(residuals), jnp.zeros((), bool))
        n_steps, residuals, _, _ = jax.lax.while_loop(not_finished, step, carry)
        pre_loss = target.nll(target.logits(base_params, edit_batch), edit_batch)
        info = {"loss/pre_edit": pre_loss, "edit/n_steps": n_steps.astype(jnp.float32)}
        return add_to_inner(base_params, dict(zip(paths, residuals))), stats, info
