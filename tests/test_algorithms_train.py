"""Every algorithm through the one trainer: defaults, a short run, evaluation, resume."""
import os

import chex
import jax
import numpy as np
import pytest

from mend_jax import config_lib, experiments
from mend_jax.editors import ENN, FT, TrainableBase
from mend_jax.trainer import Trainer
from tests import tiny



def config_for(gen_config, alg, **overrides):
    c = gen_config.copy_and_resolve_references()
    c.alg = alg
    c.efk.update(cond_dim=16, lstm_hidden=8, hidden=16)  # the reference's sizes are for 768-wide models
    c.ft.max_edit_steps = 5
    c.max_iters = 4
    c.val_interval = 2
    for key, value in overrides.items():
        c[key] = value
    return c


def test_algorithm_defaults_come_with_alg_and_explicit_values_win():
    c = config_lib.base_config()
    c.alg = "enn"
    config_lib.apply_alg_defaults(c)
    assert (c.lr, c.edit_lr, c.train_base) == (1e-5, 1e-2, True)
    c = config_lib.base_config()
    c.alg, c.lr, c.train_base = "enn", 3e-4, False
    config_lib.apply_alg_defaults(c)
    assert (c.lr, c.edit_lr, c.train_base) == (3e-4, 1e-2, False)
    c = config_lib.base_config()
    config_lib.world_gen(c)
    c.alg = "efk"
    assert config_lib.apply_alg_defaults(c).lr == config_lib.WORLD_ALG_DEFAULTS["efk"]["lr"]
    c.alg = "rome"
    with pytest.raises(ValueError, match="not implemented"):
        config_lib.apply_alg_defaults(c)


def changed(a, b) -> bool:
    return not jax.tree_util.tree_all(jax.tree_util.tree_map(lambda x, y: bool(np.all(x == y)), a, b))


@pytest.mark.parametrize("alg", ["mend", "efk", "enn"])
def test_meta_trained_algorithms_train_then_evaluate(gen_config, tmp_path, alg):
    # Two updates (after batches 0-2 and 3-4): V and MEND's mode scales get gradient only once U has moved.
    config = config_for(gen_config, alg, max_iters=6)
    experiment = experiments.build(config)
    trainer = Trainer(config, experiment, str(tmp_path))
    results = trainer.run()
    r = results["results"]
    for key in ("edit/acc_val", "perplexity/pre_val", "perplexity/post_val", "loss/total_edit_val", "time/edit_val"):
        assert np.isfinite(r[key]), key
    assert results["step"] <= config.max_iters and os.path.exists(results["results_path"])
    state = tiny.latest_state(trainer, str(tmp_path))
    assert int(state.step) == config.max_iters
    for part in TRAINED_PARTS[alg]:
        assert not moved_nowhere(state.params, trainer.init_state().params, part), f"training left {part} unchanged"
    if alg == "enn":  # trains the base by default, with c_base's KL
        assert isinstance(experiment.editor, TrainableBase) and "loss/base_val" in r


# The parameters each algorithm's training must move, as paths of leaves; "*" is every child.
# MEND's network (not only the per-matrix α's: an editor whose relu has derivative 0 at the
# identity init trains those alone), EFK's conditioner and heads, ENN's rates and its base.
TRAINED_PARTS = {
    "mend": [("nets", "*", "mlp", "*", leaf) for leaf in ("u", "v", "bias", "mode_shift", "mode_scale")]
    + [("edit_lrs",)],
    "efk": [("conditioner", "forward", "w_ih"), ("conditioner", "out", "kernel"), ("matrices", "*", "out", "v")],
    "enn": [("editor", "edit_lrs"), ("base", "transformer", "h", "*", "mlp", "c_fc", "kernel")],
}


def moved_nowhere(after, before, pattern) -> bool:
    """True if some leaf matching `pattern` is exactly its initial value."""
    head, rest = pattern[0], pattern[1:]
    keys = list(before) if head == "*" else [head]
    for key in keys:
        a, b = after[key], before[key]
        if rest:
            if moved_nowhere(a, b, rest):
                return True
        elif bool(np.all(np.asarray(a) == np.asarray(b))):
            return True
    return False


@pytest.mark.parametrize("locality", [False, True], ids=["ft", "ft+kl"])
def test_fine_tuning_evaluates_without_training(gen_config, tmp_path, locality):
    config = config_for(gen_config, "ft")
    config.ft.locality = locality
    experiment = experiments.build(config)
    assert isinstance(experiment.editor, FT)
    trainer = Trainer(config, experiment, str(tmp_path))
    trainer._grad_step = None  # nothing may train
    results = trainer.run()
    r = results["results"]
    assert results["step"] == 0 and np.isfinite(r["edit/acc_val"]) and np.isfinite(r["perplexity/post_val"])
    assert 0 < r["edit/n_steps_val"] <= config.ft.max_edit_steps
    assert (experiment.editor.heldout_loc is not None) == locality
    assert os.path.exists(results["results_path"])


def test_train_base_with_ft_raises(gen_config):
    config = config_for(gen_config, "ft", train_base=True)
    with pytest.raises(ValueError, match="nothing to meta-train"):
        experiments.build(config)


class Killed(Exception):
    pass


@pytest.mark.slow
def test_enn_with_train_base_resumes_to_the_same_state(gen_config, tmp_path):
    config = config_for(gen_config, "enn", max_iters=6, val_interval=3, no_grad_layers=1)
    experiment = experiments.build(config)
    assert isinstance(experiment.editor, TrainableBase) and isinstance(experiment.editor.editor, ENN)
    full_dir, killed_dir = str(tmp_path / "full"), str(tmp_path / "killed")
    full = Trainer(config, experiment, full_dir)
    full.run()

    killed = Trainer(config, experiment, killed_dir)
    grad_step, calls = killed._grad_step, {"n": 0}

    def dying_grad_step(state, base, batch):  # dies inside step 5, after the checkpoint of step 4
        calls["n"] += 1
        if calls["n"] == 6:
            raise Killed()
        return grad_step(state, base, batch)

    killed._grad_step = dying_grad_step
    with pytest.raises(Killed):
        killed.run()
    resumed = Trainer(config, experiment, killed_dir)
    resumed.run()
    a, b = tiny.latest_state(full, full_dir), tiny.latest_state(resumed, killed_dir)
    assert int(a.step) == int(b.step) == config.max_iters
    assert sorted(a.params["base"]["transformer"]["h"]) == ["1", "2"]  # no_grad_layers=1 froze block 0
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(a.opt_state, b.opt_state, rtol=1e-6, atol=1e-7)
    assert changed(a.params["base"], full.init_state().params["base"])


def world_gen_config(alg):
    c = tiny.repo_config("gen").get_config("world")
    c.alg = alg
    return c


@pytest.mark.slow
@pytest.mark.parametrize("alg", ["mend", "efk", "enn", "ft"])
def test_every_algorithm_runs_on_the_embedded_world(default_world, tmp_path, alg):
    config = world_gen_config(alg)  # the real configuration: reference network sizes, world defaults
    config.update(max_iters=2, val_interval=2, val_steps=4, final_eval_steps=4, checkpoint_interval=2)
    config.ft.max_edit_steps = 3
    trainer = Trainer(config, experiments.build(config), str(tmp_path))
    results = trainer.run()
    assert (results["step"] == 0) == (alg == "ft")  # the kept editor's step; FT trains nothing
    if alg != "ft":
        assert int(tiny.latest_state(trainer, str(tmp_path)).step) == 2
    assert np.isfinite(results["results"]["edit/acc_val"]) and np.isfinite(results["results"]["drawdown_val"])
