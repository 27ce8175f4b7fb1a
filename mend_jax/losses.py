"""Edit losses and metrics, as the reference computes them.

Sequence models score labels with -100 marking ignored positions. Decoder-only
models shift (logits[:, :-1] predict labels[:, 1:]); seq2seq models do not.
A single-logit classifier scores logsigmoid(±logit) by label.
"""
from typing import Dict, NamedTuple

import jax
import jax.numpy as jnp

IGNORE = -100


class TokenStats(NamedTuple):
    """Per-example sums, so batches can be pooled with token-count weights."""

    nll: jax.Array  # (batch,) summed NLL over unmasked tokens
    n_tokens: jax.Array  # (batch,)
    correct: jax.Array  # (batch,) every unmasked token is the argmax
    prob: jax.Array  # (batch,) summed probability of the unmasked target tokens


def _align(labels: jax.Array, shift: bool) -> jax.Array:
    """The label each position's logits predict. Shifting the labels (and ignoring the last
    position) instead of slicing logits[:, :-1] spares a copy of the (batch, length, vocab) logits."""
    if shift:
        return jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE)], axis=1)
    return labels


ARGMAX_CHUNK = 128


def argmax_last(x: jax.Array, chunk: int = ARGMAX_CHUNK) -> jax.Array:
    """jnp.argmax(x, axis=-1), the same index (the first maximum; the first NaN if there is one),
    in two passes. XLA:CPU runs argmax's (value, index) reduction as a scalar loop, 44 ms over
    the 200 × 50k logits of a locality passage on one core; the maximum of each `chunk` entries
    is a vectorised reduction, after which only the winning chunk is searched (6 ms)."""
    v = x.shape[-1]
    if v < 2 * chunk or not jnp.issubdtype(x.dtype, jnp.floating):
        return jnp.argmax(x, axis=-1)
    x = jax.lax.stop_gradient(x)
    n = v // chunk
    window = (1,) * (x.ndim - 1) + (chunk,)
    # Windows of the whole array, not of a slice of it: XLA would copy the slice first. The
    # vectorised maximum does not propagate NaN, so chunks holding one are found apart.
    chunk_max = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")
    chunk_nan = jax.lax.reduce_window(jnp.isnan(x), False, jax.lax.bitwise_or, window, window, "VALID")
    body_nan = chunk_nan.any(axis=-1)
    best = jnp.where(body_nan, jnp.argmax(chunk_nan, axis=-1), jnp.argmax(chunk_max, axis=-1))
    start = best * chunk
    index = start + jnp.argmax(jnp.take_along_axis(x, start[..., None] + jnp.arange(chunk), axis=-1), axis=-1)
    if v > n * chunk:  # the last v mod chunk entries, beyond every window: they win only strictly
        tail = x[..., n * chunk:]
        tail_index = jnp.argmax(tail, axis=-1)
        tail_value = jnp.take_along_axis(tail, tail_index[..., None], axis=-1)[..., 0]
        body_value = jnp.take_along_axis(x, index[..., None], axis=-1)[..., 0]
        tail_wins = ~body_nan & (jnp.isnan(tail_value) | (tail_value > body_value))
        index = jnp.where(tail_wins, n * chunk + tail_index, index)
    return index


def token_stats(logits: jax.Array, labels: jax.Array, shift: bool) -> TokenStats:
    if logits.shape[-1] == 1 and labels.ndim == 1:
        return binary_stats(logits, labels)
    labels = _align(labels, shift)
    mask = labels != IGNORE
    logits = logits.astype(jnp.float32)
    target = jnp.where(mask, labels, 0)
    # log p(label) = logit(label) - logsumexp: the full log-softmax over the vocabulary is never built.
    token_logp = jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)
    hit = (argmax_last(logits) == target) | ~mask
    return TokenStats(
        nll=-(token_logp * mask).sum(-1),
        n_tokens=mask.sum(-1).astype(jnp.float32),
        correct=hit.all(-1),  # as the reference, an example with no target tokens counts as right
        prob=(jnp.exp(token_logp) * mask).sum(-1),
    )


def binary_stats(logits: jax.Array, labels: jax.Array) -> TokenStats:
    """One logit per example; labels are 0/1."""
    z = logits.reshape(-1).astype(jnp.float32)
    sign = jnp.where(labels > 0, 1.0, -1.0)
    log_p = jax.nn.log_sigmoid(sign * z)
    return TokenStats(
        nll=-log_p,
        n_tokens=jnp.ones_like(z),
        correct=jnp.exp(log_p) > 0.5,  # the reference's test, so a logit of 0 is wrong for both labels
        prob=jnp.exp(log_p),
    )


def masked_nll(logits: jax.Array, labels: jax.Array, shift: bool) -> jax.Array:
    """Mean NLL over all unmasked tokens of the batch (the reference's edit loss)."""
    stats = token_stats(logits, labels, shift)
    return stats.nll.sum() / jnp.maximum(stats.n_tokens.sum(), 1.0)


def kl_loc(pre_logits: jax.Array, post_logits: jax.Array, mask: jax.Array) -> jax.Array:
    """KL(p_pre ‖ p_post) averaged over unmasked positions; Bernoulli KL for one logit.

    As in the reference, sequence positions are not shifted: `mask` is the
    attention mask of the locality batch.
    """
    if pre_logits.shape[-1] == 1 and pre_logits.ndim == 2:
        p = jax.nn.log_sigmoid(pre_logits.astype(jnp.float32))
        q = jax.nn.log_sigmoid(post_logits.astype(jnp.float32))
        p_, q_ = jax.nn.log_sigmoid(-pre_logits.astype(jnp.float32)), jax.nn.log_sigmoid(-post_logits.astype(jnp.float32))
        return (jnp.exp(p) * (p - q) + jnp.exp(p_) * (p_ - q_)).mean()
    a, b = pre_logits.astype(jnp.float32), post_logits.astype(jnp.float32)
    lse_a, lse_b = jax.nn.logsumexp(a, axis=-1), jax.nn.logsumexp(b, axis=-1)
    # Σ p (log p - log q) with log p - log q = (a - b) - lse_a + lse_b and Σ p = 1: no log-softmax
    # arrays, and the gradient in b is softmax(b) - p. The sum over the vocabulary is an einsum:
    # XLA:CPU runs it 4x faster than the same product-and-sum written as (p * (a - b)).sum(-1).
    p = jnp.exp(a - lse_a[..., None])
    kl = jnp.einsum("...v,...v->...", p, a - b) - lse_a + lse_b
    mask = mask.astype(jnp.float32)
    return (kl * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def summarize(stats: TokenStats) -> Dict[str, jax.Array]:
    """The reference's acc, nll, log_prob and prob; prob is the mean token probability
    (not exp(log_prob))."""
    n = jnp.maximum(stats.n_tokens.sum(), 1.0)
    nll = stats.nll.sum() / n
    return {"acc": stats.correct.mean(), "nll": nll, "log_prob": -nll, "prob": stats.prob.sum() / n}
