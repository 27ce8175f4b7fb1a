"""Generation fluency and the perplexity of a model's own samples, before and after an edit.

* `Generator`: top-k samples from a causal LM, jitted, from a fixed key (reproducible), decoded with
  a key/value cache (models/decoding.py).
* `ngram_entropy(text)`: ROME's generation entropy (Meng et al. 2022, its `compute_n_gram_entropy`):
  the entropy, in bits, of the text's word bigram and trigram frequencies, weighted 2/3 and 4/3 and
  averaged. A model that repeats itself after an edit scores lower. ROME reports it x100 over
  100-token samples tokenised by NLTK; here words are split on whitespace and punctuation, so only
  before/after differences of this project's figures compare, not their absolute values with ROME's.
* `perplexity(...)`: exp of the mean token NLL of texts under a model (the gen-style drawdown on the
  model's own samples: the reference's gen locality data are its model's samples).
"""
import re
from collections import Counter
from typing import List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mend_jax import losses
from mend_jax.data.batching import pad_right
from mend_jax.models import decoding

WORDS = re.compile(r"\w+|[^\w\s]")
WEIGHTS = {2: 2 / 3, 3: 4 / 3}


def ngram_entropy(text: str) -> float:
    words = WORDS.findall(text.lower())
    values = []
    for n, weight in WEIGHTS.items():
        counts = np.array(list(Counter(zip(*(words[i:] for i in range(n)))).values()), np.float64)
        if counts.size == 0:
            values.append(0.0)
            continue
        freqs = counts / counts.sum()
        values.append(weight * float(-(freqs * np.log2(freqs)).sum()))
    return float(np.mean(values))


ROW_BUCKETS = (2, 8, 32)  # a call's rows are padded to the smallest that holds them (larger: in pieces of 32)


class Generator:
    """Top-k samples of `n_new` tokens after each prompt; rows padded to one of ROW_BUCKETS, so a
    few compilations serve every batch."""

    def __init__(self, module, tokenizer, n_new: int, top_k: int = 5, seed: int = 0, stop_at_special: bool = False):
        """`stop_at_special`: each text ends before its first special token (an instruct model's end
        of turn, after which it writes the next turn's role)."""
        self.tokenizer, self.n_new, self.seed = tokenizer, n_new, seed
        self.stops = set(tokenizer.all_special_ids) if stop_at_special else set()
        self._run = jax.jit(lambda params, ids, lengths, key: decoding.decode(
            module, params, ids, lengths, n_new, decoding.top_k(top_k), key))

    def __call__(self, params, prompts: Sequence[str]) -> List[str]:
        """One text per prompt. Each piece of ROW_BUCKETS[-1] prompts draws from its own key (the
        first from the seed's), so that a prompt repeated across pieces gets different samples."""
        step = ROW_BUCKETS[-1]
        key = jax.random.PRNGKey(self.seed)
        return [t for lo in range(0, len(prompts), step)
                for t in self._piece(params, prompts[lo:lo + step], key if lo == 0 else jax.random.fold_in(key, lo))]

    def _piece(self, params, prompts: Sequence[str], key) -> List[str]:
        seqs = [list(self.tokenizer(p)["input_ids"]) for p in prompts]
        rows = next(b for b in ROW_BUCKETS if b >= len(seqs))
        seqs = seqs + [seqs[-1]] * (rows - len(seqs))
        lengths = np.array([len(s) for s in seqs], np.int32)
        width = -(-(int(lengths.max()) + self.n_new) // 16) * 16
        ids, _ = pad_right(seqs, width, self.tokenizer.pad_token_id)
        new = np.asarray(self._run(params, ids, lengths, key))[:len(prompts)]
        return [self.tokenizer.decode(self._until_stop(row), skip_special_tokens=True) for row in new]

    def _until_stop(self, row):
        stop = next((i for i, t in enumerate(row) if int(t) in self.stops), len(row))
        return row[:stop]


class Perplexity:
    """exp(sum NLL / sum tokens) of fixed texts under a model, all tokens after the first labelled."""

    def __init__(self, target, tokenizer, texts: Sequence[str]):
        seqs = [list(tokenizer(t)["input_ids"]) for t in texts]
        width = -(-max(len(s) for s in seqs) // 16) * 16
        ids, mask = pad_right(seqs, width, tokenizer.pad_token_id)
        self.batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask),
                      "labels": jnp.asarray(np.where(mask > 0, ids, losses.IGNORE))}
        self._run = jax.jit(lambda params, batch: losses.token_stats(target.logits(params, batch), batch["labels"],
                                                                     target.shift_labels))

    def __call__(self, params) -> float:
        stats = self._run(params, self.batch)
        return float(np.exp(np.sum(stats.nll) / np.sum(stats.n_tokens)))
