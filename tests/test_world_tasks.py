"""The embedded world's qa/fc models: tokenizers and the pretraining builds, on tiny fixtures."""
import dataclasses
import json
import os

import numpy as np
import pytest
import transformers

from mend_jax import models
from mend_jax.world import pretrain_classifier, pretrain_seq2seq
from mend_jax.world.task_models import FitConfig, fit, word_tokenizer
from tests import kilt_fixtures as kf

QUICK = FitConfig(max_steps=2, eval_every=1, batch_size=4, warmup_steps=1, min_accuracy=0.0)


def test_word_tokenizer_makes_every_word_one_token_and_applies_the_template():
    tok = word_tokenizer(["What is the capital of Zapaith?", "Retratrork"], ["<pad>", "</s>", "<unk>"], "$A </s>",
                         pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    ids = tok("What is the capital of Zapaith?")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["ĠWhat", "Ġis", "Ġthe", "Ġcapital", "Ġof", "ĠZapaith", "?", "</s>"]
    assert tok("Retratrork")["input_ids"] == [tok.convert_tokens_to_ids("ĠRetratrork"), tok.eos_token_id]
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1
    assert len(tok("unseen words")["input_ids"]) > 3  # byte-level fallback, never an unknown token


def test_seq2seq_build_writes_a_loadable_t5_with_its_tokenizer(tmp_path):
    data = kf.write_qa_data(tmp_path / "data")
    spec = dataclasses.replace(pretrain_seq2seq.T5Spec(), d_model=16, d_kv=8, d_ff=16, num_layers=2, num_heads=2)
    info = pretrain_seq2seq.build(data, str(tmp_path / "model"), spec, QUICK, progress=False)
    assert info["steps"] == 2 and 0.0 <= info["accuracy"] <= 1.0 and info["n_questions"] == 18 * 3
    module, params = models.load_pretrained(str(tmp_path / "model"))
    assert module.config.is_gated_act and module.config.num_layers == 2
    assert len(models.inner_param_paths(module, params, pretrain_seq2seq.inner_params(spec))) == 8
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    assert tok("a0")["input_ids"][-1] == tok.eos_token_id == 1


def test_classifier_build_balances_and_writes_a_one_logit_bert(tmp_path):
    data = kf.write_fc_data(tmp_path / "data")
    spec = dataclasses.replace(pretrain_classifier.BertSpec(), hidden_size=16, num_layers=3, num_heads=2,
                               intermediate_size=16)
    claims, labels, _ = pretrain_classifier.world_claims(data)
    assert len(claims) == 18 * 3 and set(labels) == {0, 1}
    info = pretrain_classifier.build(data, str(tmp_path / "model"), spec, QUICK, progress=False)
    module, params = models.load_pretrained(str(tmp_path / "model"))
    assert module.config.num_labels == 1 and info["inner_params"][0] == "bert.encoder.layer.0.intermediate.dense.weight"
    out = module.apply({"params": params}, input_ids=np.array([[2, 5, 3]]), attention_mask=np.ones((1, 3), int))
    assert out.shape == (1, 1)
    with open(os.path.join(tmp_path, "model", "config.json")) as f:
        assert json.load(f)["architectures"] == ["BertForSequenceClassification"]


def test_fit_stops_at_the_target_and_fails_below_the_minimum():
    import jax.numpy as jnp

    loss = lambda p, batch: jnp.sum((p["w"] - batch) ** 2)
    batches = lambda idx: jnp.full((len(idx),), 3.0)
    close = lambda p: float(abs(float(p["w"]) - 3.0) < 0.5)
    cfg = FitConfig(learning_rate=0.5, warmup_steps=1, max_steps=200, eval_every=5, batch_size=2)
    params, accuracy, steps = fit({"w": jnp.zeros(())}, loss, close, 4, batches, cfg, "toy", progress=False)
    assert accuracy == 1.0 and steps < 200 and steps % 5 == 0
    with pytest.raises(RuntimeError, match="toy: the model is right on only 0.0%"):
        fit({"w": jnp.zeros(())}, loss, lambda p: 0.0, 4, batches, dataclasses.replace(cfg, max_steps=5), "toy",
            progress=False)
