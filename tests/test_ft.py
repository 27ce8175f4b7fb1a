"""FT and FT+KL: RMSprop steps on the inner matrices that stop once the edit succeeds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mend_jax import config_lib, losses
from mend_jax.editors.ft import FT
from mend_jax.models import get_path
from tests import tiny


def ft_cfg(**overrides):
    cfg = config_lib.ft_defaults()
    cfg.update(overrides)
    return cfg


def run_edit(editor, params, batch):
    edited, _, info = jax.jit(editor.edit, static_argnames="train")({}, {}, params, batch, train=False)
    return edited, int(info["edit/n_steps"])


def succeeded(target, params, batch):
    return bool(losses.token_stats(target.logits(params, batch), batch["labels"], True).correct.all())


def test_stops_at_the_first_step_where_the_edit_succeeds(model):
    module, params, target = model
    batch = tiny.lm_batch(61, batch=1, seed=5)
    assert not succeeded(target, params, batch)
    edited, n = run_edit(FT(target, params, ft_cfg(max_edit_steps=100), edit_lr=1e-2, grad_clip=100.0), params, batch)
    assert 1 < n < 100 and succeeded(target, edited, batch)
    # One step fewer is not enough: it stopped at the first success, not later.
    fewer, m = run_edit(FT(target, params, ft_cfg(max_edit_steps=n - 1), edit_lr=1e-2, grad_clip=100.0), params, batch)
    assert m == n - 1 and not succeeded(target, fewer, batch)


def test_an_edit_that_already_holds_takes_no_step(model):
    module, params, target = model
    batch = tiny.lm_batch(61, batch=1, seed=5)
    logits = target.logits(params, batch)
    batch["labels"] = jnp.where(batch["labels"] != -100, jnp.roll(jnp.argmax(logits, -1), 1, axis=1), -100)
    editor = FT(target, params, ft_cfg(), edit_lr=1e-2, grad_clip=100.0)
    edited, n = run_edit(editor, params, batch)
    assert n == 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, edited, params)
    # Under vmap each edit stops on its own.
    other = tiny.lm_batch(61, batch=1, seed=5)
    both = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), batch, other)
    _, _, info = jax.jit(jax.vmap(lambda b: editor.edit({}, {}, params, b, False)))(both)
    assert int(info["edit/n_steps"][0]) == 0 and int(info["edit/n_steps"][1]) > 1


def test_first_step_is_pytorch_rmsprop(model):
    module, params, target = model
    batch = tiny.lm_batch(61, batch=1, seed=5)
    edited, n = run_edit(FT(target, params, ft_cfg(max_edit_steps=1), edit_lr=1e-3, grad_clip=1e9), params, batch)
    grads = jax.jit(jax.grad(lambda p: target.nll(target.logits(p, batch), batch)))(params)
    assert n == 1
    for path in target.inner_paths:
        g = np.asarray(get_path(grads, path), np.float64)
        expected = -1e-3 * g / (np.sqrt(0.01 * g * g) + 1e-8)  # torch: v = 0.99·0 + 0.01 g²; p -= lr g / (√v + eps)
        np.testing.assert_allclose(get_path(edited, path) - get_path(params, path), expected, rtol=1e-3, atol=1e-7)


def test_ft_kl_keeps_the_heldout_batch_closer(model):
    module, params, target = model
    batch = tiny.lm_batch(61, batch=1, seed=5)
    loc = tiny.lm_batch(61, batch=2, seed=9, n_label=7)
    data = type("Data", (), {"train_batch": lambda self, step: {"loc": loc}})()

    def kl_after(cfg):
        editor = FT(target, params, cfg, edit_lr=1e-2, grad_clip=100.0)
        editor.bind_data(data)
        edited, _ = run_edit(editor, params, batch)
        return float(losses.kl_loc(target.logits(params, loc), target.logits(edited, loc), loc["attention_mask"]))

    plain = kl_after(ft_cfg(max_edit_steps=8))
    with_kl = kl_after(ft_cfg(max_edit_steps=8, locality=True, locality_cedit=1e-3))
    assert with_kl < 0.5 * plain
    with pytest.raises(ValueError, match="held-out"):
        FT(target, params, ft_cfg(locality=True), edit_lr=1e-2, grad_clip=100.0).edit({}, {}, params, batch, False)
