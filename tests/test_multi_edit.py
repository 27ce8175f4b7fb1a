"""k edits at once (data.n_edits = k, batch_size = k + 1) for every editor."""
import jax
import numpy as np
import pytest

from mend_jax import experiments
from mend_jax.editors.base import needs_training
from mend_jax.editors.ft import FT
from mend_jax.trainer import Trainer
from tests import kilt_fixtures as kf
from tests import tiny
from tests.test_ft import ft_cfg, run_edit, succeeded


@pytest.fixture(scope="module")
def fc_config(tmp_path_factory):
    return kf.write_fc_experiment(tmp_path_factory.mktemp("fc_multi"), layers=1, blocks=1)


@pytest.mark.parametrize("alg", ["mend", "enn", "efk", "ft"])
def test_every_editor_edits_k_facts_per_batch(alg, fc_config, tmp_path):
    k = 3
    c = fc_config.copy_and_resolve_references()
    c.alg, c.data.n_edits, c.batch_size, c.val_batch_size = alg, k, k + 1, k + 4
    exp = experiments.build(c)
    batch = exp.train_data.train_batch(0)
    assert batch["edit_inner"]["labels"].shape == (k,) and batch["loc"]["labels"].shape == (1,)
    trainer = Trainer(c, exp, str(tmp_path))
    state = trainer.init_state()
    if needs_training(exp.editor):
        state, sums = trainer._grad_step(state, exp.base_params, batch)
        assert np.isfinite(float(sums["loss/total"]))
    metrics = trainer.evaluate(state)
    # 6 dev claims: two batches of 3 edits, each edit scored on its own.
    assert metrics["n_batches_evaluated"] == 2 and metrics["n_edits_evaluated"] == 2 * k
    assert metrics["edit/acc"] * 2 * k == pytest.approx(round(metrics["edit/acc"] * 2 * k), abs=1e-5)
    assert np.isfinite(metrics["acc/post"]) and np.isfinite(metrics["drawdown"])


def test_ft_steps_until_all_k_edits_hold():
    module, params = tiny.tiny_gpt2()
    target = tiny.gpt2_target(module, params)
    edits = tiny.lm_batch(61, batch=3, seed=5)
    make = lambda steps: FT(target, params, ft_cfg(max_edit_steps=steps), edit_lr=1e-2, grad_clip=100.0)
    assert not any(succeeded(target, params, jax.tree_util.tree_map(lambda x: x[i : i + 1], edits)) for i in range(3))
    edited, n = run_edit(make(100), params, edits)
    assert 1 < n < 100 and succeeded(target, edited, edits)
    fewer, _ = run_edit(make(n - 1), params, edits)
    assert not succeeded(target, fewer, edits)  # it stopped at the first step where all k hold
