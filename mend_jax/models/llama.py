"""Llama, Qwen2 and Mistral: pre-norm RMSNorm decoders with rotary positions, grouped-query
attention and a SwiGLU MLP; one implementation, registered for all three model types.

The parameter tree mirrors the PyTorch names of LlamaForCausalLM and its twins:
``model/{embed_tokens,layers/<i>/{input_layernorm,self_attn/{q_proj,k_proj,v_proj,o_proj},
post_attention_layernorm,mlp/{gate_proj,up_proj,down_proj}},norm}`` and, when the
embeddings are untied, ``lm_head``. The families differ only in which projections
have biases and in where a sliding window limits attention.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import transformers

from mend_jax.models import attention, rotary
from mend_jax.models.layers import CausalLM, EditableDense, Embed, ModelPart, NumberedLayers, RMSNorm, activation
from mend_jax.models.registry import Family, register

Dtype = Any


def head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def biases(cfg) -> tuple:
    """(q/k/v, o_proj, MLP) biases: Qwen2 always biases q/k/v only, Mistral nothing, Llama as configured."""
    if cfg.model_type == "qwen2":
        return True, False, False
    if cfg.model_type == "mistral":
        return False, False, False
    return cfg.attention_bias, cfg.attention_bias, cfg.mlp_bias


def is_sliding(cfg, layer: int) -> bool:
    """Whether layer `layer`'s queries see only the last `cfg.sliding_window` keys (themselves included):
    every Mistral layer when a window is set, the Qwen2 layers that `layer_types` marks."""
    if cfg.model_type == "mistral":
        return cfg.sliding_window is not None
    if cfg.model_type == "qwen2" and cfg.layer_types[layer] == "sliding_attention":
        if cfg.sliding_window is None:  # transformers refuses this config too
            raise ValueError(f"Qwen2 layer {layer} is a sliding_attention layer but the config sets no sliding_window")
        return True
    return False


class LlamaAttention(ModelPart):
    @nn.compact
    def __call__(self, h, positions, mask, deterministic, decode=False, window=None):
        cfg = self.config
        d, heads, kv_heads = head_dim(cfg), cfg.num_attention_heads, cfg.num_key_value_heads
        qkv_bias, o_bias, _ = biases(cfg)
        dense = lambda n, bias, name: EditableDense(
            n, use_bias=bias, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        q = attention.split_heads(dense(heads * d, qkv_bias, "q_proj")(h), heads)
        k = attention.split_heads(dense(kv_heads * d, qkv_bias, "k_proj")(h), kv_heads)
        v = attention.split_heads(dense(kv_heads * d, qkv_bias, "v_proj")(h), kv_heads)
        inv_freq = rotary.inverse_frequencies(d, *rotary.rope_settings(cfg))
        q, k = rotary.apply(q, positions, inv_freq), rotary.apply(k, positions, inv_freq)
        if decode:  # the cache keeps the kv_heads, before they are repeated
            k, v, mask = attention.cached(self, k, v, positions, window)
        # Grouped-query attention: query head j reads key/value head j // (heads / kv_heads), as repeat_kv.
        k, v = (jnp.repeat(t, heads // kv_heads, axis=2) for t in (k, v))
        out = attention.attend(
            q, k, v, mask, scale=d ** -0.5,
            dropout=nn.Dropout(cfg.attention_dropout), deterministic=deterministic,
        )
        return dense(cfg.hidden_size, o_bias, "o_proj")(attention.merge_heads(out))


class LlamaMLP(ModelPart):
    @nn.compact
    def __call__(self, h):
        cfg = self.config
        bias = biases(cfg)[2]
        dense = lambda n, name: EditableDense(
            n, use_bias=bias, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        gated = activation(cfg.hidden_act)(dense(cfg.intermediate_size, "gate_proj")(h))
        return dense(cfg.hidden_size, "down_proj")(gated * dense(cfg.intermediate_size, "up_proj")(h))


class LlamaDecoderLayer(ModelPart):
    sliding: bool = False

    @nn.compact
    def __call__(self, h, positions, full_mask, sliding_mask, deterministic, decode=False):
        cfg = self.config
        kw = dict(config=cfg, dtype=self.dtype, param_dtype=self.param_dtype)
        norm = lambda name: RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, self.dtype, self.param_dtype,
                                    weight_in_float32=False, name=name)
        mask = sliding_mask if self.sliding else full_mask
        window = cfg.sliding_window if self.sliding else None
        h = h + LlamaAttention(**kw, name="self_attn")(norm("input_layernorm")(h), positions, mask, deterministic,
                                                       decode, window)
        return h + LlamaMLP(**kw, name="mlp")(norm("post_attention_layernorm")(h))


class LlamaModel(ModelPart):
    def setup(self):
        cfg = self.config
        self.sliding = [is_sliding(cfg, i) for i in range(cfg.num_hidden_layers)]
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, self.dtype, self.param_dtype)
        self.layers = NumberedLayers(
            lambda i, name: LlamaDecoderLayer(
                cfg, self.dtype, self.param_dtype, sliding=self.sliding[i], name=name
            ),
            cfg.num_hidden_layers,
            remat=self.remat,
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, self.dtype, self.param_dtype, weight_in_float32=False)

    def __call__(self, input_ids, attention_mask, deterministic, cache_positions=None):
        length = input_ids.shape[1]
        decode = cache_positions is not None
        positions = cache_positions if decode else jnp.arange(length)[None, :]
        full_mask = sliding_mask = None  # decoding: attention.cached builds them
        if not decode:
            full_mask = attention.causal(length)
            if attention_mask is not None:
                full_mask = full_mask & attention.padding_mask(attention_mask)
            if any(self.sliding):
                sliding_mask = full_mask & attention.local_causal(length, self.config.sliding_window)
        h = self.layers(self.embed_tokens(input_ids), positions, full_mask, sliding_mask, deterministic, decode)
        return self.norm(h)

    def attend(self, h):
        return self.embed_tokens.attend(h)


class LlamaForCausalLM(CausalLM):
    """Causal LM returning logits of shape (batch, seq, vocab); an untied head has no bias."""

    backbone = LlamaModel
    backbone_name = "model"

    def lm_head_bias(self):
        return None if self.config.tie_word_embeddings else False


FAMILIES = [
    register(
        Family(
            model_type=config_class.model_type,
            build=LlamaForCausalLM,
            config_class=config_class,
            conv1d_kernels=False,
            base_prefix="model.",
            embedding_path=("model", "embed_tokens"),
        )
    )
    for config_class in (transformers.LlamaConfig, transformers.Qwen2Config, transformers.MistralConfig)
]
