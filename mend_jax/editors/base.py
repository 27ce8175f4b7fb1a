"""The interface every editing algorithm implements, so one trainer runs them all.

An editor is a pair of pure functions over pytrees:

* ``init(rng, base_params) -> (params, stats)``: trainable editor parameters
  and non-trainable state (e.g. MEND's normalisation statistics).
* ``edit(params, stats, base_params, edit_batch, train) -> (edited_params, stats, info)``:
  new base weights for the edit described by ``edit_batch``; ``stats`` is
  updated only when ``train`` is true.

``param_labels(params)`` names optimiser groups ("editor", "edit_lrs" or "base")
so the trainer can give them different learning rates.

Optional attributes: ``needs_training = False`` for editors with nothing to
meta-train (fine-tuning), which the trainer evaluates directly;
``current_base(params, base_params)`` for editors that train the base model too
(see train_base.py); ``bind_data(train_data)`` for editors that need data
outside the edit batch (FT+KL's held-out locality batch).

``edit_batch`` is the batch's ``edit_inner`` plus, under the key ``"cond"``, the
text EFK conditions on (model inputs are picked by name, so other editors never
see it).
"""
import dataclasses
from typing import Any, Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from mend_jax import losses
from mend_jax.models.factors import model_inputs

Path = Tuple[str, ...]
Params = Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EditTarget:
    """The model being edited: module, the inner matrices, and how its loss aligns labels."""

    module: nn.Module
    inner_paths: Tuple[Path, ...]
    inner_names: Tuple[str, ...]
    shift_labels: bool  # decoder-only models predict the next token

    def logits(self, params: Params, batch: Dict[str, jax.Array]) -> jax.Array:
        return self.module.apply({"params": params}, **model_inputs(batch))

    def nll(self, logits: jax.Array, batch: Dict[str, jax.Array]) -> jax.Array:
        return losses.masked_nll(logits, batch["labels"], self.shift_labels)

    def inner_shapes(self, params: Params) -> Tuple[Tuple[int, ...], ...]:
        flat = traverse_util.flatten_dict(params)
        return tuple(tuple(flat[p].shape) for p in self.inner_paths)


def add_to_inner(params: Params, updates: Dict[Path, jax.Array]) -> Params:
    """params with `updates` added to the given leaves (other leaves shared, not copied)."""
    flat = traverse_util.flatten_dict(params)
    for path, delta in updates.items():
        flat[path] = flat[path] + delta.astype(flat[path].dtype)
    return traverse_util.unflatten_dict(flat)


def replace_inner(params: Params, values: Dict[Path, jax.Array]) -> Params:
    """params with the given leaves replaced (other leaves shared, not copied)."""
    flat = traverse_util.flatten_dict(params)
    flat.update(values)
    return traverse_util.unflatten_dict(flat)


def needs_training(editor) -> bool:
    return getattr(editor, "needs_training", True)


def inner_values(params: Params, paths: Sequence[Path]) -> Tuple[jax.Array, ...]:
    flat = traverse_util.flatten_dict(params)
    return tuple(flat[p] for p in paths)


def edit_lrs_init(n: int, value: float) -> jax.Array:
    return jnp.full((n,), value, jnp.float32)
