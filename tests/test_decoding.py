"""Decoding with the key/value cache (models/decoding.py) against the full forward pass, which
re-reads the whole sequence for every token: the same logits, the same greedy tokens, on every
causal family (GPT-Neo's local layers and Mistral's sliding window included, with prompts longer
than the window) and under rematerialisation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mend_jax.data.batching import pad_right
from mend_jax.models import decoding
from mend_jax.models.attention import CACHE
from tests import tiny

PROMPTS = [[5, 9, 2, 33, 17, 8, 41], [12, 3], [7, 7, 50, 1, 28]]  # lengths 7, 2, 5: past the window of 4
N_NEW = 6


def full_forward_greedy(module, params, prompts, n_new):
    """Greedy tokens by re-running each whole sequence for each one (the training path: a causal
    and padding mask, no cache), one row at a time."""
    width = max(len(p) for p in prompts) + n_new
    forward = jax.jit(lambda ids, mask: module.apply({"params": params}, ids, mask)[0])
    out = []
    for prompt in prompts:
        seq = list(prompt)
        for _ in range(n_new):
            ids, mask = pad_right([seq], width, 0)
            seq.append(int(jnp.argmax(forward(ids, mask)[len(seq) - 1])))
        out.append(seq[len(prompt):])
    return out, forward


def padded(prompts, n_new):
    lengths = np.array([len(p) for p in prompts], np.int32)
    ids, _ = pad_right(prompts, int(lengths.max()) + n_new, 0)
    return jnp.asarray(ids), jnp.asarray(lengths)


@pytest.mark.parametrize("model_type", sorted(tiny.DECODERS))
def test_cached_decoding_is_the_full_forward_pass(model_type):
    module, params, _ = tiny.tiny_decoder(model_type)
    ids, lengths = padded(PROMPTS, N_NEW)
    want, forward = full_forward_greedy(module, params, PROMPTS, N_NEW)
    # One cached step's logits are the full pass's at that position, for every row.
    apply = jax.jit(lambda variables, ids, positions: module.apply(variables, ids, cache_positions=positions,
                                                                   mutable=[CACHE]))
    _, state = apply({"params": params}, ids, jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape))
    token = [4, 19, 60]
    step, _ = apply({"params": params, **state}, jnp.asarray(token)[:, None], lengths[:, None])
    for r, prompt in enumerate(PROMPTS):
        full = forward(*pad_right([prompt + [token[r]]], ids.shape[1], 0))[len(prompt)]
        np.testing.assert_allclose(step[r, 0], full, rtol=1e-5, atol=1e-5, err_msg=f"row {r}")
    # Whole greedy decodes, token for token.
    got = jax.jit(lambda p, i, n: decoding.decode(module, p, i, n, N_NEW, decoding.greedy, jax.random.PRNGKey(0)))(
        params, ids, lengths)
    assert got.tolist() == want


def test_rematerialised_model_decodes_the_same_tokens():
    module, params, _ = tiny.tiny_decoder("llama")
    remat, _, _ = tiny.tiny_decoder("llama", remat="full")
    ids, lengths = padded(PROMPTS, N_NEW)
    run = lambda m: decoding.decode(m, params, ids, lengths, N_NEW, decoding.greedy, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(run(remat), run(module))


def test_top_k_samples_among_the_k_likeliest_tokens_and_repeats_with_its_key():
    module, params, _ = tiny.tiny_decoder("gpt2")
    ids, lengths = padded(PROMPTS, N_NEW)
    sample = jax.jit(lambda key, k: decoding.decode(module, params, ids, lengths, N_NEW, decoding.top_k(k), key),
                     static_argnums=1)
    key = jax.random.PRNGKey(3)
    a = np.asarray(sample(key, 5))
    np.testing.assert_array_equal(a, sample(key, 5))  # reproducible from its key
    draws = {tuple(np.asarray(sample(jax.random.PRNGKey(s), 5)).ravel()) for s in range(4)}
    assert len(draws) > 1  # and random across keys
    width = ids.shape[1] + N_NEW
    forward = jax.jit(lambda ids, mask: module.apply({"params": params}, ids, mask)[0])
    for r, prompt in enumerate(PROMPTS):  # each token is among the 5 likeliest after what came before it
        logits = np.asarray(forward(*pad_right([prompt + a[r].tolist()], width, 0)))
        for i, token in enumerate(a[r]):
            assert token in np.argsort(-logits[len(prompt) - 1 + i])[:5], (r, i)
    greedy = decoding.decode(module, params, ids, lengths, N_NEW, decoding.greedy, key)
    np.testing.assert_array_equal(sample(key, 1), greedy)  # top-1 is greedy
