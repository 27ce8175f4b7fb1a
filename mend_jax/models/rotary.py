"""Rotary position embeddings (RoPE), as `transformers` computes them.

Two layouts rotate pairs of a head's features by position-dependent angles:
* "half" (Llama, Qwen2, Mistral, GPT-NeoX): feature i pairs with i + d/2;
* "interleaved" (GPT-J): feature 2i pairs with 2i + 1.
Angles are computed in float32 and the result is cast back to the input's dtype.
"""
import math
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(dim: int, theta: float = 10000.0, scaling: Optional[Mapping[str, Any]] = None) -> np.ndarray:
    """θ^(-2i/dim) for i < dim/2, rescaled as `scaling` (a Hugging Face `rope_parameters` /
    `rope_scaling` dict) says: rope_type "default", "linear" or "llama3"."""
    inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv_freq.astype(np.float32)
    if kind == "linear":
        return (inv_freq / scaling["factor"]).astype(np.float32)
    if kind == "llama3":
        return _llama3(inv_freq, scaling).astype(np.float32)
    raise ValueError(f"unsupported rope_type {kind!r} in {dict(scaling)}; mend-jax implements default, linear, llama3")


def _llama3(inv_freq: np.ndarray, s: Mapping[str, Any]) -> np.ndarray:
    """Llama 3.1's scaling: long wavelengths divided by `factor`, short ones kept, a smooth blend between."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    context = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < context / high) & ~(wavelen > context / low)
    return np.where(medium, smoothed, scaled)


def rope_settings(hf_config) -> tuple:
    """(theta, scaling dict or None) from a config of transformers 5 (`rope_parameters`) or 4 (`rope_theta`)."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", None) or 10000.0)
    scaling = params if params else getattr(hf_config, "rope_scaling", None)
    return float(theta), scaling


def apply(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray, interleaved: bool = False) -> jax.Array:
    """Rotates x (batch, len, heads, rotary_dim) by the angles positions (batch, len) × inv_freq."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # (batch, len, rotary_dim / 2)
    if interleaved:
        angles = jnp.repeat(angles, 2, axis=-1)
        x1, x2 = x[..., ::2], x[..., 1::2]
        rotated = jnp.stack([-x2, x1], axis=-1).reshape(x.shape)
    else:
        angles = jnp.concatenate([angles, angles], axis=-1)
        x1, x2 = jnp.split(x, 2, axis=-1)
        rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos, sin = (f(angles)[:, :, None, :].astype(x.dtype) for f in (jnp.cos, jnp.sin))
    return x * cos + rotated * sin
