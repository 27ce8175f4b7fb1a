"""editing/fluency.py: ROME's n-gram entropy on a hand-computed text, the Generator's samples
against greedy decoding by the full forward pass, and the perplexity against a direct NLL."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from mend_jax.editing import fluency
from tests import tiny
from tests.test_decoding import full_forward_greedy

WORDS = [f"w{i}" for i in range(40)]


def tokenizer():
    tok = tiny.word_tokenizer(WORDS)
    tok.pad_token = tok.eos_token
    return tok


def test_ngram_entropy_of_a_hand_counted_text():
    # "a b a b": bigrams ab, ba, ab (2/3, 1/3); trigrams aba, bab (1/2, 1/2); weights 2/3 and 4/3.
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert math.isclose(fluency.ngram_entropy("a b a b"), (2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert fluency.ngram_entropy("a") == 0.0  # no bigram, no trigram
    # A model that repeats itself scores lower than one that does not.
    assert fluency.ngram_entropy("the cat " * 10) < fluency.ngram_entropy(" ".join(WORDS[:20]))


def test_top_1_samples_are_the_greedy_completions():
    module, params, _ = tiny.tiny_decoder("llama")
    tok = tokenizer()
    prompts = ["w3 w17 w5", "w9", "w1 w2 w3 w4 w5 w6"]  # 3 rows: padded to the bucket of 8
    texts = fluency.Generator(module, tok, n_new=5, top_k=1)(params, prompts)
    want, _ = full_forward_greedy(module, params, [tok(p)["input_ids"] for p in prompts], 5)
    assert texts == [tok.decode(w, skip_special_tokens=True) for w in want]


def test_perplexity_is_the_exp_of_the_mean_token_nll():
    module, params, target = tiny.tiny_decoder("gpt2")
    tok = tokenizer()
    texts = ["w1 w2 w3 w4", "w7 w8"]
    got = fluency.Perplexity(target, tok, texts)(params)
    nll, n = 0.0, 0
    for text in texts:
        ids = tok(text)["input_ids"]
        logp = jax.nn.log_softmax(module.apply({"params": params}, jnp.asarray([ids]))[0], axis=-1)
        nll -= float(sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1)))
        n += len(ids) - 1
    np.testing.assert_allclose(got, math.exp(nll / n), rtol=1e-5)


def test_stop_at_special_cuts_each_sample_before_its_first_special_token():
    module, params, _ = tiny.tiny_decoder("llama")
    tok = tokenizer()
    gen = fluency.Generator(module, tok, n_new=8, top_k=1, stop_at_special=True)
    assert gen._until_stop(np.array([5, 7, tok.eos_token_id, 9])).tolist() == [5, 7]
    assert gen._until_stop(np.array([5, 7, 9])).tolist() == [5, 7, 9]
    prompts = ["w3 w17", "w9", "w1 w2 w3"]
    whole = fluency.Generator(module, tok, n_new=8, top_k=1)(params, prompts)
    for cut, full in zip(gen(params, prompts), whole):
        assert full.startswith(cut)


def test_a_prompt_repeated_past_one_piece_gets_new_samples():
    """Generator samples 32 prompts per call; each call draws from its own key, so 64 copies of one
    prompt are 64 draws, not the same 32 twice (the first 32 keep the seed's own key)."""
    module, params, _ = tiny.tiny_decoder("gpt2")
    gen = fluency.Generator(module, tokenizer(), n_new=6, top_k=20)
    texts = gen(params, ["w3 w17"] * 64)
    assert texts[:32] == gen(params, ["w3 w17"] * 32)
    assert texts[:32] != texts[32:]
    assert len(set(texts)) > 40
