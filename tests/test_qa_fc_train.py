"""Short qa (T5, BART) and fc (BERT) training runs on tiny random models, and the task configs."""

import jax
import numpy as np
import pytest

from mend_jax import experiments, models
from mend_jax.trainer import Trainer
from tests import kilt_fixtures as kf
from tests.tiny import repo_config

RESULT_KEYS = ("edit/acc_val", "acc/pre_val", "acc/post_val", "drawdown_val", "loss/edit_val", "loss/loc_val",
               "loss/total_edit_val", "time/edit_val")


def run(config, workdir):
    exp = experiments.build(config)
    results = Trainer(config, exp, str(workdir)).run()
    for key in RESULT_KEYS:
        assert np.isfinite(results["results"][key]), key
    r = results["results"]
    assert r["drawdown_val"] == pytest.approx(r["acc/pre_val"] - r["acc/post_val"])
    # Every step ran; the kept editor is the best validation's, which may be an earlier one.
    assert results["steps_trained"] == config.max_iters and results["step"] <= config.max_iters
    return exp, results


@pytest.fixture(scope="module")
def t5_config(tmp_path_factory):
    return kf.write_qa_experiment(tmp_path_factory.mktemp("qa_t5"))


@pytest.mark.slow
def test_qa_t5_trains_with_nq_locality_for_validation(t5_config, tmp_path):
    exp, results = run(t5_config, tmp_path)
    assert exp.target.shift_labels is False
    assert exp.train_data.nq is None and exp.val_data.nq is not None  # the reference's zsre_nq
    assert exp.val_data.train_batch(0)["loc"]["labels"].shape == (4, 4)
    assert results["results"]["n_edits_evaluated_val"] == 6  # the final evaluation covers the dev split


def one_step(config, workdir):
    """Builds the experiment and takes one meta-training step (cheaper to compile than a whole run)."""
    exp = experiments.build(config)
    trainer = Trainer(config, exp, str(workdir))
    state, sums = trainer._grad_step(trainer.init_state(), exp.base_params, exp.train_data.train_batch(0))
    assert np.isfinite(float(sums["loss/total"])) and np.isfinite(float(sums["grad_norm"]))
    return exp, sums


def test_qa_multi_edit_experiment(t5_config):
    c = t5_config.copy_and_resolve_references()
    c.data.n_edits, c.batch_size, c.val_batch_size = 3, 4, 7
    exp = experiments.build(c)
    batch = exp.train_data.train_batch(0)
    assert batch["edit_inner"]["input_ids"].shape == (3, 12) and batch["loc"]["input_ids"].shape == (1, 12)
    assert exp.val_data.eval_batch(0)["loc"]["labels"].shape == (4, 4)
    assert exp.val_data.n_eval_batches == 2  # 6 dev rows, 3 edits per evaluation
    c.val_batch_size = 3
    with pytest.raises(ValueError, match="must exceed data.n_edits"):
        experiments.build(c)


def test_qa_bart_uses_the_shifted_eos_layout(tmp_path):
    c = kf.write_qa_experiment(tmp_path / "exp", style="bart", layers=1, blocks=1)
    assert c.data.zsre_nq is False  # bart-base: zsRE locality, as the reference's README says
    exp, _ = one_step(c, tmp_path / "run")
    assert exp.target.shift_labels is True
    inner = exp.train_data.train_batch(0)["edit_inner"]
    assert inner["decoder_input_ids"][0, 0] == 2  # EOS, not BOS
    np.testing.assert_array_equal(inner["labels"][0, :1], inner["decoder_input_ids"][0, :1])


@pytest.mark.slow
def test_fc_trains_a_one_logit_classifier(tmp_path):
    c = kf.write_fc_experiment(tmp_path / "exp")
    exp, results = run(c, tmp_path / "run")
    batch = jax.tree_util.tree_map(np.asarray, exp.val_data.eval_batch(0))
    assert exp.target.logits(exp.base_params, batch["loc"]).shape == (4, 1)
    assert batch["loc"]["labels"].shape == (4,)
    assert 0.0 <= results["results"]["edit/acc_val"] <= 1.0


def test_fc_one_step_edits_a_one_logit_classifier(tmp_path):
    c = kf.write_fc_experiment(tmp_path / "exp", layers=1, blocks=1)
    exp, sums = one_step(c, tmp_path / "run")
    batch = exp.train_data.train_batch(0)
    assert exp.target.logits(exp.base_params, batch["edit_outer"]).shape == (1, 1)
    assert batch["edit_outer"]["labels"].shape == (1,) and float(sums["loss/loc"]) >= 0.0


def test_fc_refuses_a_model_without_a_one_logit_head(tmp_path):
    c = kf.write_fc_experiment(tmp_path / "exp")
    cfg = kf.tiny_bert_config(40)
    cfg.num_labels = 3
    kf.save_model(cfg, kf.bert_tokenizer(["claim"]), str(tmp_path / "three"))
    c.model.name = str(tmp_path / "three")
    with pytest.raises(ValueError, match="BERT classifier with one logit.*num_labels=3.*convert_lightning"):
        experiments.build(c)


def test_qa_refuses_a_decoder_only_model(t5_config, tmp_path):
    from tests import tiny

    module, params = tiny.tiny_gpt2()
    models.save_pretrained(module, params, str(tmp_path / "gpt2"))
    c = t5_config.copy_and_resolve_references()
    c.model.name = str(tmp_path / "gpt2")
    c.model.tokenizer = t5_config.model.name
    with pytest.raises(ValueError, match="qa task edits seq2seq models"):
        experiments.build(c)


def test_missing_data_dir_names_the_default(t5_config, tmp_path):
    c = t5_config.copy_and_resolve_references()
    c.data.path = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="configs/qa.py"):
        experiments.build(c)


@pytest.mark.parametrize("task,arg,n", [("qa", "t5-small", 8), ("qa", "t5-xl", 8), ("qa", "bart-base", 8),
                                        ("qa", None, 8), ("fc", "bert-base", 6), ("fc", None, 6)])
def test_configs_name_the_reference_inner_params(task, arg, n):
    c = repo_config(task).get_config(arg)
    assert c.task == task and len(c.model.inner_params) == n
    names = " ".join(c.model.inner_params)
    if task == "qa" and arg and arg.startswith("t5"):
        layers = 8 if arg == "t5-small" else 24
        assert f"encoder.block.{layers - 1}.layer.1.DenseReluDense.wi_0.weight" in names
        assert f"decoder.block.{layers - 2}.layer.2.DenseReluDense.wo.weight" in names
    if arg == "bart-base":
        assert "model.decoder.layers.4.fc1.weight" in names and "model.encoder.layers.5.fc2.weight" in names
    if arg == "bert-base":
        assert "bert.encoder.layer.9.intermediate.dense.weight" in names
        assert "bert.encoder.layer.11.output.dense.weight" in names
    with pytest.raises(ValueError, match="unknown argument"):
        repo_config(task).get_config("gpt3")


def test_world_defaults_name_params_of_the_world_models():
    from mend_jax.world import pretrain_classifier, pretrain_seq2seq

    for task, cfg in (("qa", kf.tiny_t5_config(50, layers=pretrain_seq2seq.T5Spec().num_layers)),
                      ("fc", kf.tiny_bert_config(50, layers=pretrain_classifier.BertSpec().num_layers))):
        c = repo_config(task).get_config()
        module = models.build_module(cfg)
        params = jax.eval_shape(lambda: models.init_params(module, jax.random.PRNGKey(0)))
        assert len(models.inner_param_paths(module, params, c.model.inner_params)) == len(c.model.inner_params)
        assert c.data.source == "world"
