"""benchmarks/edit_scale.py: a finished run's kept editor, its α's scaled, scored on the validation split."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import edit_scale  # noqa: E402

from mend_jax import experiments  # noqa: E402
from mend_jax.trainer import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def finished_run(gen_config, tmp_path_factory):
    config = gen_config.copy_and_resolve_references()
    config.async_checkpointing = False
    workdir = str(tmp_path_factory.mktemp("edit_scale_run"))
    return workdir, Trainer(config, experiments.build(config), workdir).run()


def test_scale_one_reproduces_the_runs_final_evaluation(finished_run):
    workdir, results = finished_run
    rows, _, state = edit_scale.frontier(workdir, ["1"])
    r = results["results"]
    assert int(state.best_step) == results["kept_step"]
    np.testing.assert_allclose(rows[0]["edit_success"], r["edit/acc_val"], rtol=1e-6)
    np.testing.assert_allclose(rows[0]["drawdown"], r["drawdown_val"], rtol=1e-5, atol=1e-7)
    assert rows[0]["n_edits"] == r["n_edits_evaluated_val"]


def test_scale_zero_leaves_the_model_unedited(finished_run):
    workdir, results = finished_run
    zero, one = edit_scale.frontier(workdir, ["0", "1"])[0]
    # α = 0: no edit, so the locality text scores exactly as before it.
    assert zero["metrics"]["loss/loc"] == pytest.approx(0.0, abs=1e-7)
    assert zero["drawdown"] == pytest.approx(0.0, abs=1e-7)
    # α = 1: the kept editor's edits act, on the edit and (a little) on the locality text.
    assert one["metrics"]["loss/edit"] < zero["metrics"]["loss/edit"]
    assert one["metrics"]["loss/loc"] > 1e-7


def test_a_run_dir_without_a_saved_config_is_named(tmp_path):
    with pytest.raises(SystemExit, match=str(tmp_path)):
        edit_scale.frontier(str(tmp_path), ["1"])
