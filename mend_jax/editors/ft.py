"""Fine-tuning baselines: FT, and FT+KL with `ft.locality=True`.

An edit is up to `max_edit_steps` RMSprop steps (PyTorch's defaults: decay
0.99, eps 1e-8 outside the square root) on additive residuals of the inner
matrices, at `edit_lr`, with gradients clipped to `grad_clip`. Before each step
the edit is checked: once every labelled token of the edit is the argmax, it
stops. FT+KL minimises `locality_cedit · L_edit + KL(p_base ‖ p_edited)` on
training-split locality data, bound by the trainer (`bind_data`):

* `locality_oracle=True` (the reference's default): every inner step draws a
  fresh locality batch of `locality_batch_size` examples, as the reference's
  `loc_sampler` does. The draws come from a pool of `locality_pool_size`
  batches built from the training data; which one a step gets is a
  pseudo-random function of the edit's tokens and the step, so an edit stays
  a pure function of its inputs.
* `locality_oracle=False`: one fixed batch (drawn from the start of the
  training stream, as the reference draws its with seed 0) at every step.

There is nothing to meta-train (`needs_training = False`). The loop is a
`lax.while_loop`, so an edit stays jittable and vmaps over many edits (each
stops on its own: finished edits no longer change).
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mend_jax import losses
from mend_jax.clipping import clip_grad_norm_like_torch
from mend_jax.data.batching import concat_rows, stack_batches
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
            clip_grad_norm_like_torch(grad_clip),
            optax.rmsprop(edit_lr, decay=0.99, eps=1e-8, eps_in_sqrt=False),
        )

    def bind_data(self, train_data) -> None:
        """FT+KL's locality batches, from the training data: a pool of them with
        `locality_oracle`, else one fixed batch (stored with a pool axis of 1)."""
        if not self.cfg.locality or self.heldout_loc is not None:
            return
        size = self.cfg.locality_batch_size
        n_batches = self.cfg.locality_pool_size if self.cfg.locality_oracle else 1
        self.heldout_loc = locality_pool(train_data, n_batches, size)

    def _locality_batch(self, edit_batch, step: jax.Array):
        """The pool entry for inner step `step` of this edit."""
        n = jax.tree_util.tree_leaves(self.heldout_loc)[0].shape[0]
        ids = edit_batch["input_ids"].astype(jnp.uint32).reshape(-1)
        position = jnp.arange(ids.shape[0], dtype=jnp.uint32)
        edit_hash = jnp.sum(ids * (position * jnp.uint32(2654435761) + jnp.uint32(1)))  # wraps mod 2**32
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), edit_hash), step)
        index = jax.random.randint(key, (), 0, n) if n > 1 else 0
        return jax.tree_util.tree_map(lambda pool: pool[index], self.heldout_loc)

    def init(self, rng: jax.Array, base_params: Params):
        return {}, {}

    def param_labels(self, params: Params):
        return {}

    def edit(self, params: Params, stats, base_params: Params, edit_batch, train: bool):
        from mend_jax.meta import loc_mask  # imported here: meta imports the editors package

        target, cfg, paths = self.target, self.cfg, self.target.inner_paths
        if cfg.locality and self.heldout_loc is None:
            raise ValueError("FT+KL needs held-out locality batches: call bind_data(train_data) first")

        def loss_fn(residuals, n_steps):
            edited = add_to_inner(base_params, dict(zip(paths, residuals)))
            logits = target.logits(edited, edit_batch)
            loss = target.nll(logits, edit_batch)
            if cfg.locality:
                loc = self._locality_batch(edit_batch, n_steps)
                loc_pre = jax.lax.stop_gradient(target.logits(base_params, loc))
                kl = losses.kl_loc(loc_pre, target.logits(edited, loc), loc_mask(loc))
                loss = cfg.locality_cedit * loss + kl
            return loss, logits

        def succeeded(logits):
            return losses.token_stats(logits, edit_batch["labels"], target.shift_labels).correct.all()

        def step(carry):
            n_steps, residuals, opt_state, _ = carry
            (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(residuals, n_steps)
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


def locality_pool(train_data, n_batches: int, size: int):
    """`n_batches` locality batches of `size` examples, stacked on a leading axis: the
    locality parts of consecutive training batches, concatenated and cut to `size`; batches
    padded to different lengths (length buckets) are padded to the longest."""
    if size < 1 or n_batches < 1:
        raise ValueError(f"ft.locality_batch_size and ft.locality_pool_size must be >= 1, got {size}, {n_batches}")
    step = 0
    pool = []
    for _ in range(n_batches):
        parts, rows = [], 0
        while rows < size:
            loc = train_data.train_batch(step)["loc"]
            step += 1
            parts.append(loc)
            rows += jax.tree_util.tree_leaves(loc)[0].shape[0]
        pool.append(jax.tree_util.tree_map(lambda x: x[:size], concat_rows(parts)))
    return jax.tree_util.tree_map(jnp.asarray, stack_batches(pool))
