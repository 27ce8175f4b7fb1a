"""GPT-J: rotary positions on the first `rotary_dim` features of each head (interleaved pairs),
attention and MLP in parallel on one shared LayerNorm, nn.Linear kernels and an untied LM head
with a bias.

Each block computes ``h + attn(ln_1(h)) + mlp(ln_1(h))``. The parameter tree mirrors
`transformers`' GPTJForCausalLM:
``transformer/{wte,h/<i>/{ln_1,attn/{q_proj,k_proj,v_proj,out_proj},mlp/{fc_in,fc_out}},ln_f}`` and
``lm_head``.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import transformers

from mend_jax.models import attention, rotary
from mend_jax.models.layers import CausalLM, EditableDense, Embed, FeedForward, ModelPart, NumberedLayers
from mend_jax.models.registry import Family, register

Dtype = Any


def rotary_dim(cfg) -> int:
    """Features of each head that rotate; None (older configs) rotates the whole head."""
    head_dim = cfg.n_embd // cfg.n_head
    dim = cfg.rotary_dim or head_dim
    if dim > head_dim or dim % 2:
        raise ValueError(f"GPT-J rotary_dim must be even and at most head_dim={head_dim}, got {cfg.rotary_dim}")
    return dim


class GPTJAttention(ModelPart):
    @nn.compact
    def __call__(self, h, positions, mask, deterministic, decode=False):
        cfg = self.config
        d = cfg.n_embd
        dense = lambda name: EditableDense(d, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        q, k, v = (attention.split_heads(dense(n)(h), cfg.n_head) for n in ("q_proj", "k_proj", "v_proj"))
        r = rotary_dim(cfg)
        inv_freq = rotary.inverse_frequencies(r)
        rotate = lambda t: jnp.concatenate(
            [rotary.apply(t[..., :r], positions, inv_freq, interleaved=True), t[..., r:]], axis=-1
        )
        q, k = rotate(q), rotate(k)
        if decode:
            k, v, mask = attention.cached(self, k, v, positions)
        # transformers computes the scores from float32 q and k, whatever the model's dtype.
        out = attention.attend(
            q.astype(jnp.float32), k.astype(jnp.float32), v, mask,
            scale=(d // cfg.n_head) ** -0.5, dropout=nn.Dropout(cfg.attn_pdrop), deterministic=deterministic,
        )
        out = dense("out_proj")(attention.merge_heads(out))
        return nn.Dropout(cfg.resid_pdrop)(out, deterministic=deterministic)


class GPTJBlock(ModelPart):
    @nn.compact
    def __call__(self, h, positions, mask, deterministic, decode=False):
        kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        normed = nn.LayerNorm(self.config.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
                              name="ln_1")(h)
        attn = GPTJAttention(**kw, name="attn")(normed, positions, mask, deterministic, decode)
        cfg = self.config
        mlp = FeedForward(cfg.n_inner or 4 * cfg.n_embd, cfg.n_embd, cfg.activation_function, cfg.resid_pdrop,
                          ("fc_in", "fc_out"), self.dtype, self.param_dtype, name="mlp")
        return h + attn + mlp(normed, deterministic)


class GPTJTransformer(ModelPart):
    def setup(self):
        cfg = self.config
        self.wte = Embed(cfg.vocab_size, cfg.n_embd, self.dtype, self.param_dtype)
        self.drop = nn.Dropout(cfg.embd_pdrop)
        self.h = NumberedLayers(lambda i, name: GPTJBlock(cfg, self.dtype, self.param_dtype, name=name), cfg.n_layer,
                                remat=self.remat)
        self.ln_f = nn.LayerNorm(cfg.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype)

    def __call__(self, input_ids, attention_mask, deterministic, cache_positions=None):
        length = input_ids.shape[1]
        decode = cache_positions is not None
        positions = cache_positions if decode else jnp.arange(length)[None, :]
        h = self.drop(self.wte(input_ids), deterministic=deterministic)
        mask = None  # decoding: attention.cached builds it
        if not decode:
            mask = attention.causal(length)
            if attention_mask is not None:
                mask = mask & attention.padding_mask(attention_mask)
        return self.ln_f(self.h(h, positions, mask, deterministic, decode))


class GPTJForCausalLM(CausalLM):
    """Causal LM returning logits of shape (batch, seq, vocab), through an untied head with a bias."""

    backbone = GPTJTransformer
    backbone_name = "transformer"

    def lm_head_bias(self):
        return True


FAMILY = register(
    Family(
        model_type="gptj",
        build=GPTJForCausalLM,
        config_class=transformers.GPTJConfig,
        conv1d_kernels=False,
        base_prefix="transformer.",
        embedding_path=("transformer", "wte"),
    )
)
