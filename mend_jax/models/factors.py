"""MEND's gradient factors from one `jax.grad`.

For an inner matrix W of a dense layer y = x W + b, dL/dW = Σ_rows x ⊗ δ with
δ = dL/dy. `EditableDense` sows x and perturbs y with a zero variable, so the
gradient with respect to those zeros is δ. Only the perturbations of the inner
layers are differentiated; the base weights' gradients are never formed.
"""
from typing import Any, Callable, Dict, Sequence, Tuple

import flax.linen as nn
import jax
from flax import traverse_util

from mend_jax.models.layers import FACTOR_GRADS, FACTOR_INPUTS

Path = Tuple[str, ...]
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")


def model_inputs(batch: Dict[str, Any]) -> Dict[str, Any]:
    return {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch and batch[k] is not None}


def _zero_perturbations(module: nn.Module, params, inputs) -> Dict[Path, jax.Array]:
    shapes = jax.eval_shape(
        lambda: module.apply({"params": params}, **inputs, mutable=[FACTOR_GRADS])[1][FACTOR_GRADS]
    )
    flat = traverse_util.flatten_dict(shapes)
    return {path: jax.numpy.zeros(s.shape, s.dtype) for path, s in flat.items()}


def inner_factors(
    module: nn.Module,
    params,
    inner_paths: Sequence[Path],
    loss_fn: Callable[[jax.Array, Dict[str, Any]], jax.Array],
    batch: Dict[str, Any],
):
    """Returns (loss, logits, {kernel path: (x, δ)}) for the loss on `batch`.

    x has shape (..., d_in) and δ (..., d_out), with the batch and sequence axes
    of the layer; both are constants (stop_gradient).
    """
    inputs = model_inputs(batch)
    zeros = _zero_perturbations(module, params, inputs)
    layer_of = {path: path[:-1] for path in inner_paths}
    wanted = {layer_of[p] + ("delta",) for p in inner_paths}
    missing = wanted - set(zeros)
    if missing:
        raise KeyError(f"these inner params are not EditableDense kernels: {sorted(missing)}")
    fixed = {k: v for k, v in zeros.items() if k not in wanted}

    def loss_with_perturbations(free):
        perturbations = traverse_util.unflatten_dict({**fixed, **free})
        logits, state = module.apply(
            {"params": params, FACTOR_GRADS: perturbations}, **inputs, mutable=[FACTOR_INPUTS]
        )
        sown = traverse_util.flatten_dict(state[FACTOR_INPUTS])
        return loss_fn(logits, batch), (logits, sown)

    free = {k: zeros[k] for k in wanted}
    (loss, (logits, sown)), grads = jax.value_and_grad(loss_with_perturbations, has_aux=True)(free)
    factors = {
        path: (jax.lax.stop_gradient(sown[layer_of[path] + ("x",)]),
               jax.lax.stop_gradient(grads[layer_of[path] + ("delta",)]))
        for path in inner_paths
    }
    return loss, logits, factors

