"""The sequence losses and metrics against the reference's PyTorch formulas, values and gradients.

losses.py computes them without a log-softmax array over the vocabulary (logsumexp pieces,
an einsum for the KL's sum, labels shifted instead of logits sliced); these tests hold that
rewrite to what the reference writes.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mend_jax import losses

VOCAB = 37


def logits_pair(seed=0, shape=(3, 9, VOCAB)):
    rng = np.random.default_rng(seed)
    pre = rng.standard_normal(shape).astype(np.float32) * 3
    return pre, (pre + rng.standard_normal(shape).astype(np.float32)).astype(np.float32)


def reference_kl(pre, post, mask):
    """The reference's KL locality loss (utils / algs: softmax(pre) * (log_softmax(pre) - log_softmax(post)))."""
    pre, post, mask = torch.tensor(pre), torch.tensor(post, requires_grad=True), torch.tensor(mask)
    kl = (pre.softmax(-1) * (pre.log_softmax(-1) - post.log_softmax(-1))).sum(-1)
    loss = (kl * mask).sum() / mask.sum()
    loss.backward()
    return loss.item(), post.grad.numpy()


def test_kl_matches_the_reference_in_value_and_gradient():
    pre, post = logits_pair()
    mask = np.ones(pre.shape[:2], np.float32)
    mask[1, 6:] = 0
    value, grad = jax.value_and_grad(lambda q: losses.kl_loc(jnp.asarray(pre), q, jnp.asarray(mask)))(jnp.asarray(post))
    ref_value, ref_grad = reference_kl(pre, post, mask)
    np.testing.assert_allclose(float(value), ref_value, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-4, atol=1e-7)


def test_kl_of_a_distribution_with_itself_is_zero():
    pre, _ = logits_pair(1)
    assert abs(float(losses.kl_loc(jnp.asarray(pre), jnp.asarray(pre), jnp.ones(pre.shape[:2])))) < 1e-5


def reference_token_stats(logits, labels, shift):
    """The reference's masked log-probs and accuracy (utils.py: gather of log_softmax, argmax == labels)."""
    logits, labels = torch.tensor(logits, requires_grad=True), torch.tensor(labels)
    lg, lb = (logits[:, :-1], labels[:, 1:]) if shift else (logits, labels)
    mask = lb != -100
    target = lb.masked_fill(~mask, 0)
    token_logp = lg.log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    nll = -(token_logp * mask).sum(-1)
    correct = ((lg.argmax(-1) == target) | ~mask).all(-1)
    prob = (token_logp.exp() * mask).sum(-1)
    nll.sum().backward()
    return nll.detach().numpy(), mask.sum(-1).numpy(), correct.numpy(), prob.detach().numpy(), logits.grad.numpy()


@pytest.mark.parametrize("shift", [True, False])
def test_token_stats_match_the_reference(shift):
    logits, _ = logits_pair(2)
    rng = np.random.default_rng(3)
    labels = rng.integers(0, VOCAB, logits.shape[:2]).astype(np.int32)
    labels[0, :4] = -100
    labels[2, :] = -100  # no target tokens: counts as correct, as in the reference
    labels[1] = logits[1].argmax(-1)
    if shift:
        labels[1, 1:] = logits[1, :-1].argmax(-1)
    stats = losses.token_stats(jnp.asarray(logits), jnp.asarray(labels), shift)
    grad = jax.grad(lambda z: losses.token_stats(z, jnp.asarray(labels), shift).nll.sum())(jnp.asarray(logits))
    nll, n_tokens, correct, prob, ref_grad = reference_token_stats(logits, labels, shift)
    np.testing.assert_allclose(np.asarray(stats.nll), nll, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(stats.n_tokens), n_tokens)
    np.testing.assert_array_equal(np.asarray(stats.correct), correct)
    assert correct[1] and correct[2] and not correct[0]
    np.testing.assert_allclose(np.asarray(stats.prob), prob, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("vocab", [50258, 1000, 384, 300, 200])
def test_two_pass_argmax_is_jnp_argmax_with_ties_infinities_and_nans(vocab):
    rng = np.random.default_rng(vocab)
    rows = [rng.standard_normal((6, vocab)), rng.integers(0, 3, (6, vocab)).astype(float)]  # many ties
    special = rng.standard_normal((10, vocab))
    tail = vocab - vocab % losses.ARGMAX_CHUNK if vocab % losses.ARGMAX_CHUNK else vocab - 1
    special[0, :] = -np.inf  # all -inf: index 0
    special[1, [5, vocab - 1]] = np.inf  # two +inf: the first
    special[2, [vocab // 2, 3]] = np.nan  # NaNs: the first NaN
    special[3, tail:] = np.nan  # a NaN only in the tail beyond the last whole chunk
    special[4, [2, tail]] = 50.0  # a tie between a chunk and the tail: the chunk's
    special[5, tail] = 50.0  # the maximum in the tail
    special[6, [1, tail]] = np.nan  # NaN in a chunk and in the tail: the chunk's
    special[7, :] = 0.0  # all equal: index 0
    special[8, -1] = 50.0  # the last entry
    special[9, losses.ARGMAX_CHUNK] = 50.0  # the first entry of the second chunk
    rows.append(special)
    x = np.concatenate(rows).astype(np.float32)
    for dtype in (jnp.float32, jnp.bfloat16):
        values = jnp.asarray(x, dtype)
        want = np.asarray(jnp.argmax(values, axis=-1))
        np.testing.assert_array_equal(np.asarray(jax.jit(losses.argmax_last)(values)), want)
        batched = jax.vmap(losses.argmax_last)(values.reshape(2, -1, vocab))  # as evaluation vmaps it
        np.testing.assert_array_equal(np.asarray(batched).reshape(-1), want)
