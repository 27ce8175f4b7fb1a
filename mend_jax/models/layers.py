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
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

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
        x = x.astype(self.dtype)
        y = jnp.einsum("...i,io->...o", x, kernel.astype(self.dtype), precision=self.precision)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return self.perturb("delta", y, collection=FACTOR_GRADS)


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
        return jnp.einsum("...d,vd->...v", h, self.embedding.astype(self.dtype))


class ModelPart(nn.Module):
    """A part of a model: the Hugging Face config it is built from, the compute dtype and the
    parameter dtype. Whole models subclass it with float32 defaults."""

    config: Any
    dtype: Dtype
    param_dtype: Dtype


class NumberedLayers(nn.Module):
    """Layers named "0".."n-1", as in Hugging Face's trees (`h/<i>`, `layer/<i>`, `layers/<i>`),
    applied in turn: `make_layer(i, name)` builds layer i, which maps (h, *args) to the next h."""

    make_layer: Callable[[int, str], nn.Module]
    n: int

    @nn.compact
    def __call__(self, h, *args):
        for i in range(self.n):
            h = self.make_layer(i, str(i))(h, *args)
        return h


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
