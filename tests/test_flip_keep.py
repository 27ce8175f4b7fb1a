"""benchmarks/flip_keep.py: fc edits split into flips and keeps, and MEND's edit against the raw gradient."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import flip_keep  # noqa: E402

from mend_jax import experiments, meta  # noqa: E402
from mend_jax.models import get_path  # noqa: E402
from mend_jax.trainer import Trainer  # noqa: E402
from tests import kilt_fixtures as kf  # noqa: E402

from mend_jax.data.fever import POSITIVE  # noqa: E402


@pytest.fixture(scope="module")
def fc(tmp_path_factory):
    root = tmp_path_factory.mktemp("flip_keep")
    config = kf.write_fc_experiment(root / "exp", layers=1, blocks=1)
    config.mend.norm = False  # with the identity network, MEND's edit is then the raw gradient itself
    exp = experiments.build(config)
    return exp, Trainer(config, exp, str(root / "run"))


def test_flip_prob_sets_every_edit_to_a_flip_or_a_keep(fc):
    exp, _ = fc
    data = exp.val_data
    for flip_prob, field in ((1.0, "alternative"), (0.0, "prediction")):
        data.flip_prob = flip_prob
        for i in range(data.n_eval_batches):
            label = int(np.asarray(data.eval_batch(i)["edit_inner"]["labels"]).ravel()[0])
            claim = data.claims[i]
            assert label == int(getattr(claim, field) == POSITIVE), (flip_prob, i)
    data.flip_prob = 0.5


def test_split_scores_restores_the_mix(fc):
    exp, trainer = fc
    rows = flip_keep.split_scores(trainer, exp.val_data, trainer.init_state(), [1.0], learned=True)
    assert [r[0] for r in rows] == ["flips", "keeps"] and exp.val_data.flip_prob == 0.5


def test_raw_gradient_is_jax_grad_and_the_identity_editor_returns_it(fc):
    exp, trainer = fc
    editor, state = exp.editor, trainer.init_state()
    batch = jax.tree_util.tree_map(jnp.asarray, exp.val_data.eval_batch(0))
    edit_batch = meta.edit_inputs(batch)
    target = editor.target

    def loss(params):
        return target.nll(target.logits(params, edit_batch), edit_batch)

    true = jax.grad(loss)(exp.base_params)
    pairs = flip_keep.edit_and_gradient(exp, editor, state, batch)
    for path, (raw, pseudo) in pairs.items():
        expected = get_path(true, path)
        assert float(jnp.abs(expected).max()) > 0
        np.testing.assert_allclose(raw, expected, atol=1e-6)
        np.testing.assert_allclose(pseudo, raw, atol=1e-6)
