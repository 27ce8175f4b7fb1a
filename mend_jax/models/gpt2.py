"""GPT-2 (and distilGPT-2): learned positions, (d_in, d_out) kernels, tied LM head.

The parameter tree mirrors `transformers`' FlaxGPT2LMHeadModel:
``transformer/{wte,wpe,h/<i>/{ln_1,attn/{c_attn,c_proj},ln_2,mlp/{c_fc,c_proj}},ln_f}``.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import transformers

from mend_jax.models import attention
from mend_jax.models.layers import CausalLM, EditableDense, Embed, FeedForward, ModelPart, NumberedLayers
from mend_jax.models.registry import Family, register

Dtype = Any


class GPT2Attention(ModelPart):
    @nn.compact
    def __call__(self, h, mask, deterministic, cache_positions=None):
        cfg = self.config
        d = cfg.n_embd
        dense = lambda n, name: EditableDense(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        q, k, v = jnp.split(dense(3 * d, "c_attn")(h), 3, axis=-1)
        q, k, v = (attention.split_heads(t, cfg.n_head) for t in (q, k, v))
        if cache_positions is not None:
            k, v, mask = attention.cached(self, k, v, cache_positions)
        scale = (d // cfg.n_head) ** -0.5 if cfg.scale_attn_weights else 1.0
        out = attention.attend(
            q, k, v, mask, scale=scale,
            dropout=nn.Dropout(cfg.attn_pdrop), deterministic=deterministic,
        )
        out = dense(d, "c_proj")(attention.merge_heads(out))
        return nn.Dropout(cfg.resid_pdrop)(out, deterministic=deterministic)


class GPT2Block(ModelPart):
    @nn.compact
    def __call__(self, h, mask, deterministic, cache_positions=None):
        eps = self.config.layer_norm_epsilon
        kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        ln = lambda name: nn.LayerNorm(eps, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        h = h + GPT2Attention(**kw, name="attn")(ln("ln_1")(h), mask, deterministic, cache_positions)
        cfg = self.config
        mlp = FeedForward(cfg.n_inner or 4 * cfg.n_embd, cfg.n_embd, cfg.activation_function, cfg.resid_pdrop,
                          ("c_fc", "c_proj"), self.dtype, self.param_dtype, name="mlp")
        return h + mlp(ln("ln_2")(h), deterministic)


class GPT2Transformer(ModelPart):
    def setup(self):
        cfg = self.config
        self.wte = Embed(cfg.vocab_size, cfg.n_embd, self.dtype, self.param_dtype)
        self.wpe = Embed(cfg.n_positions, cfg.n_embd, self.dtype, self.param_dtype)
        self.drop = nn.Dropout(cfg.embd_pdrop)
        self.h = NumberedLayers(lambda i, name: GPT2Block(cfg, self.dtype, self.param_dtype, name=name), cfg.n_layer,
                                remat=self.remat)
        self.ln_f = nn.LayerNorm(cfg.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype)

    def __call__(self, input_ids, attention_mask, deterministic, cache_positions=None):
        length = input_ids.shape[1]
        positions = jnp.arange(length)[None, :] if cache_positions is None else cache_positions
        h = self.drop(self.wte(input_ids) + self.wpe(positions), deterministic=deterministic)
        mask = None  # decoding: attention.cached builds it
        if cache_positions is None:
            mask = attention.causal(length)
            if attention_mask is not None:
                mask = mask & attention.padding_mask(attention_mask)
        return self.ln_f(self.h(h, mask, deterministic, cache_positions))

    def attend(self, h):
        return self.wte.attend(h)


class GPT2LMHeadModel(CausalLM):
    """Causal LM returning logits of shape (batch, seq, vocab); the head is the token embedding."""

    backbone = GPT2Transformer
    backbone_name = "transformer"


FAMILY = register(
    Family(
        model_type="gpt2",
        build=GPT2LMHeadModel,
        config_class=transformers.GPT2Config,
        conv1d_kernels=True,
        base_prefix="transformer.",
        embedding_path=("transformer", "wte"),
    )
)
