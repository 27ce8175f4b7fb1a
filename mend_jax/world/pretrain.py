"""Pretrains a tiny GPT-2 (our Flax model) until it knows the world's facts.

It trains on every true statement, on its own and after the context the gen
edits give it, and on locality passages (facts in running text). Fact accuracy:
over those statements, the teacher-forced argmax must give all of the object's
tokens (" Object" and the final ".") after the prefix.
"""
import dataclasses
from typing import Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import transformers

from mend_jax.models import build_module, init_params
from mend_jax.progress import progress as progress_bar


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_positions: int = 128
    learning_rate: float = 5e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    sentence_batch: int = 64
    passage_batch: int = 4
    max_steps: int = 4000
    eval_every: int = 100
    target_accuracy: float = 0.99  # stop training once reached
    min_accuracy: float = 0.95  # below this after max_steps the world is unusable: fail


@dataclasses.dataclass(frozen=True)
class PretrainResult:
    module: object
    params: Dict
    fact_accuracy: float
    steps: int


def model_config(vocab_size: int, eos_id: int, cfg: PretrainConfig) -> transformers.GPT2Config:
    # No dropout: the model only has to memorise, and the trainer may run it with dropout on.
    return transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=eos_id, eos_token_id=eos_id,
    )


def warmup_cosine_adamw(cfg) -> optax.GradientTransformation:
    """AdamW with global-norm clipping at 1, linear warmup, then cosine decay to a tenth
    (cfg: learning_rate, warmup_steps, max_steps, weight_decay); the world's models all train with it."""
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
         optax.cosine_decay_schedule(cfg.learning_rate, max(cfg.max_steps - cfg.warmup_steps, 1), alpha=0.1)],
        [cfg.warmup_steps],
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=cfg.weight_decay))


def _pad(seqs: Sequence[List[int]], pad_id: int, length: int) -> Tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        s = s[:length]
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    return ids, mask


def _nll(module, params, ids, mask):
    logits = module.apply({"params": params}, input_ids=ids, attention_mask=mask)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
    token_logp = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    weights = mask[:, 1:]
    return -(token_logp * weights).sum() / jnp.maximum(weights.sum(), 1)


class _FactProbe:
    """Every text that ends in a fact's object, padded, with where the object's tokens are."""

    def __init__(self, tok, fact_texts: Sequence[str], n_target: int, pad_id: int):
        seqs = [tok.encode(s) for s in fact_texts]
        self.n_target = n_target
        self.ids, self.mask = _pad(seqs, pad_id, max(map(len, seqs)))
        self.lengths = np.array([len(s) for s in seqs])

    def accuracy(self, predict) -> float:
        """`predict(ids, mask)` -> argmax ids (batch, seq) of the next token."""
        pred = np.asarray(predict(self.ids, self.mask))
        n = self.n_target
        rows = np.arange(len(self.lengths))[:, None]
        target_pos = self.lengths[:, None] - n + np.arange(n)[None, :]
        correct = pred[rows, target_pos - 1] == self.ids[rows, target_pos]
        return float(correct.all(axis=1).mean())


def pretrain(
    tok: transformers.PreTrainedTokenizerFast,
    fact_texts: Sequence[str],
    n_target: int,
    passages: Sequence[str],
    cfg: PretrainConfig = PretrainConfig(),
    progress: bool = True,
) -> PretrainResult:
    """Trains until the last `n_target` tokens of `fact_texts` (the objects) are the argmax."""
    pad_id = tok.eos_token_id  # masked out; GPT-2 has no pad token
    module = build_module(model_config(len(tok), tok.eos_token_id, cfg))
    probe = _FactProbe(tok, fact_texts, n_target, pad_id)
    sent_ids, sent_mask = probe.ids, probe.mask
    passage_seqs = [tok.encode(p) for p in passages]
    pass_ids, pass_mask = _pad(passage_seqs, pad_id, min(cfg.n_positions, max(map(len, passage_seqs))))

    rng = jax.random.PRNGKey(cfg.seed)
    params = init_params(module, rng)
    optimizer = warmup_cosine_adamw(cfg)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, s_ids, s_mask, p_ids, p_mask):
        def loss_fn(p):  # equal weight to the facts on their own and to running text
            return _nll(module, p, s_ids, s_mask) + _nll(module, p, p_ids, p_mask)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def predict(params, ids, mask):
        return module.apply({"params": params}, input_ids=ids, attention_mask=mask).argmax(-1)

    np_rng = np.random.default_rng(cfg.seed)
    accuracy, steps = 0.0, 0
    bar = progress_bar(cfg.max_steps, "pretraining the world's GPT-2", enabled=progress)
    for steps in range(1, cfg.max_steps + 1):
        s = np_rng.choice(len(sent_ids), min(cfg.sentence_batch, len(sent_ids)), replace=False)
        p = np_rng.choice(len(pass_ids), cfg.passage_batch, replace=len(pass_ids) < cfg.passage_batch)
        params, opt_state, loss = step(params, opt_state, sent_ids[s], sent_mask[s], pass_ids[p], pass_mask[p])
        bar.update(1)
        if steps % cfg.eval_every == 0 or steps == cfg.max_steps:
            accuracy = probe.accuracy(lambda ids, mask: predict(params, ids, mask))
            bar.set_postfix(loss=f"{float(loss):.3f}", fact_acc=f"{accuracy:.3f}")
            if accuracy >= cfg.target_accuracy:
                break
    bar.close()
    if accuracy < cfg.min_accuracy:
        raise RuntimeError(
            f"the world's GPT-2 knows only {accuracy:.1%} of the facts after {steps} steps "
            f"(needs {cfg.min_accuracy:.0%}); raise PretrainConfig.max_steps or the model size"
        )
    return PretrainResult(module, params, accuracy, steps)
