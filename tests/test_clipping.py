"""mend_jax/clipping.py against torch.nn.utils.clip_grad_norm_, the reference's clipping."""
import numpy as np
import pytest

from mend_jax.clipping import clip_grad_norm_like_torch

torch = pytest.importorskip("torch")


def clipped_by_torch(grads, max_norm):
    tensors = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(g.copy())
    torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    return [t.grad.numpy() for t in tensors]


def clipped_here(grads, max_norm):
    clip = clip_grad_norm_like_torch(max_norm)
    out, _ = clip.update(list(grads), clip.init(grads))
    return [np.asarray(g) for g in out]


def test_a_norm_of_exactly_representable_values_is_clipped_exactly_as_torch_clips():
    grads = [np.array([3.0, 0.0], np.float32), np.array([[4.0]], np.float32)]  # norm 5
    for max_norm in (1.0, 2.5, 4.999):  # torch: g * ((1 / (5 + 1e-6)) * max_norm)
        for got, want in zip(clipped_here(grads, max_norm), clipped_by_torch(grads, max_norm)):
            np.testing.assert_array_equal(got, want)
    assert clipped_here(grads, 1.0)[1][0, 0] != np.float32(4.0 / 5.0)  # the 1e-6 moves the last bits


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_random_gradients_are_clipped_as_torch_clips_them_and_below_the_norm_left_alone(scale):
    rng = np.random.default_rng(0)
    grads = [scale * rng.standard_normal(s).astype(np.float32) for s in ((64, 48), (48,), (3, 5, 7))]
    norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    for max_norm in (0.5 * norm, 100.0):
        got, want = clipped_here(grads, max_norm), clipped_by_torch(grads, max_norm)
        for g, w in zip(got, want):  # the norms are summed in another order: float32 rounding apart
            np.testing.assert_allclose(g, w, rtol=2e-6, atol=0)
        if max_norm > norm:  # the reference multiplies by exactly 1
            for g, original in zip(got, grads):
                np.testing.assert_array_equal(g, original)
        else:
            total = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in got))
            assert total == pytest.approx(max_norm * norm / (norm + 1e-6), rel=1e-6)
