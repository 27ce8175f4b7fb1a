"""BART encoder-decoder (BartForConditionalGeneration): post-LN layers, learned
positions offset by 2, one token embedding shared by encoder, decoder and LM head.

The parameter tree mirrors `transformers`' FlaxBartForConditionalGeneration:
``model/{shared, encoder/{embed_positions, layernorm_embedding, layers/<i>/{self_attn,
self_attn_layer_norm, fc1, fc2, final_layer_norm}}, decoder/{..., layers/<i>/{...,
encoder_attn, encoder_attn_layer_norm}}}, final_logits_bias``.
"""
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import transformers

from mend_jax.models import attention
from mend_jax.models.layers import EditableDense, Embed, ModelPart, NumberedLayers, activation
from mend_jax.models.registry import Family, register

Dtype = Any

# fairseq reserved the first two position rows for padding; HF keeps the table and shifts ids.
POSITION_OFFSET = 2
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which BART uses


class BartAttention(ModelPart):
    """Self-attention when `kv` is the query input, cross-attention when it is the encoder output."""

    n_heads: int

    @nn.compact
    def __call__(self, h, kv, mask, deterministic):
        d = self.config.d_model
        dense = lambda name: EditableDense(d, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        q = attention.split_heads(dense("q_proj")(h), self.n_heads)
        k = attention.split_heads(dense("k_proj")(kv), self.n_heads)
        v = attention.split_heads(dense("v_proj")(kv), self.n_heads)
        out = attention.attend(
            q, k, v, mask, scale=(d // self.n_heads) ** -0.5,
            dropout=nn.Dropout(self.config.attention_dropout), deterministic=deterministic,
        )
        return dense("out_proj")(attention.merge_heads(out))


class BartLayer(ModelPart):
    """Encoder layer, or decoder layer (adds cross-attention) when `is_decoder`."""

    is_decoder: bool

    @nn.compact
    def __call__(self, h, self_mask, encoder_h, cross_mask, deterministic):
        cfg = self.config
        side = "decoder" if self.is_decoder else "encoder"
        heads, ffn_dim = getattr(cfg, f"{side}_attention_heads"), getattr(cfg, f"{side}_ffn_dim")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def add_and_norm(h, out, name):  # post-LN: normalise after the residual sum
            out = nn.Dropout(cfg.dropout)(out, deterministic=deterministic)
            return nn.LayerNorm(LAYER_NORM_EPS, **kw, name=name)(h + out)

        attn = lambda name: BartAttention(config=cfg, n_heads=heads, **kw, name=name)
        h = add_and_norm(h, attn("self_attn")(h, h, self_mask, deterministic), "self_attn_layer_norm")
        if self.is_decoder:
            out = attn("encoder_attn")(h, encoder_h, cross_mask, deterministic)
            h = add_and_norm(h, out, "encoder_attn_layer_norm")
        x = activation(cfg.activation_function)(EditableDense(ffn_dim, **kw, name="fc1")(h))
        x = nn.Dropout(cfg.activation_dropout)(x, deterministic=deterministic)
        x = EditableDense(cfg.d_model, **kw, name="fc2")(x)
        return add_and_norm(h, x, "final_layer_norm")


class BartStack(ModelPart):
    """Encoder or decoder: embeddings, layernorm_embedding, then the layers."""

    embed_tokens: Embed  # the shared table, owned by the parent
    is_decoder: bool

    @nn.compact
    def __call__(self, ids, self_mask, encoder_h=None, cross_mask=None, deterministic=True):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        positions = jnp.arange(ids.shape[1])[None, :] + POSITION_OFFSET
        embed_positions = Embed(cfg.max_position_embeddings + POSITION_OFFSET, cfg.d_model, **kw, name="embed_positions")
        h = self.embed_tokens(ids) * scale + embed_positions(positions)
        h = nn.LayerNorm(LAYER_NORM_EPS, **kw, name="layernorm_embedding")(h)
        h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
        n_layers = cfg.decoder_layers if self.is_decoder else cfg.encoder_layers
        make = lambda i, name: BartLayer(config=cfg, is_decoder=self.is_decoder, **kw, name=name)
        layers = NumberedLayers(make, n_layers, remat=self.remat, name="layers")
        return layers(h, self_mask, encoder_h, cross_mask, deterministic)


class BartModule(ModelPart):
    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.shared = Embed(cfg.vocab_size, cfg.d_model, **kw)
        self.encoder = BartStack(config=cfg, embed_tokens=self.shared, is_decoder=False, remat=self.remat, **kw)
        self.decoder = BartStack(config=cfg, embed_tokens=self.shared, is_decoder=True, remat=self.remat, **kw)

    def __call__(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, deterministic):
        enc_mask = None if attention_mask is None else attention.padding_mask(attention_mask)
        encoder_h = self.encoder(input_ids, enc_mask, deterministic=deterministic)
        dec_mask = attention.causal(decoder_input_ids.shape[1])
        if decoder_attention_mask is not None:
            dec_mask = dec_mask & attention.padding_mask(decoder_attention_mask)
        h = self.decoder(decoder_input_ids, dec_mask, encoder_h, enc_mask, deterministic)
        return self.shared.attend(h)


class BartForConditionalGeneration(ModelPart):
    """Seq2seq LM returning decoder logits of shape (batch, decoder_len, vocab).

    `decoder_input_ids` must be given (no shifting of labels, no generation cache).
    """

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: Optional[jax.Array] = None,
        decoder_input_ids: Optional[jax.Array] = None,
        decoder_attention_mask: Optional[jax.Array] = None,
        deterministic: bool = True,
    ) -> jax.Array:
        if decoder_input_ids is None:
            raise ValueError("BART needs decoder_input_ids (e.g. the labels shifted right)")
        if not getattr(self.config, "tie_word_embeddings", True):
            # transformers then keeps separate encoder/decoder/LM-head tables, which this tree lacks.
            raise ValueError("BART with tie_word_embeddings=False is not supported")
        model = BartModule(self.config, self.dtype, self.param_dtype, remat=self.remat, name="model")
        logits = model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, deterministic)
        bias = self.param("final_logits_bias", nn.initializers.zeros, (1, self.config.vocab_size), self.param_dtype)
        return logits + bias.astype(self.dtype)


_TIED_EMBEDDING = "model.shared.weight"


def _aliases(name: str):
    # Some checkpoints store the shared table only under the encoder/decoder (or head) name.
    if name == _TIED_EMBEDDING:
        return ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")
    return ()


FAMILY = register(
    Family(
        model_type="bart",
        build=BartForConditionalGeneration,
        config_class=transformers.BartConfig,
        is_seq2seq=True,
        base_prefix="model.",
        aliases=_aliases,
        # a buffer, absent from BartModel checkpoints; zeros is what transformers uses then
        optional=lambda name: name == "final_logits_bias",
    )
)
