"""Shared building blocks of the Flax models.

`EditableDense` is the one dense layer every model uses. Besides computing
y = x W + b with a (d_in, d_out) kernel, it records what MEND needs:

* it `sow`s its input x into the ``FACTOR_INPUTS`` collection (kept only when
  that collection is mutable, so ordinary forward passes pay nothing), and
* it `perturb`s its output y with a zero variable in ``FACTOR_GRADS``, so that
  `jax.grad` with respect to that variable is the output gradient δ.

One `jax.grad` therefore yields (x, δ) for every inner matrix without ever
forming the gradient of a base weight.
"""
import dataclasses
from typing import Any, Callable, ClassVar, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mend_jax.models.products import dense_product

FACTOR_INPUTS = "mend_inputs"
FACTOR_GRADS = "mend_grads"

Dtype = Any
Initializer = Callable[..., jax.Array]


class EditableDense(nn.Module):
    """Dense layer with a (d_in, d_out) kernel that exposes MEND's factors."""

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = nn.initializers.normal(0.02)
    bias_init: Initializer = nn.initializers.zeros
    precision: Optional[jax.lax.Precision] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        self.sow(FACTOR_INPUTS, "x", x, reduce_fn=lambda _, v: v, init_fn=lambda: None)
        # A float32 kernel in a bf16 model (an edited matrix) is multiplied in float32, so that
        # an edit's small ΔW is not rounded away; the output is in the model's dtype again.
        compute = jnp.promote_types(self.dtype, kernel.dtype)
        y = dense_product(x.astype(compute), kernel.astype(compute), self.precision)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = y + bias.astype(compute)
        return self.perturb("delta", y.astype(self.dtype), collection=FACTOR_GRADS)


class Embed(nn.Module):
    """Token embedding whose table can also be used as a tied output head."""

    num_embeddings: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    embedding_init: Initializer = nn.initializers.normal(0.02)

    def setup(self):
        self.embedding = self.param(
            "embedding", self.embedding_init, (self.num_embeddings, self.features), self.param_dtype
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, h: jax.Array) -> jax.Array:
        # Not weight first (mend_jax/models/products.py): a tied head's 50k-row swapped product
        # runs on one thread, and the step on two cores was 2-5% slower with it.
        return jnp.einsum("...d,vd->...v", h, self.embedding.astype(self.dtype))


class RMSNorm(nn.Module):
    """Root-mean-square norm without bias or mean subtraction (T5, Llama), its variance in float32.

    T5 multiplies by the weight in float32 and then casts; Llama casts the normalised value back
    to the input's dtype first (`weight_in_float32=False`). In float32 both are the same.
    """

    features: int
    eps: float
    dtype: Dtype
    param_dtype: Dtype
    weight_in_float32: bool = True

    @nn.compact
    def __call__(self, h):
        weight = self.param("weight", nn.initializers.ones, (self.features,), self.param_dtype)
        h32 = h.astype(jnp.float32)
        h32 = h32 * jax.lax.rsqrt(jnp.mean(h32 * h32, axis=-1, keepdims=True) + self.eps)
        if self.weight_in_float32:
            return (weight.astype(jnp.float32) * h32).astype(self.dtype)
        return weight.astype(self.dtype) * h32.astype(h.dtype)


class ModelPart(nn.Module):
    """A part of a model: the Hugging Face config it is built from, the compute dtype, the
    parameter dtype and the rematerialisation policy of its layers (a `REMAT_POLICIES` name).
    Whole models subclass it with float32 defaults."""

    config: Any
    dtype: Dtype
    param_dtype: Dtype
    remat: str = dataclasses.field(default="none", kw_only=True)  # keyword-only: subclasses add fields


# The base model's dtypes by their config names (model.dtype).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Rematerialisation policies by name: which intermediate values of a layer the backward pass
# keeps; the rest are recomputed. "full" keeps only the layer's inputs.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(policy: str) -> str:
    if policy not in REMAT_POLICIES:
        raise ValueError(f"model.remat must be one of {sorted(REMAT_POLICIES)}, got {policy!r}")
    return policy


class FeedForward(nn.Module):
    """The two-matrix MLP of GPT-2, GPT-Neo and GPT-J: out(act(in(h))), then dropout."""

    inner: int
    features: int
    act: str  # an ACTIVATIONS name
    dropout: float
    names: Tuple[str, str]  # the two dense layers, as Hugging Face names them
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, deterministic):
        dense = lambda n, name: EditableDense(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        h = dense(self.features, self.names[1])(activation(self.act)(dense(self.inner, self.names[0])(h)))
        return nn.Dropout(self.dropout)(h, deterministic=deterministic)


class CausalLM(ModelPart):
    """A decoder-only LM: ids (batch, seq) -> logits (batch, seq, vocab).

    Subclasses name their `backbone` (a ModelPart mapping (input_ids, attention_mask,
    deterministic, cache_positions) to hidden states, with `attend` for a tied head) and where it sits
    in the tree; `lm_head_bias` is None for a head tied to the token embedding, else whether the
    untied `lm_head` has a bias.

    With `cache_positions` (batch, seq), the absolute positions of `input_ids`, the model decodes
    incrementally: applied with the "cache" collection mutable, each attention layer keeps the
    keys and values it has seen (attention.cached; models/decoding.py). `attention_mask` is then
    unused: each row's tokens are contiguous from position 0.
    """

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    backbone: ClassVar[type]
    backbone_name: ClassVar[str]

    def lm_head_bias(self) -> Optional[bool]:
        return None

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None,
                 deterministic: bool = True, cache_positions: Optional[jax.Array] = None) -> jax.Array:
        backbone = self.backbone(self.config, self.dtype, self.param_dtype, remat=self.remat, name=self.backbone_name)
        h = backbone(input_ids, attention_mask, deterministic, cache_positions)
        bias = self.lm_head_bias()
        if bias is None:
            return backbone.attend(h)
        head = EditableDense(self.config.vocab_size, use_bias=bias, dtype=self.dtype, param_dtype=self.param_dtype,
                             name="lm_head")
        return head(h)


class NumberedLayers(nn.Module):
    """Layers named "0".."n-1", as in Hugging Face's trees (`h/<i>`, `layer/<i>`, `layers/<i>`),
    applied in turn: `make_layer(i, name)` builds layer i, which maps (h, *args) to the next h.

    With `remat` other than "none", each layer runs under `jax.checkpoint` with that policy;
    the parameter tree and MEND's sown factors are the same as without it.
    """

    make_layer: Callable[[int, str], nn.Module]
    n: int
    remat: str = "none"

    @nn.compact
    def __call__(self, h, *args):
        for i in range(self.n):
            h = call_layer(self, lambda module: module.make_layer(i, str(i)), self.remat, h, *args)
        return h


def call_layer(parent: nn.Module, make_layer: Callable[[nn.Module], nn.Module], remat: str, *args):
    """`make_layer(parent)(*args)`, under `jax.checkpoint` with the policy `remat` names.

    The layer is built inside the (lifted) parent, so its parameters sit where they would
    without rematerialisation. Non-array arguments (the `deterministic` flag, absent masks)
    are closed over, so that only arrays cross the checkpoint boundary.
    """
    is_array = [_is_array(a) for a in args]

    def run(module, *arrays):
        arrays = iter(arrays)
        return make_layer(module)(*[next(arrays) if a else v for a, v in zip(is_array, args)])

    if check_remat(remat) != "none":
        run = nn.checkpoint(run, policy=REMAT_POLICIES[remat], prevent_cse=True)
    return run(parent, *[v for a, v in zip(is_array, args) if a])


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray)) or hasattr(x, "shape")


ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}") from None
