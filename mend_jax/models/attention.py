"""Scaled dot-product attention shared by every family, and the key/value cache of incremental
decoding (models/decoding.py)."""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def split_heads(x: jax.Array, n_heads: int) -> jax.Array:
    b, t, d = x.shape
    return x.reshape(b, t, n_heads, d // n_heads)


def merge_heads(x: jax.Array) -> jax.Array:
    b, t, h, d = x.shape
    return x.reshape(b, t, h * d)


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: Optional[jax.Array],
    *,
    scale: float,
    bias: Optional[jax.Array] = None,
    dropout: Optional[nn.Dropout] = None,
    deterministic: bool = True,
) -> jax.Array:
    """Attention over (batch, len, heads, head_dim) tensors.

    `mask` is boolean, broadcastable to (batch, heads, q_len, k_len). `bias` is
    added to the scores before masking (T5's relative positions). Softmax runs
    in float32 so that bf16 models stay stable.
    """
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if dropout is not None:
        probs = dropout(probs, deterministic=deterministic)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def padding_mask(attention_mask: jax.Array) -> jax.Array:
    """(batch, k_len) 0/1 -> boolean (batch, 1, 1, k_len)."""
    return attention_mask.astype(bool)[:, None, None, :]


def causal(length: int) -> jax.Array:
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def local_causal(length: int, window: int) -> jax.Array:
    """Causal mask in which query i sees only the `window` keys i - window < j <= i (GPT-Neo's
    local layers, Mistral's and Qwen2's sliding window)."""
    q, k = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
    return ((k <= q) & (q - k < window))[None, None]


CACHE = "cache"  # the variable collection of the key/value cache


def cached(module: nn.Module, k: jax.Array, v: jax.Array, positions: jax.Array, window: Optional[int] = None):
    """(keys, values, mask) for a decoding step: this call's `k` and `v` (batch, t, heads, head_dim)
    are written into `module`'s cache at each row's `positions` (batch, t), and each query attends to
    every cached key at or before its own position (the last `window` of them, where set).

    The first call (the prompt) creates the cache at its own width, which is every position the
    decoding will write. Rows are contiguous from position 0 (right padding): slots past a row's
    tokens hold stale entries that no query reaches before the row's own token overwrites them.
    """
    rows = jnp.arange(k.shape[0])[:, None]
    keys = module.variable(CACHE, "key", jnp.zeros, k.shape, k.dtype)
    values = module.variable(CACHE, "value", jnp.zeros, v.shape, v.dtype)
    keys.value = keys.value.at[rows, positions].set(k)
    values.value = values.value.at[rows, positions].set(v)
    slots = jnp.arange(keys.value.shape[1])[None, None, None, :]
    query = positions[:, None, :, None]
    mask = slots <= query
    if window is not None:
        mask = mask & (query - slots < window)
    return keys.value, values.value, mask
