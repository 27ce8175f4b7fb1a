"""mend_jax/forwarding.py: an edit's unchanged leaves are its inputs' arrays, not XLA copies."""
import chex
import jax
import jax.numpy as jnp
import numpy as np

from mend_jax.forwarding import jit_forwarding_inputs


def edit_like(params, scale):
    """Changes one leaf and passes the others through, as an editor's edit does."""
    return {**params, "inner": params["inner"] * scale}, scale + 1


def test_passed_through_leaves_are_the_input_arrays_and_the_rest_match_jit():
    params = {"inner": jnp.arange(6.0).reshape(2, 3), "head": jnp.ones((4, 5)), "bias": jnp.zeros(5)}
    scale = jnp.float32(2.0)
    fast = jit_forwarding_inputs(edit_like)
    (edited, bumped), (expected, expected_bumped) = fast(params, scale), jax.jit(edit_like)(params, scale)
    assert edited["head"] is params["head"] and edited["bias"] is params["bias"]
    assert edited["inner"] is not params["inner"]
    chex.assert_trees_all_equal((edited, bumped), (expected, expected_bumped))
    # jax.jit itself copies a passed-through leaf into a buffer of its own.
    assert expected["head"].unsafe_buffer_pointer() != params["head"].unsafe_buffer_pointer()


def test_a_new_shape_is_planned_again():
    fast = jit_forwarding_inputs(edit_like)
    for rows in (2, 3):
        params = {"inner": jnp.ones((rows, 3)), "head": jnp.full((rows,), 7.0)}
        edited, _ = fast(params, jnp.float32(3.0))
        assert edited["head"] is params["head"]
        np.testing.assert_array_equal(edited["inner"], np.full((rows, 3), 3.0))


def test_an_output_that_is_not_an_input_is_computed_even_when_equal_to_one():
    fast = jit_forwarding_inputs(lambda x: (x + 0.0, x))
    x = jnp.ones(3)
    computed, forwarded = fast(x)
    assert forwarded is x and computed is not x
    np.testing.assert_array_equal(computed, x)


def test_the_function_is_traced_once_for_all_its_computed_outputs():
    traces = []

    def three_outputs(x):
        traces.append(1)
        y = jnp.sin(x)
        return y, 2 * y, 3 * y, x

    x = jnp.ones(3)
    expected = jax.jit(three_outputs)(x)
    traces.clear()
    fast = jit_forwarding_inputs(three_outputs)
    outputs = fast(x)
    # One trace finds what is passed through and is compiled as it is, whatever the number of outputs.
    assert len(traces) == 1
    chex.assert_trees_all_close(outputs, expected)
    fast(jnp.zeros(3))
    assert len(traces) == 1  # the same shapes: the same plan
