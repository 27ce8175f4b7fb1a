"""Matrix products laid out for XLA:CPU's GEMM when one side has few rows.

A product y = x Wᵀ that contracts a weight on its last (contiguous) axis, as the backward
pass's dx = dy Wᵀ of every dense layer does, runs up to 3.1x slower on XLA:CPU (each weight
out of the caches, as in a step) than the same numbers computed as (W xᵀ)ᵀ when x has at most
32 rows: the library repacks the whole weight for a few rows of x, where the swapped product
reads the weight as it lies and packs only x. The swapped product wants its few rows in
multiples of 8 (30 rows run slower than 32), so x is padded with zero rows to one. Past 32 rows
neither form wins reliably (`python benchmarks/gemm_layouts.py --swap --cold`). MEND's edit
batches (8-token answers, 32-token questions and claims, 30-token statements) are all at most
32 rows.

The swapped product is written as a dot whose output passes an optimization barrier before
it is transposed back: without the barrier XLA folds the transpose into the dot and is back
at the slow layout. Both forms add the same products; only the GEMM's blocking, and so the
rounding, can differ. On other backends (cuBLAS, TPU) the layout is left to XLA. Under `vmap`
the rows counted are one example's.
"""
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

# The most rows of x for which (W xᵀ)ᵀ replaces x Wᵀ (0: never), and the multiple of rows it
# pads x to.
WEIGHT_FIRST_MAX_ROWS = 32
ROW_MULTIPLE = 8


def weight_first(rows: int) -> bool:
    """Whether a product with `rows` rows on the small side is computed weight first."""
    return 0 < rows <= WEIGHT_FIRST_MAX_ROWS and jax.default_backend() == "cpu"


def swapped_product(x: jax.Array, w: jax.Array, precision: Optional[lax.Precision] = None) -> jax.Array:
    """x (..., k) times w (n, k) contracted on k, `einsum("...k,nk->...n")`, computed weight
    first as (w xᵀ)ᵀ, at any row count."""
    rows = math.prod(x.shape[:-1])
    flat = jnp.pad(x.reshape(rows, x.shape[-1]), ((0, -rows % ROW_MULTIPLE), (0, 0)))
    swapped = lax.dot_general(w, flat, (((1,), (1,)), ((), ())), precision=precision)  # (n, padded rows)
    return lax.optimization_barrier(swapped).T[:rows].reshape(*x.shape[:-1], w.shape[0])


def dense_product(x: jax.Array, kernel: jax.Array, precision: Optional[lax.Precision] = None) -> jax.Array:
    """x (..., i) times a (i, o) kernel, as `einsum("...i,io->...o")`. Its input gradient
    dy kernelᵀ contracts the kernel on its last axis, so with few rows it is computed weight
    first (a custom VJP; the kernel's gradient is autodiff's einsum)."""
    if not weight_first(math.prod(x.shape[:-1])):
        return _plain_dense(x, kernel, precision)
    return _few_row_dense(x, kernel, precision)


def _plain_dense(x, kernel, precision):
    return jnp.einsum("...i,io->...o", x, kernel, precision=precision)


_few_row_dense = jax.custom_vjp(_plain_dense, nondiff_argnums=(2,))


def _few_row_dense_fwd(x, kernel, precision):
    return _plain_dense(x, kernel, precision), (x, kernel)


def _few_row_dense_bwd(precision, residuals, dy):
    x, kernel = residuals
    dx = swapped_product(dy, kernel, precision)
    dkernel = jnp.einsum("...i,...o->io", x, dy, precision=precision)
    return dx, dkernel


_few_row_dense.defvjp(_few_row_dense_fwd, _few_row_dense_bwd)
