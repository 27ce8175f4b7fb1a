"""Gradient accumulation windows, as the reference schedules them.

Meta-training sums `accumulate_bs` batches' gradients (each divided by `accumulate_bs`) and
then applies one optimizer update. The accumulator is not zeroed by the update: the first
batch of the next window replaces it instead of adding to it.
"""
import jax
import jax.numpy as jnp


def applies_update(step: int, accumulate_bs: int) -> bool:
    """Whether the accumulated gradient is applied after batch `step` (0-based).

    As in the reference (`global_iter > 0 and global_iter % accumulate_bs == 0`): the
    first window holds batches 0..accumulate_bs (one more than the others), then every
    window holds accumulate_bs batches; each batch's gradient is divided by accumulate_bs.
    """
    return step > 0 and step % accumulate_bs == 0


def starts_window(step, accumulate_bs: int):
    """Whether batch `step` (an int, or a traced int array) is the first of its accumulation
    window: batch 0, or the batch after an update (applies_update)."""
    previous = step - 1
    return (step == 0) | ((previous > 0) & (previous % accumulate_bs == 0))


def accumulate(grad_acc, gradient, fresh):
    """`gradient` added to `grad_acc`, or replacing it where `fresh` (a new window)."""
    return jax.tree_util.tree_map(lambda a, g: jnp.where(fresh, jnp.zeros_like(a), a) + g, grad_acc, gradient)
