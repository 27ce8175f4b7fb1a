"""The Lightning checkpoint conversion command, on checkpoints this test writes itself."""
import argparse
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mend_jax import convert_lightning, models
from tests import kilt_fixtures as kf


class TrainingOptions:
    """A training script's own class, pickled into the checkpoint's hyper-parameters."""

    def __init__(self):
        self.batch_size = 16
        self.schedule = torch.tensor([1.0, 0.5])


class BertClassifier(torch.nn.Module):
    """The reference's classifier: one logit on BERT's pooled output."""

    def __init__(self, cfg):
        super().__init__()
        self.model = transformers.BertModel(cfg)
        self.classifier = torch.nn.Linear(cfg.hidden_size, 1)

    def forward(self, input_ids, attention_mask):
        return self.classifier(self.model(input_ids=input_ids, attention_mask=attention_mask)[1])


class LightningModule(torch.nn.Module):
    """What a LightningModule's state dict looks like: the task model under `model.`."""

    def __init__(self, model):
        super().__init__()
        self.model = model


def write_lightning_checkpoint(path, module, hyper_parameters):
    torch.save({
        "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.3.8",
        "state_dict": LightningModule(module).state_dict(),
        "hyper_parameters": hyper_parameters,
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 3e-5}]}],
        "lr_schedulers": [],
    }, path)
    return str(path)


@pytest.fixture(scope="module")
def bert_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert_ckpt")
    torch.manual_seed(0)
    cfg = kf.tiny_bert_config(vocab=40)
    base = str(root / "base")
    transformers.BertConfig(**{k: v for k, v in cfg.to_dict().items() if k not in ("architectures", "num_labels",
                                                                                    "id2label", "label2id")}
                            ).save_pretrained(base)  # a plain BertModel config, as bert-base-uncased has
    kf.bert_tokenizer(["claim", "holds"]).save_pretrained(base)
    model = BertClassifier(cfg).eval()
    hparams = {"args": argparse.Namespace(lr=3e-5, model_name="bert-base-uncased"), "options": TrainingOptions()}
    ckpt = write_lightning_checkpoint(root / "FC_model.ckpt", model, hparams)
    return root, base, model, ckpt


def test_weights_only_refuses_the_file_as_written(bert_case):
    _, _, _, ckpt = bert_case
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(ckpt, weights_only=True)


def test_bert_classifier_checkpoint_converts_and_matches_pytorch(bert_case, capsys):
    root, base, model, ckpt = bert_case
    out = str(root / "converted")
    assert convert_lightning.main([ckpt, out, "--model-type", "bert", "--base", base]) == 0
    printed = capsys.readouterr().out
    assert "argparse.Namespace" in printed and "TrainingOptions" in printed and "stand-ins" in printed
    assert sorted(f for f in os.listdir(out) if not f.startswith("tokenizer")) == ["config.json", "model.safetensors"]
    assert os.path.exists(os.path.join(out, "tokenizer.json"))

    module, params = models.load_pretrained(out)
    ids = np.array([[2, 5, 9, 11, 3, 0], [2, 7, 3, 0, 0, 0]], np.int32)
    mask = (ids != 0).astype(np.int32)
    ours = np.asarray(module.apply({"params": params}, input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    with torch.no_grad():
        theirs = model(torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)).numpy()
    assert ours.shape == (2, 1)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_strict_refuses_pickled_globals_and_explains(bert_case, capsys):
    root, base, _, ckpt = bert_case
    assert convert_lightning.main([ckpt, str(root / "strict"), "--model-type", "bert", "--base", base,
                                   "--strict"]) == 1
    err = capsys.readouterr().err
    assert "weights_only=True" in err and "argparse.Namespace" in err and "--unsafe-trust-pickle" in err
    assert not os.path.exists(root / "strict" / "model.safetensors")


def test_missing_weights_and_wrong_model_type_are_errors(bert_case, tmp_path):
    _, base, model, _ = bert_case
    state = {k: v for k, v in LightningModule(model).state_dict().items() if "classifier" not in k}
    torch.save({"state_dict": state}, tmp_path / "headless.ckpt")
    with pytest.raises(convert_lightning.ConversionError, match="classifier.weight"):
        convert_lightning.convert_checkpoint(str(tmp_path / "headless.ckpt"), str(tmp_path / "o"), "bert", base)
    with pytest.raises(convert_lightning.ConversionError, match="is a 'bert' model, but --model-type is 't5'"):
        convert_lightning.convert_checkpoint(str(tmp_path / "headless.ckpt"), str(tmp_path / "o"), "t5", base)
    with pytest.raises(convert_lightning.ConversionError, match="does not exist"):
        convert_lightning.convert_checkpoint(str(tmp_path / "none.ckpt"), str(tmp_path / "o"), "bert", base)


def test_bart_checkpoint_and_bare_state_dict(tmp_path):
    torch.manual_seed(1)
    cfg = kf.tiny_bart_config(vocab=30)
    cfg.save_pretrained(tmp_path / "base")
    model = transformers.BartForConditionalGeneration(cfg).eval()
    ckpt = write_lightning_checkpoint(tmp_path / "QA_model.ckpt", model, {"args": argparse.Namespace(lr=1e-5)})
    summary = convert_lightning.convert_checkpoint(ckpt, str(tmp_path / "bart"), "bart", str(tmp_path / "base"))
    assert summary["stand_ins"] == ["argparse.Namespace"] and not summary["tokenizer"]

    ids = np.array([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]], np.int32)
    mask = (ids != 1).astype(np.int32)
    dec = np.array([[2, 0, 9, 4], [2, 0, 11, 2]], np.int32)
    module, params = models.load_pretrained(str(tmp_path / "bart"))
    ours = module.apply({"params": params}, input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                        decoder_input_ids=jnp.asarray(dec))
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                       decoder_input_ids=torch.tensor(dec).long()).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)

    # A bare state dict (what the reference's `model.pt` holds) loads with weights_only=True alone.
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    summary = convert_lightning.convert_checkpoint(str(tmp_path / "bare.pt"), str(tmp_path / "bare"), "bart",
                                                   str(tmp_path / "base"))
    assert summary["stand_ins"] == []
