"""benchmarks/mesh_step_difference.py and rounding_drift.py: the yardsticks of the (2, 4)-mesh run."""
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import mesh_step_difference  # noqa: E402
import rounding_drift  # noqa: E402


def test_norm_relative_is_the_difference_over_the_first_trees_norm():
    a = {"w": np.array([3.0, 0.0]), "b": np.array([4.0])}
    b = {"w": np.array([3.0, 1.0]), "b": np.array([4.0])}
    assert mesh_step_difference.norm_relative(a, b) == pytest.approx(1 / 5)
    assert mesh_step_difference.norm_relative(a, a) == 0.0
    assert mesh_step_difference.norm_relative({}, {}) == 0.0


def test_shake_moves_each_leaf_by_exactly_the_relative_size():
    rng = np.random.default_rng(1)
    tree = {"u": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32), "v": jnp.asarray(rng.normal(size=7) * 1e-3, jnp.float32)}
    shaken = rounding_drift.shake(tree, jnp.int32(3), 1e-3)
    for k in tree:
        assert mesh_step_difference.norm_relative(tree[k], shaken[k]) == pytest.approx(1e-3, rel=1e-3), k
    again = rounding_drift.shake(tree, jnp.int32(3), 1e-3)
    other = rounding_drift.shake(tree, jnp.int32(4), 1e-3)
    np.testing.assert_array_equal(np.asarray(again["u"]), np.asarray(shaken["u"]))  # signs from the step
    assert not np.array_equal(np.asarray(other["u"]), np.asarray(shaken["u"]))
    signs = np.sign(np.asarray(shaken["u"] - tree["u"]))
    assert set(np.unique(signs)) == {-1.0, 1.0}  # both directions: it can flip an entry near 0
