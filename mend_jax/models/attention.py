"""Scaled dot-product attention shared by every family."""
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
