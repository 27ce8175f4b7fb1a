"""Tiny random models for tests that need no PyTorch reference."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import transformers

from mend_jax import config_lib, models
from mend_jax.checkpointing import Checkpointer
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


def meta_batch(vocab=61, length=8, seed=0, n_loc=2):
    """One meta-training example: an edit, its rephrase (same labels, another text) and locality rows."""
    return {"edit_inner": lm_batch(vocab, batch=1, length=length, seed=seed),
            "edit_outer": lm_batch(vocab, batch=1, length=length, seed=seed + 1),
            "loc": lm_batch(vocab, batch=n_loc, length=length, seed=seed + 2, n_label=length - 1)}


class OneBatch:
    """Training and validation data that are one batch, whatever the step or index."""

    n_eval_batches, n_edits = 1, 1

    def __init__(self, batch):
        self.batch = batch

    def train_batch(self, step):
        return self.batch

    def eval_batch(self, i):
        return self.batch


def word_tokenizer(words):
    """A GPT-2-like tokenizer (no pad token) where each word is one token."""
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, **{w: i + 1 for i, w in enumerate(words)}}
    backend = Tokenizer(tok_models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")


def write_gen_experiment(root, n_words=40, n_edits=(12, 6), seed=0, model_type="gpt2"):
    """A random tiny decoder (GPT-2 unless `model_type` names another of DECODERS) with a
    tokenizer and gen data in the published layout; returns a config."""
    import json
    import os

    from mend_jax import config_lib

    rng = np.random.RandomState(seed)
    words = [f"w{i}" for i in range(n_words)]
    tok = word_tokenizer(words)
    if model_type == "gpt2":
        module, params = tiny_gpt2(vocab=len(tok))
        inner = GPT2_INNER
    else:
        make_config, inner = DECODERS[model_type]
        module = models.build_module(make_config().__class__.from_dict({**make_config().to_dict(),
                                                                        "vocab_size": len(tok)}))
        params = models.init_params(module, jax.random.PRNGKey(seed))
    model_dir = os.path.join(root, "model")
    models.save_pretrained(module, params, model_dir)
    tok.save_pretrained(model_dir)
    for split, n in zip(("train", "valid"), n_edits):
        completions = [" ".join(rng.choice(words, rng.randint(8, 13))) for _ in range(n)]
        os.makedirs(os.path.join(root, "self_sample"), exist_ok=True)
        with open(os.path.join(root, "self_sample", f"{split}.json"), "w") as f:
            json.dump({"original": completions, "completions": completions, "n_tokens": 2}, f)
        os.makedirs(os.path.join(root, "loc"), exist_ok=True)
        with open(os.path.join(root, "loc", f"wiki.{split}.raw"), "w") as f:
            f.writelines(" ".join(rng.choice(words, 55)) + "\n" for _ in range(8))

    c = config_lib.base_config()
    c.task = "gen"
    c.model.name = model_dir
    c.model.pad_token_fix = True
    c.model.inner_params = list(inner)
    c.data.path = os.path.join(root, "self_sample")
    c.data.loc_path = os.path.join(root, "loc")
    c.data.loc_pct = 100.0
    c.data.max_length = 16
    c.data.loc_max_length = 24
    return tiny_schedule(c, max_iters=6, val_interval=3, val_steps=4)


def tiny_schedule(c, *, max_iters, val_interval, val_steps):
    """A rank-8 MEND and a few steps: enough to exercise every part of a run."""
    c.mend.rank = 8
    c.lr = 1e-3
    c.accumulate_bs = 2
    c.max_iters = max_iters
    c.log_interval = 2
    c.val_interval = val_interval
    c.val_steps = val_steps
    c.checkpoint_interval = 2
    c.eval_chunk = val_steps
    return c


def repo_config(task: str):
    """configs/`task`.py of this checkout, as a module."""
    return config_lib.config_module(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", f"{task}.py"))


def latest_state(trainer, workdir):
    """The train state of `workdir`'s latest checkpoint."""
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        return ckpt.restore(trainer.init_state(), "latest")
    finally:
        ckpt.close()


# Tiny random decoders of every causal-LM family, with the inner params the gen configs edit
# in them (the MLPs of the last two of three layers): factory -> (transformers config, names).
def _mlp_names(prefix: str, matrices, layers=(1, 2)):
    return tuple(f"{prefix}.{i}.mlp.{m}.weight" for i in layers for m in matrices)


def _decoder_configs():
    vocab, width = 61, 16
    llama_like = dict(vocab_size=vocab, hidden_size=width, intermediate_size=24, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    llama_mlp = _mlp_names("model.layers", ("gate_proj", "up_proj", "down_proj"))
    return {
        "gpt2": (lambda: transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=width, n_layer=3, n_head=2),
                 GPT2_INNER),
        "gpt_neo": (lambda: transformers.GPTNeoConfig(
            vocab_size=vocab, max_position_embeddings=32, hidden_size=width, num_layers=3, num_heads=2,
            attention_types=[[["global", "local", "global"], 1]], window_size=4),
            _mlp_names("transformer.h", ("c_fc", "c_proj"))),
        "gptj": (lambda: transformers.GPTJConfig(vocab_size=vocab, n_positions=32, n_embd=width, n_layer=3, n_head=2,
                                                 rotary_dim=4),
                 _mlp_names("transformer.h", ("fc_in", "fc_out"))),
        "llama": (lambda: transformers.LlamaConfig(**llama_like), llama_mlp),
        "qwen2": (lambda: transformers.Qwen2Config(**llama_like, tie_word_embeddings=True), llama_mlp),
        "mistral": (lambda: transformers.MistralConfig(**llama_like, sliding_window=4), llama_mlp),
    }


DECODERS = _decoder_configs()


def tiny_decoder(model_type: str, seed=0, **build_kwargs):
    """(module, params, EditTarget) of a tiny random `model_type` decoder."""
    make_config, names = DECODERS[model_type]
    module = models.build_module(make_config(), **build_kwargs)
    params = models.init_params(module, jax.random.PRNGKey(seed))
    return module, params, gpt2_target(module, params, names)
