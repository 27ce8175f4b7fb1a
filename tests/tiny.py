"""Tiny random models for tests that need no PyTorch reference."""
import jax
import jax.numpy as jnp
import numpy as np
import transformers

from mend_jax import models
from mend_jax.editors.base import EditTarget

GPT2_INNER = (
    "transformer.h.1.mlp.c_fc.weight",
    "transformer.h.1.mlp.c_proj.weight",
    "transformer.h.2.mlp.c_fc.weight",
    "transformer.h.2.mlp.c_proj.weight",
)


def tiny_gpt2(vocab=61, n_layer=3, n_embd=16, seed=0):
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=n_embd, n_layer=n_layer, n_head=2)
    module = models.build_module(cfg)
    return module, models.init_params(module, jax.random.PRNGKey(seed))


def gpt2_target(module, params, names=GPT2_INNER) -> EditTarget:
    return EditTarget(module, tuple(models.inner_param_paths(module, params, names)), tuple(names), shift_labels=True)


def lm_batch(vocab, batch=2, length=8, seed=0, n_label=3):
    """Right-padded LM batch; only the last `n_label` real tokens are labelled."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, vocab, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[-1, length - 2:] = 0
    labels = np.full_like(ids, -100)
    for i in range(batch):
        n = int(mask[i].sum())
        labels[i, n - n_label:n] = ids[i, n - n_label:n]
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask), "labels": jnp.asarray(labels)}
