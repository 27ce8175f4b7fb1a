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


class LocalityStream:
    """Training data whose every batch has a different, recognisable locality row."""

    def __init__(self, n_loc=1):
        self.n_loc = n_loc

    def train_batch(self, step):
        loc = tiny.lm_batch(61, batch=self.n_loc, seed=100 + step, n_label=7)
        return {"loc": jax.tree_util.tree_map(np.asarray, loc)}


def inner_step_locality(editor, params, batch, monkeypatch):
    """The locality input_ids each inner FT step scores, in order (jit off so they are concrete)."""
    seen = []
    pick = FT._locality_batch.__get__(editor)

    def spy(edit_batch, step):
        loc = pick(edit_batch, step)
        seen.append(np.asarray(loc["input_ids"]).tobytes())
        return loc

    monkeypatch.setattr(editor, "_locality_batch", spy)
    with jax.disable_jit():
        editor.edit({}, {}, params, batch, False)
    return seen


def test_ft_kl_draws_a_fresh_locality_batch_at_each_inner_step(model, monkeypatch):
    """The reference's ft.locality.oracle: a new training-split locality batch per inner step."""
    module, params, target = model
    batch = tiny.lm_batch(61, batch=1, seed=5)
    cfg = ft_cfg(max_edit_steps=3, locality=True, locality_pool_size=64)
    editor = FT(target, params, cfg, edit_lr=1e-4, grad_clip=100.0)  # small steps: all 3 are taken
    editor.bind_data(LocalityStream())
    seen = inner_step_locality(editor, params, batch, monkeypatch)
    assert len(seen) == 3 and len(set(seen)) == 3
    # Every draw is a training batch's locality row; the draws are a pure function of the edit.
    pool = {np.asarray(LocalityStream().train_batch(s)["loc"]["input_ids"]).tobytes() for s in range(64)}
    assert set(seen) <= pool
    assert inner_step_locality(editor, params, batch, monkeypatch) == seen
    # locality_oracle=False: one fixed batch (the start of the training stream) for every step.
    fixed = FT(target, params, ft_cfg(max_edit_steps=3, locality=True, locality_oracle=False), edit_lr=1e-4,
               grad_clip=100.0)
    fixed.bind_data(LocalityStream())
    assert set(inner_step_locality(fixed, params, batch, monkeypatch)) == {
        np.asarray(LocalityStream().train_batch(0)["loc"]["input_ids"]).tobytes()
    }


def test_locality_batches_of_more_rows_join_consecutive_training_batches():
    from mend_jax.editors.ft import locality_pool

    pool = locality_pool(LocalityStream(n_loc=2), n_batches=3, size=3)
    assert pool["input_ids"].shape == (3, 3, 8)
    rows = lambda s: np.asarray(LocalityStream(n_loc=2).train_batch(s)["loc"]["input_ids"])
    np.testing.assert_array_equal(pool["input_ids"][0], np.concatenate([rows(0), rows(1)])[:3])
    np.testing.assert_array_equal(pool["input_ids"][1], np.concatenate([rows(2), rows(3)])[:3])


class BucketedLocalityStream(LocalityStream):
    """Even steps' locality rows are 8 tokens wide, odd steps' 16 (length buckets)."""

    def train_batch(self, step):
        loc = tiny.lm_batch(61, batch=self.n_loc, length=8 if step % 2 == 0 else 16, seed=100 + step, n_label=7)
        return {"loc": jax.tree_util.tree_map(np.asarray, loc)}


def test_locality_batches_of_different_widths_are_padded_to_the_longest():
    """The real-fact config pads each batch to its length bucket: FT+KL's pool pads to the widest,
    with padding masked (attention 0, labels ignored)."""
    from mend_jax.editors.ft import locality_pool

    pool = locality_pool(BucketedLocalityStream(n_loc=1), n_batches=2, size=1)
    assert pool["input_ids"].shape == (2, 1, 16)
    narrow = BucketedLocalityStream().train_batch(0)["loc"]
    np.testing.assert_array_equal(pool["input_ids"][0, :, :8], narrow["input_ids"])
    assert not pool["attention_mask"][0, :, 8:].any() and (pool["labels"][0, :, 8:] == -100).all()
    np.testing.assert_array_equal(pool["input_ids"][1], BucketedLocalityStream().train_batch(1)["loc"]["input_ids"])
