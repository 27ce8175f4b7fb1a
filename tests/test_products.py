"""mend_jax/models/products.py: few-row products computed weight first give autodiff's numbers."""
import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mend_jax.models import products

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import gemm_layouts  # noqa: E402


def random(shape, seed, dtype=jnp.float32):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, dtype)


def plain_dense(x, kernel):
    return jnp.einsum("...i,io->...o", x, kernel)


def input_gradient_hlo(x, kernel):
    """The compiled text of dense_product's input gradient, where the weight-first product is."""
    return jax.jit(jax.grad(lambda x: products.dense_product(x, kernel).sum())).lower(x).as_text()


@pytest.mark.parametrize("leading", [(1,), (5,), (2, 4), (30,), (32,), (33,), (2, 100)])
def test_swapped_product_is_the_einsum_and_the_backward_uses_it_exactly_up_to_32_rows(leading):
    x, w = random((*leading, 24), 0), random((40, 24), 1)
    got = jax.jit(products.swapped_product)(x, w)
    np.testing.assert_allclose(got, jnp.einsum("...k,nk->...n", x, w), rtol=1e-6, atol=1e-6)
    hlo = input_gradient_hlo(random((*leading, 40), 2), random((40, 24), 1))
    assert ("optimization_barrier" in hlo) == (int(np.prod(leading)) <= products.WEIGHT_FIRST_MAX_ROWS)


@pytest.mark.parametrize("rows", [8, 30])
def test_the_benchmarks_transposed_weight_first_form_is_the_forward_product(rows):
    """gemm_layouts.py --swap times x W against (Wᵀ xᵀ)ᵀ: the two must be the same product."""
    x, w = random((rows, 24), 0), random((24, 40), 1)
    got = jax.jit(gemm_layouts.transposed_weight_first)(x, w)
    np.testing.assert_allclose(got, x @ w, rtol=1e-6, atol=1e-6)
    assert "optimization_barrier" in jax.jit(gemm_layouts.transposed_weight_first).lower(x, w).as_text()


def test_the_benchmarks_libraries_compute_the_same_products():
    """gemm_layouts.py --libraries times XLA, numpy and torch on one set of weights: the same
    NN and NT products, each from the input converted to its own array type."""
    forms, count = gemm_layouts.library_products_of(24, 40, cold=False)
    assert count == 1 and set(forms) == {"XLA", "numpy", "torch"}
    x = np.random.default_rng(0).standard_normal((8, 24), dtype=np.float32)
    for layout in (1, 2):
        results = {name: np.asarray(f[layout](f[0](x))[0]) for name, f in forms.items()}
        assert results["XLA"].shape == (8, 40)
        for name in ("numpy", "torch"):
            np.testing.assert_allclose(results[name], results["XLA"], rtol=1e-5, atol=1e-5)
    nn, nt = (np.asarray(forms["numpy"][layout](x)[0]) for layout in (1, 2))
    assert not np.allclose(nn, nt)  # the two layouts multiply different weights


def test_weight_first_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(products, "WEIGHT_FIRST_MAX_ROWS", 0)
    assert "optimization_barrier" not in input_gradient_hlo(random((8, 40), 0), random((40, 24), 1))


def loss_through(dense):
    """A scalar of x and the kernel whose gradient passes the product's VJP."""
    return lambda x, kernel: jnp.sum(jnp.sin(dense(x, kernel)) * jnp.arange(kernel.shape[1]))


@pytest.mark.parametrize("leading", [(8,), (3, 10), (64,)])
def test_dense_product_values_and_gradients_match_autodiff_of_the_einsum(leading):
    x, kernel = random((*leading, 24), 2), random((24, 40), 3)
    np.testing.assert_allclose(products.dense_product(x, kernel), plain_dense(x, kernel), rtol=1e-6, atol=1e-6)
    ours = jax.grad(loss_through(products.dense_product), (0, 1))(x, kernel)
    reference = jax.grad(loss_through(plain_dense), (0, 1))(x, kernel)
    chex.assert_trees_all_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_second_order_gradients_match_as_meta_training_takes_them():
    """MEND's outer gradient differentiates through the inner backward pass, and so through the
    custom VJP's weight-first product."""
    x, kernel = random((6, 24), 4), random((24, 40), 5)

    def meta(dense):
        inner = jax.grad(loss_through(dense), 0)
        return lambda x, kernel: jnp.sum(inner(x, kernel) ** 2)

    ours = jax.grad(meta(products.dense_product), (0, 1))(x, kernel)
    reference = jax.grad(meta(plain_dense), (0, 1))(x, kernel)
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def test_under_vmap_and_in_bfloat16():
    x, kernel = random((3, 8, 24), 6), random((24, 40), 7)
    grad = lambda dense: jax.vmap(jax.grad(loss_through(dense)), (0, None))(x, kernel)
    np.testing.assert_allclose(grad(products.dense_product), grad(plain_dense), rtol=1e-5, atol=1e-5)
    xb, kb = x[0].astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    dx, dk = jax.grad(lambda x, k: jnp.sum(products.dense_product(x, k).astype(jnp.float32)), (0, 1))(xb, kb)
    assert dx.dtype == dk.dtype == jnp.bfloat16
    np.testing.assert_allclose(dx.astype(jnp.float32), jnp.broadcast_to(kb.astype(jnp.float32).sum(1), dx.shape),
                               rtol=3e-2, atol=0.1)
