"""Incremental decoding of causal LMs with a key/value cache (attention.cached).

The prompt block runs once, filling each attention layer's cache; each new token then costs one
position's forward pass instead of the whole sequence's. `decode` is a pure function of the
parameters, jitted by its callers: the edit CLI's greedy completions (editing/codecs.py) and
the fluency samples (editing/fluency.py).
"""
from typing import Callable

import jax
import jax.numpy as jnp

from mend_jax.models.attention import CACHE

# (float32 logits (batch, vocab), PRNG key) -> the next token of each row (batch,)
Chooser = Callable[[jax.Array, jax.Array], jax.Array]


def greedy(logits: jax.Array, key: jax.Array) -> jax.Array:
    return jnp.argmax(logits, axis=-1)


def top_k(k: int) -> Chooser:
    """Sampling among the `k` likeliest tokens, in proportion to their probabilities."""

    def choose(logits, key):
        top, index = jax.lax.top_k(logits, k)
        return jnp.take_along_axis(index, jax.random.categorical(key, top, axis=-1)[:, None], axis=-1)[:, 0]

    return choose


def decode(module, params, ids: jax.Array, lengths: jax.Array, n_new: int, choose: Chooser,
           key: jax.Array) -> jax.Array:
    """The `n_new` tokens (batch, n_new) that follow each row's prompt `ids[r, :lengths[r]]`.

    `ids` (batch, width) is right-padded, with width >= max(lengths) + n_new: the cache is made at
    that width by the prompt's pass. The key is split once per token, first for the token after the
    prompt.
    """
    rows = jnp.arange(ids.shape[0])
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    logits, state = module.apply({"params": params}, ids, cache_positions=positions, mutable=[CACHE])
    key, sub = jax.random.split(key)
    first = choose(logits[rows, lengths - 1].astype(jnp.float32), sub).astype(ids.dtype)

    def step(carry, i):
        cache, token, key = carry
        logits, cache = module.apply({"params": params, **cache}, token[:, None],
                                     cache_positions=(lengths + i)[:, None], mutable=[CACHE])
        key, sub = jax.random.split(key)
        following = choose(logits[:, 0].astype(jnp.float32), sub).astype(ids.dtype)
        return (cache, following, key), token

    (_, last, _), tokens = jax.lax.scan(step, (state, first, key), jnp.arange(n_new - 1))
    return jnp.concatenate([tokens.T, last[:, None]], axis=1)
