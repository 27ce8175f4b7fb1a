"""GPT-Neo: GPT-2's layout with global and local (sliding-window) attention layers, unscaled
attention scores, nn.Linear kernels and a tied LM head.

Layer i attends globally or locally as `config.attention_layers[i]` says; a local layer sees only
the `config.window_size` most recent positions. The parameter tree mirrors `transformers`'
GPTNeoForCausalLM:
``transformer/{wte,wpe,h/<i>/{ln_1,attn/attention/{q_proj,k_proj,v_proj,out_proj},ln_2,mlp/{c_fc,c_proj}},ln_f}``.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import transformers

from mend_jax.models import attention
from mend_jax.models.layers import CausalLM, EditableDense, Embed, FeedForward, ModelPart, NumberedLayers
from mend_jax.models.registry import Family, register

Dtype = Any
ATTENTION_TYPES = ("global", "local")


class GPTNeoSelfAttention(ModelPart):
    @nn.compact
    def __call__(self, h, mask, deterministic, cache_positions=None, window=None):
        cfg = self.config
        d = cfg.hidden_size
        dense = lambda name, bias: EditableDense(
            d, use_bias=bias, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        q, k, v = (attention.split_heads(dense(n, False)(h), cfg.num_heads) for n in ("q_proj", "k_proj", "v_proj"))
        if cache_positions is not None:
            k, v, mask = attention.cached(self, k, v, cache_positions, window)
        # transformers computes these unscaled scores from float32 q and k, whatever the model's dtype.
        out = attention.attend(
            q.astype(jnp.float32), k.astype(jnp.float32), v, mask, scale=1.0,
            dropout=nn.Dropout(cfg.attention_dropout), deterministic=deterministic,
        )
        out = dense("out_proj", True)(attention.merge_heads(out))
        return nn.Dropout(cfg.resid_dropout)(out, deterministic=deterministic)


class GPTNeoAttention(ModelPart):
    @nn.compact
    def __call__(self, h, mask, deterministic, cache_positions=None, window=None):
        return GPTNeoSelfAttention(self.config, self.dtype, self.param_dtype, name="attention")(
            h, mask, deterministic, cache_positions, window)


class GPTNeoBlock(ModelPart):
    attention_type: str

    @nn.compact
    def __call__(self, h, global_mask, local_mask, deterministic, cache_positions=None):
        eps = self.config.layer_norm_epsilon
        kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        ln = lambda name: nn.LayerNorm(eps, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        local = self.attention_type == "local"
        mask = local_mask if local else global_mask
        window = self.config.window_size if local else None
        h = h + GPTNeoAttention(**kw, name="attn")(ln("ln_1")(h), mask, deterministic, cache_positions, window)
        cfg = self.config
        mlp = FeedForward(cfg.intermediate_size or 4 * cfg.hidden_size, cfg.hidden_size, cfg.activation_function,
                          cfg.resid_dropout, ("c_fc", "c_proj"), self.dtype, self.param_dtype, name="mlp")
        return h + mlp(ln("ln_2")(h), deterministic)


class GPTNeoTransformer(ModelPart):
    def setup(self):
        cfg = self.config
        unknown = sorted(set(cfg.attention_layers) - set(ATTENTION_TYPES))
        if unknown:
            raise ValueError(f"GPT-Neo attention_layers may only hold {ATTENTION_TYPES}, got {unknown}")
        self.wte = Embed(cfg.vocab_size, cfg.hidden_size, self.dtype, self.param_dtype)
        self.wpe = Embed(cfg.max_position_embeddings, cfg.hidden_size, self.dtype, self.param_dtype)
        self.drop = nn.Dropout(cfg.embed_dropout)
        self.h = NumberedLayers(
            lambda i, name: GPTNeoBlock(cfg, self.dtype, self.param_dtype, cfg.attention_layers[i], name=name),
            cfg.num_layers,
            remat=self.remat,
        )
        self.ln_f = nn.LayerNorm(cfg.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype)

    def __call__(self, input_ids, attention_mask, deterministic, cache_positions=None):
        length = input_ids.shape[1]
        positions = jnp.arange(length)[None, :] if cache_positions is None else cache_positions
        h = self.drop(self.wte(input_ids) + self.wpe(positions), deterministic=deterministic)
        global_mask = local_mask = None  # decoding: attention.cached builds them
        if cache_positions is None:
            global_mask = attention.causal(length)
            local_mask = attention.local_causal(length, self.config.window_size)
            if attention_mask is not None:
                padding = attention.padding_mask(attention_mask)
                global_mask, local_mask = global_mask & padding, local_mask & padding
        return self.ln_f(self.h(h, global_mask, local_mask, deterministic, cache_positions))

    def attend(self, h):
        return self.wte.attend(h)


class GPTNeoForCausalLM(CausalLM):
    """Causal LM returning logits of shape (batch, seq, vocab); the head is the token embedding."""

    backbone = GPTNeoTransformer
    backbone_name = "transformer"


FAMILY = register(
    Family(
        model_type="gpt_neo",
        build=GPTNeoForCausalLM,
        config_class=transformers.GPTNeoConfig,
        conv1d_kernels=False,
        base_prefix="transformer.",
        embedding_path=("transformer", "wte"),
    )
)
