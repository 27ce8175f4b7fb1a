"""benchmarks/hlo_profile.py: a trace's ops mapped back to their HLO instructions and kinds."""
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import hlo_profile  # noqa: E402


def test_classify_by_what_a_fusion_holds():
    assert hlo_profile.classify({"dot", "add", "reduce"}) == "matmul"
    assert hlo_profile.classify({"exponential", "reduce"}) == "reduction"
    assert hlo_profile.classify({"transpose", "parameter"}) == "copy/transpose"
    assert hlo_profile.classify({"parameter", "broadcast"}) == "copy/transpose"
    assert hlo_profile.classify({"exponential", "add"}) == "elementwise"


def test_profile_finds_the_matmul_and_the_softmax():
    def f(a, b):
        return jax.nn.log_softmax(a @ b, -1).sum()

    a, b = jnp.ones((64, 128)), jnp.ones((128, 256))
    compiled = jax.jit(f).lower(a, b).compile()
    ops = hlo_profile.hlo_ops(compiled.as_text())
    assert any(op.kind == "matmul" and "dot_general" in op.source for op in ops.values())
    kinds, slowest = hlo_profile.profile(lambda: compiled(a, b), compiled.as_text(), repeats=2)
    assert kinds.get("matmul", 0) > 0 and kinds.get("reduction", 0) > 0
    assert all(name in ops for _, name, _ in slowest)


def test_matmuls_carry_their_flops_and_operand_layout():
    def f(x, w, v, y):
        # x @ w: NN; x @ v.T: NT (a backward pass's dy Wᵀ); x.T @ y: TN (a weight gradient).
        return x @ w, x @ v.T, x.T @ y

    x, w, v, y = jnp.ones((8, 64)), jnp.ones((64, 96)), jnp.ones((40, 64)), jnp.ones((8, 24))
    compiled = jax.jit(f).lower(x, w, v, y).compile()
    matmuls = [op for op in hlo_profile.hlo_ops(compiled.as_text()).values() if op.kind == "matmul" and op.flops]
    by_shape = {tuple(hlo_profile.dims(op.shape)): op for op in matmuls}  # a fusion and its dot agree
    nn, nt, tn = by_shape[8, 96], by_shape[8, 40], by_shape[64, 24]
    assert (nn.form, nn.flops) == ("NN", 2 * 8 * 64 * 96)
    assert (nt.form, nt.flops) == ("NT", 2 * 8 * 64 * 40)
    assert (tn.form, tn.flops) == ("TN", 2 * 64 * 8 * 24)
