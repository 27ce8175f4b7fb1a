"""How each task turns (prompt, target) pairs into model batches, and reads the model's answer.

* gen (decoder-only LMs): the edit text is the prompt followed by the target; only
  the target's tokens are labelled. A completion is `max_new_tokens` greedy tokens.
* qa (T5, BART): the prompt is the encoder's question, the target its decoder answer,
  in the layout the task trains on (see data/zsre.py). A completion is the greedy
  answer up to EOS.
* fc (one-logit BERT classifier): the target is a FEVER label, SUPPORTS or REFUTES;
  a completion is the predicted label.

Batches are right-padded to a width rounded up to `WIDTH_STEP`, so that a few
compilations serve prompts of any length.
"""
from typing import Dict, List, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mend_jax.data.batching import pad_right, prompt_target_batch, prompt_target_tokens
from mend_jax.data.fever import NEGATIVE, POSITIVE
from mend_jax.data.kilt import condition_string, encode
from mend_jax.editing.requests import EditInputError
from mend_jax.experiments import TaskModel, max_positions
from mend_jax.models import decoding

WIDTH_STEP = 16


class Completions(NamedTuple):
    ids: np.ndarray  # (n, length) the generated tokens; compared to tell whether an answer changed
    texts: List[str]


def _round_up(n: int, limit: int = None) -> int:
    width = -(-n // WIDTH_STEP) * WIDTH_STEP
    return min(width, limit) if limit else width


class CausalLMCodec:
    def __init__(self, model: TaskModel, max_new_tokens: int):
        self.tokenizer, self.module = model.tokenizer, model.target.module
        self.limit = max_positions(self.module.config)
        self.max_new_tokens = max_new_tokens
        self.pad_id = self.tokenizer.pad_token_id
        self._greedy = _greedy_causal(self.module, max_new_tokens)

    def _width(self, lengths: Sequence[int], what: str) -> int:
        longest = max(lengths)
        if self.limit and longest > self.limit:
            raise EditInputError(f"{what}: {longest} tokens, more than the model's {self.limit} positions")
        return _round_up(longest, self.limit)

    def length_problem(self, prompt: str, target: Optional[str], completes: bool) -> Optional[str]:
        """Why `prompt` (with `target`, or with the completion's new tokens) does not fit the model, or None."""
        if not self.limit:
            return None
        prompt_ids, target_ids = prompt_target_tokens(self.tokenizer, [prompt], [target or ""])
        if target is not None and len(prompt_ids[0]) + len(target_ids[0]) > self.limit:
            return (f"the prompt with its target is {len(prompt_ids[0]) + len(target_ids[0])} tokens, more than "
                    f"the model's {self.limit} positions")
        if completes and len(prompt_ids[0]) + self.max_new_tokens > self.limit:
            return (f"the prompt is {len(prompt_ids[0])} tokens, and with {self.max_new_tokens} new tokens "
                    f"(--max-new-tokens) more than the model's {self.limit} positions")
        return None

    def edit_batch(self, prompts: Sequence[str], targets: Sequence[str]) -> Dict[str, np.ndarray]:
        prompt_ids, target_ids = prompt_target_tokens(self.tokenizer, prompts, targets)
        empty = next((i for i, t in enumerate(target_ids) if not t), None)
        if empty is not None:
            raise EditInputError(f"target {targets[empty]!r} has no tokens")
        width = self._width([len(p) + len(t) for p, t in zip(prompt_ids, target_ids)], "a prompt with its target")
        return prompt_target_batch(prompt_ids, target_ids, width, self.pad_id)

    def cond(self, batch, prompts, targets, predictions) -> Dict[str, np.ndarray]:
        return {"input_ids": batch["input_ids"].copy(), "attention_mask": batch["attention_mask"].copy()}

    def complete(self, params, prompts: Sequence[str]) -> Completions:
        seqs = [list(self.tokenizer(p)["input_ids"]) for p in prompts]
        lengths = np.array([len(s) for s in seqs], np.int32)
        width = self._width(lengths + self.max_new_tokens, f"a prompt with {self.max_new_tokens} new tokens")
        ids, _ = pad_right(seqs, width, self.pad_id)
        new = np.asarray(self._greedy(params, ids, lengths))
        return Completions(new, [self.tokenizer.decode(row) for row in new])


def _greedy_causal(module, n_new: int):
    return jax.jit(lambda params, ids, lengths: decoding.decode(module, params, ids, lengths, n_new, decoding.greedy,
                                                                jax.random.PRNGKey(0)))


class Seq2SeqCodec:
    def __init__(self, model: TaskModel):
        self.encoder, self.tokenizer, self.module = model.encoder, model.tokenizer, model.target.module
        tok = self.tokenizer
        # BART's targets start with EOS (data/zsre.py), T5's decoder with its start token.
        self.start_id = tok.eos_token_id if self.encoder.style == "bart" else self.encoder.start_id
        self.eos_id = tok.eos_token_id
        self._greedy = _greedy_seq2seq(self.module, self.encoder.target_max_length, self.start_id, self.encoder.pad_id)

    def length_problem(self, prompt: str, target: Optional[str], completes: bool) -> Optional[str]:
        for text, limit, what in ((prompt, self.encoder.max_length, "prompt"),
                                  (target, self.encoder.target_max_length, "target")):
            n = len(self.tokenizer(text)["input_ids"]) if text is not None else 0
            if n > limit:
                return (f"the {what} is {n} tokens, more than {limit} (data.max_length or data.target_max_length "
                        "of the run's config)")
        return None

    def _check(self, texts: Sequence[str], limit: int, what: str) -> None:
        for text in texts:
            n = len(self.tokenizer(text)["input_ids"])
            if n > limit:
                raise EditInputError(f"{what} {text!r} has {n} tokens, more than {limit} (data.max_length or "
                                     "data.target_max_length of the run's config)")

    def edit_batch(self, prompts, targets) -> Dict[str, np.ndarray]:
        self._check(prompts, self.encoder.max_length, "prompt")
        self._check(targets, self.encoder.target_max_length, "target")
        return self.encoder.pairs(prompts, targets)

    def cond(self, batch, prompts, targets, predictions) -> Dict[str, np.ndarray]:
        return self.encoder.sources([condition_string(p, t, q) for q, t, p in zip(prompts, targets, predictions)])

    def complete(self, params, prompts: Sequence[str]) -> Completions:
        self._check(prompts, self.encoder.max_length, "prompt")
        src = self.encoder.sources(prompts)
        new = np.asarray(self._greedy(params, src["input_ids"], src["attention_mask"]))
        ends = [list(row).index(self.eos_id) if self.eos_id in row else len(row) for row in new]
        new = np.array([[t if i < end else self.encoder.pad_id for i, t in enumerate(row)]
                        for row, end in zip(new, ends)], np.int32)  # what follows EOS is not the answer
        texts = [self.tokenizer.decode(row[:end], skip_special_tokens=True).strip() for row, end in zip(new, ends)]
        return Completions(new, texts)


def _greedy_seq2seq(module, length: int, start_id: int, pad_id: int):
    @jax.jit
    def run(params, input_ids, attention_mask):
        dec = jnp.full((input_ids.shape[0], length), pad_id, jnp.int32).at[:, 0].set(start_id)
        positions = jnp.arange(length)

        def step(i, dec):
            mask = jnp.broadcast_to(positions[None, :] <= i, dec.shape).astype(jnp.int32)
            logits = module.apply({"params": params}, input_ids=input_ids, attention_mask=attention_mask,
                                  decoder_input_ids=dec, decoder_attention_mask=mask)
            return dec.at[:, i + 1].set(jnp.argmax(logits[:, i], axis=-1).astype(jnp.int32))

        return jax.lax.fori_loop(0, length - 1, step, dec)[:, 1:]

    return run


class ClassifierCodec:
    LABELS = (NEGATIVE, POSITIVE)  # logit <= 0, logit > 0

    def __init__(self, model: TaskModel, max_length: int):
        self.tokenizer, self.module, self.max_length = model.tokenizer, model.target.module, max_length
        self._logits = jax.jit(lambda params, ids, mask: self.module.apply({"params": params}, input_ids=ids,
                                                                           attention_mask=mask))

    def length_problem(self, prompt: str, target: Optional[str], completes: bool) -> Optional[str]:
        return None  # the classifier reads the first data.max_length tokens, as in training

    def _labels(self, targets: Sequence[str]) -> np.ndarray:
        bad = next((t for t in targets if t not in self.LABELS), None)
        if bad is not None:
            raise EditInputError(f"target {bad!r}: the fc classifier's targets are {POSITIVE} or {NEGATIVE}")
        return np.array([t == POSITIVE for t in targets], np.int32)

    def edit_batch(self, prompts, targets) -> Dict[str, np.ndarray]:
        return {**encode(self.tokenizer, prompts, self.max_length), "labels": self._labels(targets)}

    def cond(self, batch, prompts, targets, predictions) -> Dict[str, np.ndarray]:
        return encode(self.tokenizer, [condition_string(p, t, q) for q, t, p in zip(prompts, targets, predictions)],
                      self.max_length)

    def complete(self, params, prompts: Sequence[str]) -> Completions:
        batch = encode(self.tokenizer, prompts, self.max_length)
        logits = np.asarray(self._logits(params, batch["input_ids"], batch["attention_mask"]))
        positive = (logits.reshape(-1) > 0).astype(np.int32)
        return Completions(positive[:, None], [self.LABELS[p] for p in positive])


def make_codec(model: TaskModel, config, max_new_tokens: int):
    if model.task in ("gen", "counterfact"):
        return CausalLMCodec(model, max_new_tokens)
    if model.task == "qa":
        return Seq2SeqCodec(model)
    if model.task == "fc":
        return ClassifierCodec(model, config.data.max_length)
    raise ValueError(f"no edit codec for task {model.task!r}")
