"""BERT (and BERT-shaped encoders such as MiniLM): post-LN encoder, optional classifier.

The parameter tree mirrors `transformers`' FlaxBertForSequenceClassification:
``bert/{embeddings/{word_embeddings,position_embeddings,token_type_embeddings,LayerNorm},
encoder/layer/<i>/{attention/{self/{query,key,value},output/{dense,LayerNorm}},
intermediate/dense,output/{dense,LayerNorm}},pooler/dense}`` and ``classifier``.

Which head the module has is decided by the config, so one `Family` serves both
kinds of checkpoint:

* classifier -- `config.architectures` names "BertForSequenceClassification", or
  the config was prepared for classification (``config.mend_head = "classifier"``).
  `__call__` returns logits (batch, config.num_labels) from the pooled output; the
  fc experiment uses num_labels=1. A checkpoint without a head (a bare BertModel)
  gets a freshly initialised ``classifier``.
* encoder -- anything else (a bare BertModel such as MiniLM): `__call__` returns the
  last hidden state (batch, seq, hidden).

`__call__` always returns one array, as every family does. The pooled output
(tanh(dense(h[:, 0]))) and the hidden states are both available through
``module.apply(variables, ..., method="encode")``, which returns (hidden, pooled).
"""
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import transformers

from mend_jax.models import attention
from mend_jax.models.layers import EditableDense, Embed, ModelPart, NumberedLayers, activation
from mend_jax.models.registry import Family, register

Dtype = Any


def has_classifier(config) -> bool:
    return (
        "BertForSequenceClassification" in (getattr(config, "architectures", None) or ())
        or getattr(config, "mend_head", None) == "classifier"
    )


def _dense(module: nn.Module, features: int, name: Optional[str] = None) -> EditableDense:
    init = nn.initializers.normal(module.config.initializer_range)
    return EditableDense(features, dtype=module.dtype, param_dtype=module.param_dtype, kernel_init=init, name=name)


def _layer_norm(module: nn.Module, name: str) -> nn.LayerNorm:
    eps = module.config.layer_norm_eps
    return nn.LayerNorm(eps, dtype=module.dtype, param_dtype=module.param_dtype, name=name)


class BertEmbeddings(ModelPart):
    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic):
        cfg = self.config
        embed = lambda n, name: Embed(
            n, cfg.hidden_size, self.dtype, self.param_dtype,
            embedding_init=nn.initializers.normal(cfg.initializer_range), name=name,
        )
        positions = jnp.arange(input_ids.shape[1])[None, :]
        h = (
            embed(cfg.vocab_size, "word_embeddings")(input_ids)
            + embed(cfg.max_position_embeddings, "position_embeddings")(positions)
            + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        )
        h = _layer_norm(self, "LayerNorm")(h)
        return nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)


class BertSelfAttention(ModelPart):
    @nn.compact
    def __call__(self, h, mask, deterministic):
        cfg = self.config
        n_heads = cfg.num_attention_heads
        q, k, v = (attention.split_heads(_dense(self, cfg.hidden_size, n)(h), n_heads) for n in ("query", "key", "value"))
        out = attention.attend(
            q, k, v, mask, scale=(cfg.hidden_size // n_heads) ** -0.5,
            dropout=nn.Dropout(cfg.attention_probs_dropout_prob), deterministic=deterministic,
        )
        return attention.merge_heads(out)


class BertResidualOutput(ModelPart):
    """dense -> dropout -> LayerNorm(· + residual): BERT's post-LN sublayer output.

    Used for both `attention.output` and `output`, which have the same layout.
    """

    @nn.compact
    def __call__(self, h, residual, deterministic):
        h = _dense(self, self.config.hidden_size, "dense")(h)
        h = nn.Dropout(self.config.hidden_dropout_prob)(h, deterministic=deterministic)
        return _layer_norm(self, "LayerNorm")(h + residual)


class BertAttention(ModelPart):
    @nn.compact
    def __call__(self, h, mask, deterministic):
        kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        out = BertSelfAttention(**kw, name="self")(h, mask, deterministic)
        return BertResidualOutput(**kw, name="output")(out, h, deterministic)


class BertIntermediate(ModelPart):
    @nn.compact
    def __call__(self, h):
        return activation(self.config.hidden_act)(_dense(self, self.config.intermediate_size, "dense")(h))


class BertLayer(ModelPart):
    @nn.compact
    def __call__(self, h, mask, deterministic):
        kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        h = BertAttention(**kw, name="attention")(h, mask, deterministic)
        inner = BertIntermediate(**kw, name="intermediate")(h)
        return BertResidualOutput(**kw, name="output")(inner, h, deterministic)


class BertEncoder(ModelPart):
    @nn.compact
    def __call__(self, h, mask, deterministic):
        make = lambda i, name: BertLayer(self.config, self.dtype, self.param_dtype, name=name)
        layers = NumberedLayers(make, self.config.num_hidden_layers, remat=self.remat, name="layer")
        return layers(h, mask, deterministic)


class BertPooler(ModelPart):
    @nn.compact
    def __call__(self, h):
        return jnp.tanh(_dense(self, self.config.hidden_size, "dense")(h[:, 0]))


class BertModule(ModelPart):
    """The backbone: returns (last hidden state, pooled output)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, deterministic):
        kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        mask = None if attention_mask is None else attention.padding_mask(attention_mask)
        h = BertEmbeddings(**kw, name="embeddings")(input_ids, token_type_ids, deterministic)
        h = BertEncoder(**kw, remat=self.remat, name="encoder")(h, mask, deterministic)
        # Computed even when the head does not use it, so that the pooler's
        # weights are part of the tree and round-trip with the checkpoint.
        return h, BertPooler(**kw, name="pooler")(h)


class Bert(ModelPart):
    """BERT with the head its config asks for (see the module docstring)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        position_type = getattr(cfg, "position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"BERT with position_embedding_type={position_type!r} is not supported; only 'absolute'")
        self.bert = BertModule(cfg, self.dtype, self.param_dtype, remat=self.remat)
        if has_classifier(cfg):
            rate = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
            self.dropout = nn.Dropout(rate)
            self.classifier = _dense(self, cfg.num_labels)  # setup names it after the attribute

    def encode(
        self,
        input_ids: jax.Array,
        attention_mask: Optional[jax.Array] = None,
        token_type_ids: Optional[jax.Array] = None,
        deterministic: bool = True,
    ) -> Tuple[jax.Array, jax.Array]:
        """(last hidden state (batch, seq, hidden), pooled output (batch, hidden))."""
        return self.bert(input_ids, attention_mask, token_type_ids, deterministic)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: Optional[jax.Array] = None,
        token_type_ids: Optional[jax.Array] = None,
        deterministic: bool = True,
    ) -> jax.Array:
        hidden, pooled = self.encode(input_ids, attention_mask, token_type_ids, deterministic)
        if not has_classifier(self.config):
            return hidden
        return self.classifier(self.dropout(pooled, deterministic=deterministic))


_OLD_LAYER_NORM_NAMES = ((".LayerNorm.weight", ".LayerNorm.gamma"), (".LayerNorm.bias", ".LayerNorm.beta"))


def _old_layer_norm_name(name: str) -> Tuple[str, ...]:
    """Checkpoints converted from TF BERT call LayerNorm's weight/bias gamma/beta."""
    for new, old in _OLD_LAYER_NORM_NAMES:
        if name.endswith(new):
            return (name[: -len(new)] + old,)
    return ()


FAMILY = register(
    Family(
        model_type="bert",
        build=Bert,
        config_class=transformers.BertConfig,
        base_prefix="bert.",
        aliases=_old_layer_norm_name,
        optional=lambda name: name in ("classifier.weight", "classifier.bias"),
    )
)
