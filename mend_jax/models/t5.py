"""T5 encoder-decoder (v1.0 ReLU and v1.1 gated-GELU), as T5ForConditionalGeneration.

The parameter tree mirrors `transformers`' FlaxT5ForConditionalGeneration:
``shared``, ``{encoder,decoder}/block/<i>/layer/<j>/{SelfAttention,EncDecAttention,
DenseReluDense,layer_norm}``, ``{encoder,decoder}/final_layer_norm`` and, for
untied checkpoints, ``lm_head``. Only layer 0 of each stack owns a relative
position bias; the other layers reuse it.
"""
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import transformers

from mend_jax.models import attention
from mend_jax.models.layers import EditableDense, Embed, ModelPart, RMSNorm, activation, call_layer
from mend_jax.models.registry import Family, register

Dtype = Any


def ties_lm_head(cfg) -> bool:
    """Whether logits are (h * d_model**-0.5) @ shared.T rather than a separate lm_head.

    transformers >= 5 forces `tie_word_embeddings=True` on every T5Config and keeps
    the v1.0/v1.1 distinction in `scale_decoder_outputs`; older configs only have
    `tie_word_embeddings`. v1.1 checkpoints store their own `lm_head.weight`.
    """
    return getattr(cfg, "scale_decoder_outputs", cfg.tie_word_embeddings)


def relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance):
    """T5's bucketing of (key - query) offsets: exact for small ones, log-spaced up to max_distance."""
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).astype(relative_position.dtype) * num_buckets
        relative_position = jnp.abs(relative_position)
    else:
        relative_position = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    # max(., 1) keeps log finite where the small branch is taken anyway.
    log_ratio = jnp.log(jnp.maximum(relative_position, 1).astype(jnp.float32) / max_exact)
    if_large = max_exact + (log_ratio / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(
        relative_position.dtype
    )
    if_large = jnp.minimum(if_large, num_buckets - 1)
    return buckets + jnp.where(is_small, relative_position, if_large)


class T5Attention(ModelPart):
    causal: bool
    has_relative_attention_bias: bool

    def position_bias(self, q_len, k_len):
        cfg = self.config
        context = jnp.arange(q_len)[:, None]
        memory = jnp.arange(k_len)[None, :]
        buckets = relative_position_bucket(
            memory - context, not self.causal, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        )
        table = Embed(cfg.relative_attention_num_buckets, cfg.num_heads, self.dtype, self.param_dtype,
                      name="relative_attention_bias")
        return jnp.transpose(table(buckets), (2, 0, 1))[None]  # (1, heads, q, k)

    @nn.compact
    def __call__(self, h, kv, mask, position_bias, deterministic):
        """`kv` is None for self-attention, the encoder output for cross-attention."""
        cfg = self.config
        inner = cfg.num_heads * cfg.d_kv
        dense = lambda n, name: EditableDense(
            n, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        kv = h if kv is None else kv
        q, k, v = (attention.split_heads(dense(inner, n)(x), cfg.num_heads) for n, x in (("q", h), ("k", kv), ("v", kv)))
        if position_bias is None and self.has_relative_attention_bias:
            position_bias = self.position_bias(h.shape[1], kv.shape[1])
        # T5 folds the 1/sqrt(d) scaling into its initialisation, so scores are unscaled.
        out = attention.attend(
            q, k, v, mask, scale=1.0, bias=position_bias,
            dropout=nn.Dropout(cfg.dropout_rate), deterministic=deterministic,
        )
        return dense(cfg.d_model, "o")(attention.merge_heads(out)), position_bias


class T5DenseReluDense(ModelPart):
    """wi -> act -> wo (v1.0), or act(wi_0) * wi_1 -> wo (gated, v1.1)."""

    @nn.compact
    def __call__(self, h, deterministic):
        cfg = self.config
        dense = lambda n, name: EditableDense(
            n, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        act = activation(cfg.dense_act_fn)
        if cfg.is_gated_act:
            h = act(dense(cfg.d_ff, "wi_0")(h)) * dense(cfg.d_ff, "wi_1")(h)
        else:
            h = act(dense(cfg.d_ff, "wi")(h))
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        return dense(cfg.d_model, "wo")(h)


class T5SubLayer(ModelPart):
    """Pre-norm residual around one of: self-attention, cross-attention, feed-forward.

    HF names these T5LayerSelfAttention / T5LayerCrossAttention / T5LayerFF; they
    differ only in the wrapped module's name, which `kind` selects.
    """

    kind: str  # "SelfAttention", "EncDecAttention" or "DenseReluDense"
    causal: bool
    has_relative_attention_bias: bool

    @nn.compact
    def __call__(self, h, kv, mask, position_bias, deterministic):
        cfg = self.config
        normed = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, self.dtype, self.param_dtype, name="layer_norm")(h)
        if self.kind == "DenseReluDense":
            out = T5DenseReluDense(cfg, self.dtype, self.param_dtype, name=self.kind)(normed, deterministic)
        else:
            out, position_bias = T5Attention(
                config=cfg, dtype=self.dtype, param_dtype=self.param_dtype, causal=self.causal,
                has_relative_attention_bias=self.has_relative_attention_bias, name=self.kind,
            )(normed, kv, mask, position_bias, deterministic)
        return h + nn.Dropout(cfg.dropout_rate)(out, deterministic=deterministic), position_bias


class T5Block(ModelPart):
    """Sub-layers named "0", "1"(, "2"), as HF's FlaxT5Block."""

    causal: bool
    has_relative_attention_bias: bool

    @nn.compact
    def __call__(self, h, mask, position_bias, encoder_h, encoder_mask, deterministic):
        kw = dict(config=self.config, causal=self.causal, dtype=self.dtype, param_dtype=self.param_dtype)
        h, position_bias = T5SubLayer(
            kind="SelfAttention", has_relative_attention_bias=self.has_relative_attention_bias, **kw, name="0"
        )(h, None, mask, position_bias, deterministic)
        if self.causal:  # the decoder attends to the encoder, without a position bias
            h, _ = T5SubLayer(kind="EncDecAttention", has_relative_attention_bias=False, **kw, name="1")(
                h, encoder_h, encoder_mask, None, deterministic
            )
        ff_name = "2" if self.causal else "1"
        h, _ = T5SubLayer(kind="DenseReluDense", has_relative_attention_bias=False, **kw, name=ff_name)(
            h, None, None, None, deterministic
        )
        return h, position_bias


class T5LayerCollection(ModelPart):
    """Only adds the ``layer`` level of HF's tree: block/<i>/layer/<j>."""

    causal: bool
    has_relative_attention_bias: bool

    @nn.compact
    def __call__(self, *args):
        return T5Block(
            config=self.config, dtype=self.dtype, param_dtype=self.param_dtype, causal=self.causal,
            has_relative_attention_bias=self.has_relative_attention_bias, name="layer",
        )(*args)


class T5BlockCollection(ModelPart):
    causal: bool
    num_layers: int

    @nn.compact
    def __call__(self, h, mask, encoder_h, encoder_mask, deterministic):
        position_bias = None  # computed by layer 0, then shared by all layers
        for i in range(self.num_layers):
            make = lambda module, i=i: T5LayerCollection(
                config=self.config, dtype=self.dtype, param_dtype=self.param_dtype, causal=self.causal,
                has_relative_attention_bias=i == 0, name=str(i),
            )
            h, position_bias = call_layer(
                self, make, self.remat, h, mask, position_bias, encoder_h, encoder_mask, deterministic
            )
        return h


class T5Stack(ModelPart):
    """Encoder (causal=False) or decoder (causal=True) over already embedded tokens."""

    causal: bool
    num_layers: int

    @nn.compact
    def __call__(self, h, mask, encoder_h, encoder_mask, deterministic):
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        h = drop(h, deterministic=deterministic)
        blocks = T5BlockCollection(
            config=cfg, dtype=self.dtype, param_dtype=self.param_dtype, causal=self.causal, num_layers=self.num_layers,
            remat=self.remat, name="block",
        )
        h = blocks(
            h, mask, encoder_h, encoder_mask, deterministic
        )
        h = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, self.dtype, self.param_dtype, name="final_layer_norm")(h)
        return drop(h, deterministic=deterministic)


class T5ForConditionalGeneration(ModelPart):
    """Seq2seq LM returning decoder logits of shape (batch, decoder_len, vocab).

    The decoder inputs are given explicitly (already shifted right, starting with
    `decoder_start_token_id`); there is no generation cache.
    """

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        kw = dict(config=cfg, dtype=self.dtype, param_dtype=self.param_dtype, remat=self.remat)
        self.shared = Embed(cfg.vocab_size, cfg.d_model, self.dtype, self.param_dtype)
        self.encoder = T5Stack(causal=False, num_layers=cfg.num_layers, **kw)
        self.decoder = T5Stack(causal=True, num_layers=cfg.num_decoder_layers, **kw)
        if not ties_lm_head(cfg):
            self.lm_head = EditableDense(
                cfg.vocab_size, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype
            )

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: Optional[jax.Array] = None,
        decoder_input_ids: Optional[jax.Array] = None,
        decoder_attention_mask: Optional[jax.Array] = None,
        deterministic: bool = True,
    ) -> jax.Array:
        if decoder_input_ids is None:
            raise ValueError("T5 needs decoder_input_ids (the labels shifted right, starting with the pad id)")
        encoder_mask = None if attention_mask is None else attention.padding_mask(attention_mask)
        encoder_h = self.encoder(self.shared(input_ids), encoder_mask, None, None, deterministic)

        decoder_mask = attention.causal(decoder_input_ids.shape[1])
        if decoder_attention_mask is not None:
            decoder_mask = decoder_mask & attention.padding_mask(decoder_attention_mask)
        h = self.decoder(self.shared(decoder_input_ids), decoder_mask, encoder_h, encoder_mask, deterministic)

        if ties_lm_head(self.config):
            # v1.0 ties the head to the input embedding and rescales to undo its scale.
            return self.shared.attend(h * self.config.d_model ** -0.5)
        return self.lm_head(h)


_EMBED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def _aliases(name: str):
    # The shared embedding is tied to both stacks' embed_tokens; some checkpoints
    # keep only one of those copies. transformers >= 5 also ties v1.1's lm_head to
    # it and then saves no lm_head.weight.
    if name == "shared.weight":
        return _EMBED_COPIES
    if name == "lm_head.weight":
        return ("shared.weight",) + _EMBED_COPIES
    return ()


FAMILY = register(
    Family(
        model_type="t5",
        build=T5ForConditionalGeneration,
        config_class=transformers.T5Config,
        is_seq2seq=True,
        aliases=_aliases,
    )
)
