"""Data-parallel meta-training: the batches of an accumulation window side by side.

With D devices on the mesh's `data` axis, one jitted `group_step` takes up to D
consecutive batches, one per data-parallel device, and leaves the train state
as D sequential `grad_step`s would (to fp32 rounding):

* every batch's gradient is taken at the same editor parameters, as the
  sequential steps between two updates are;
* an editor with running statistics (MEND's normalisation) edits batch i with
  the statistics of the batches before it: each device computes its batch's
  moments, and a short scan merges them in order (`stats_moments`,
  `merge_moments`), exactly what the sequential steps do;
* the accumulation windows end where they end one batch at a time (after batches
  accumulate_bs, 2 accumulate_bs, ...), so groups end on multiples of D (`group`):
  the first group is batch 0 alone, and a run resumed at any step rejoins the grid.
"""
from typing import Callable, List

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mend_jax import meta
from mend_jax.accumulation import accumulate, starts_window


def group(step: int, n_data: int, max_iters: int) -> List[int]:
    """The batches the group starting at `step` takes: up to the next multiple of n_data."""
    end = step if step % n_data == 0 else step + n_data - step % n_data
    return list(range(step, min(end, max_iters - 1) + 1))


def padded(indices: List[int], n_data: int) -> List[int]:
    """`indices` filled up to n_data rows (repeats of the first, masked out by `valid`)."""
    return indices + [indices[0]] * (n_data - len(indices))


def all_finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves] + [jnp.array(True)]))


def norm_and_finite(grads):
    """(global L2 norm, whether every entry is finite) of a gradient, reading it once in the
    common case. A NaN or ±inf entry makes Σ g² NaN or +inf, so a finite sum proves every entry
    finite; only a non-finite sum (a bad batch, or finite entries too large to square) pays for
    the exact test. XLA:CPU runs the sum of squares at memory speed and `all_finite`'s
    and-reduction 5x slower (62 ms against 12 on one core for MEND's 236 MB editor gradient
    on bert-base)."""
    total = sum((jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)), jnp.zeros((), jnp.float32))
    finite = jax.lax.cond(jnp.isfinite(total), lambda: jnp.array(True), lambda: all_finite(grads))
    return jnp.sqrt(total), finite


def tracks_stats(editor) -> bool:
    """Whether training the editor updates running statistics batch by batch."""
    return hasattr(editor, "merge_moments")


def per_batch(fn: Callable, mesh, in_specs, in_axes) -> Callable:
    """`fn` on each device of the data axis for its own batch (rows of the arguments whose
    spec is P("data")), the fsdp axis left to XLA's partitioner. A shard_map states the
    one-batch-per-device split instead of leaving it to propagation (benchmarks/scaling.py:
    each device's FLOPs are one batch's)."""
    return jax.shard_map(jax.vmap(fn, in_axes=in_axes), mesh=mesh, in_specs=in_specs, out_specs=P("data"),
                         axis_names=frozenset({"data"}), check_vma=False)


def make_group_step(editor, loss_fn: Callable, accumulate_bs: int, mesh, grad_shardings=None) -> Callable:
    """group_step(state, base_params, batches, valid) -> (state, per-batch sums).

    `batches` stack D batches on a leading axis sharded over `data`; `valid` (D,) masks
    the padding rows of a short group. `grad_shardings`: where each batch's gradient
    lives (the parameter's own sharding, plus `data` on the leading axis).
    """

    def batch_gradient(params, stats, base_params, batch):
        (loss, (_, sums)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, base_params, batch)
        sums["grad_norm"], finite = norm_and_finite(grads)
        return grads, finite & jnp.isfinite(loss), sums

    def stats_before_each(state, base_params, batches, valid):
        """(the statistics each batch is edited with, the statistics after the last)."""
        moments = per_batch(
            lambda params, base, batch: editor.stats_moments(params, base, meta.edit_inputs(batch)),
            mesh, in_specs=(P(), P(), P("data")), in_axes=(None, None, 0),
        )(state.params, base_params, batches)

        def merge(stats, inputs):
            batch_moments, is_valid = inputs
            new = editor.merge_moments(stats, batch_moments)
            # As grad_step: a batch whose statistics would be non-finite leaves them as they were.
            keep = is_valid & all_finite(new)
            return jax.tree_util.tree_map(lambda n, o: jnp.where(keep, n, o), new, stats), stats

        return jax.lax.scan(merge, state.stats, (moments, valid))[::-1]

    def group_step(state, base_params, batches, valid):
        n = valid.shape[0]
        if tracks_stats(editor):
            befores, stats = stats_before_each(state, base_params, batches, valid)
        else:
            befores = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), state.stats)
            stats = state.stats
        grads, finite, sums = per_batch(
            batch_gradient, mesh, in_specs=(P(), P("data"), P(), P("data")), in_axes=(None, 0, None, 0)
        )(state.params, befores, base_params, batches)
        if grad_shardings is not None:
            grads = jax.lax.with_sharding_constraint(grads, grad_shardings)
        use = valid & finite

        def group_sum(g):
            mask = use.reshape((n,) + (1,) * (g.ndim - 1))  # where, not a 0 weight: 0 * inf is nan
            return jnp.sum(jnp.where(mask, g / accumulate_bs, jnp.zeros_like(g)), axis=0)

        # A group lies within one window (config_checks.check_data_parallel): its first batch says.
        fresh = starts_window(state.step, accumulate_bs)
        state = state.replace(
            stats=stats,
            grad_acc=accumulate(state.grad_acc, jax.tree_util.tree_map(group_sum, grads), fresh),
            step=state.step + valid.sum(dtype=jnp.int32),
            n_skipped=state.n_skipped + (valid & ~finite).sum(dtype=jnp.int32),
        )
        return state, sums

    return group_step
