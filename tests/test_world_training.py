"""The main job on the embedded world: a short MEND run clearly raises edit success, and its
editor network (not only the per-matrix α's) is what trained."""
import numpy as np
import pytest

from mend_jax import config_lib, experiments
from mend_jax.trainer import Trainer
from tests.tiny import latest_state, repo_config


def gen_world_config(**overrides):
    c = repo_config("gen").get_config()
    c.update(overrides)
    return c


@pytest.mark.slow
def test_short_mend_run_raises_edit_success(default_world, tmp_path):
    cfg = gen_world_config(max_iters=400, val_interval=400, val_steps=93, final_eval_steps=93)
    config_lib.apply_alg_defaults(cfg)
    trainer = Trainer(cfg, experiments.build(cfg), str(tmp_path))
    before = trainer.evaluate(trainer.init_state(), n_batches=93)
    after = trainer.run()["results"]
    assert before["edit/acc"] < 0.15, before  # the model knows the facts: counterfactuals fail before training
    assert after["edit/acc_val"] >= before["edit/acc"] + 0.25, (before["edit/acc"], after["edit/acc_val"])
    assert after["perplexity/post_val"] - after["perplexity/pre_val"] < 0.5
    # Every layer of every shared network moved: U and b (which get gradient from the first step
    # only through the activation's derivative at 0), V and the mode scales (once U is not 0).
    init, trained = trainer.init_state().params["nets"], latest_state(trainer, str(tmp_path)).params["nets"]
    for key in init:
        for layer in init[key]["mlp"]:
            for leaf in ("u", "v", "bias", "mode_shift", "mode_scale"):
                a, b = (np.asarray(t[key]["mlp"][layer][leaf]) for t in (init, trained))
                assert np.abs(a - b).max() > 0, (key, layer, leaf)
