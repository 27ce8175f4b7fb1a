"""A GPT-2 style byte-level BPE tokenizer trained on the world's text.

Merges run until every word of the world is one token (so an object is exactly
one token, " Object"), while byte-level fallback still encodes any other text.
Like GPT-2 it has "<|endoftext|>" as its only special token and no pad token.
"""
from typing import Iterable, Sequence

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOS = "<|endoftext|>"
_MAX_VOCAB = 1 << 16  # a cap never reached: merging stops when no pair is left


def train_tokenizer(texts: Iterable[str]) -> transformers.PreTrainedTokenizerFast:
    texts = list(texts)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_MAX_VOCAB,
        min_frequency=1,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = wrap(tok)
    _check_whole_words(fast, texts)
    return fast


def wrap(tok: Tokenizer) -> transformers.PreTrainedTokenizerFast:
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, model_max_length=1024
    )


def load_tokenizer(tokenizer_file: str) -> transformers.PreTrainedTokenizerFast:
    return wrap(Tokenizer.from_file(tokenizer_file))


def _check_whole_words(tok: transformers.PreTrainedTokenizerFast, texts) -> None:
    pre = tok.backend_tokenizer.pre_tokenizer
    words = {w for text in texts for w, _ in pre.pre_tokenize_str(text)}
    split = sorted(w for w in words if len(tok.backend_tokenizer.model.tokenize(w)) != 1)
    if split:
        raise RuntimeError(f"the world tokenizer splits {len(split)} words, e.g. {split[:5]}")


def target_length(tok: transformers.PreTrainedTokenizerFast, prefix: str, full: str) -> int:
    """How many tokens `full` adds after `prefix`, checking the prefix tokenizes alike in both."""
    p, f = tok.encode(prefix), tok.encode(full)
    if f[: len(p)] != p:
        raise ValueError(f"{prefix!r} tokenizes differently inside {full!r}")
    return len(f) - len(p)


def object_token_count(tok: transformers.PreTrainedTokenizerFast, facts: Sequence) -> int:
    """The number of tokens after the prefix of every statement, true or counterfactual.

    The gen data's `n_tokens` needs it to be one number for the whole world.
    """
    counts = {
        target_length(tok, f.prefix(t), statement)
        for f in facts
        for o in (f.object,) + f.alternatives
        for t, statement in enumerate(f.statements(o))
    }
    if len(counts) != 1:
        raise ValueError(f"objects span different numbers of tokens: {sorted(counts)}")
    return counts.pop()
