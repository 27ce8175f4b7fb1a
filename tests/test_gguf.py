"""GGUF checkpoints: tiny files written as llama.cpp writes them load to the model they came from,
quantised ones to what transformers' own GGUF loader reads, the real SmolLM2-135M file to
transformers' logits and tokens; a GGUF-loaded model saves as an ordinary checkpoint; bad files
are one clear error."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mend_jax import models
from mend_jax.models import gguf_io
from mend_jax.models.checkpoint_io import CheckpointError
from tests import gguf_files, parity, tiny

gguf = pytest.importorskip("gguf")
IDS = np.array([[1, 5, 9, 13, 2, 7, 30, 11], [4, 4, 17, 3, 60, 8, 0, 0]], np.int32)
MASK = np.array([[1] * 8, [1] * 6 + [0] * 2], np.int32)


def flax_logits(module, params, ids=IDS, mask=MASK):
    return np.asarray(module.apply({"params": params}, input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask)))


def transformers_gguf_logits(path, ids=IDS, mask=MASK):
    """transformers' own GGUF loader (torch dequantisation, its own name and permutation handling)."""
    pt = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                           dtype=torch.float32).eval()
    with torch.no_grad():
        return pt(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def tiny_model(model_type, **overrides):
    make, _ = tiny.DECODERS[model_type]
    config = make()
    config = config.__class__.from_dict({**config.to_dict(), **overrides})
    module = models.build_module(config)
    return module, models.init_params(module, jax.random.PRNGKey(3))


# Mistral's sliding window is not in a GGUF file (llama.cpp files Mistral as "llama"): the config
# class's default applies, in transformers too, so the tiny one's window is set beyond the input.
@pytest.mark.parametrize("model_type, overrides", [("llama", {}), ("qwen2", {}), ("mistral", {"sliding_window": 32}),
                                                   ("gpt2", {})])
def test_a_float32_gguf_loads_to_the_model_it_was_written_from(tmp_path, model_type, overrides):
    module, params = tiny_model(model_type, **overrides)
    path = str(tmp_path / "model.gguf")
    gguf_files.write_gguf(path, module, params)
    loaded, loaded_params = models.load_pretrained(path)
    assert loaded.config.model_type == model_type
    ref = flax_logits(module, params)
    valid = MASK.astype(bool)
    np.testing.assert_allclose(flax_logits(loaded, loaded_params)[valid], ref[valid], atol=1e-6, rtol=0)
    assert np.abs(ref).max() > 0.1  # not a vacuous comparison
    again, _ = models.load_pretrained(str(tmp_path))  # the directory that holds the file
    assert again.config.to_dict() == loaded.config.to_dict()
    if model_type != "gpt2":  # transformers' GGUF reader takes GPT-2's vocabulary from a tokenizer the file lacks
        np.testing.assert_allclose(flax_logits(loaded, loaded_params)[valid], transformers_gguf_logits(path)[valid],
                                   atol=parity.LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1", "Q4_0", "Q5_1"])
def test_quantised_weights_dequantise_as_transformers_does(tmp_path, qtype):
    # Rows of 64: a multiple of every quantisation's block.
    module, params = tiny_model("llama", hidden_size=64, intermediate_size=128, vocab_size=64, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=16, max_position_embeddings=64)
    path = str(tmp_path / "model.gguf")
    gguf_files.write_gguf(path, module, params, getattr(gguf.GGMLQuantizationType, qtype))
    loaded, loaded_params = models.load_pretrained(path)
    got, ref = flax_logits(loaded, loaded_params), transformers_gguf_logits(path)
    valid = MASK.astype(bool)
    np.testing.assert_allclose(got[valid], ref[valid], atol=parity.LOGIT_ATOL, rtol=0)
    assert np.abs(got - flax_logits(module, params)).max() > 1e-6  # really quantised: not the float32 model


def test_a_gguf_loaded_model_saves_as_an_ordinary_checkpoint(tmp_path):
    module, params = tiny_model("qwen2")
    gguf_files.write_gguf(str(tmp_path / "model.gguf"), module, params)
    loaded, loaded_params = models.load_pretrained(str(tmp_path / "model.gguf"))
    models.save_pretrained(loaded, loaded_params, str(tmp_path / "hf"))
    assert not [f for f in os.listdir(tmp_path / "hf") if f.endswith(".gguf")]
    pt = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    with torch.no_grad():
        ref = pt(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits.numpy()
    valid = MASK.astype(bool)
    np.testing.assert_allclose(flax_logits(loaded, loaded_params)[valid], ref[valid], atol=parity.LOGIT_ATOL, rtol=0)


# ----- bad files -------------------------------------------------------------------------------------

def test_a_missing_truncated_or_foreign_gguf_is_one_error_naming_it(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        gguf_io.read_checkpoint(str(tmp_path / "none.gguf"))
    module, params = tiny_model("llama")
    path = tmp_path / "model.gguf"
    gguf_files.write_gguf(str(path), module, params)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.gguf is not a readable GGUF file"):
        models.load_pretrained(str(truncated))
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04" + data[4:200])
    with pytest.raises(CheckpointError, match=r"weights\.gguf is not a readable GGUF file"):
        models.load_pretrained(str(not_gguf))


def test_an_unsupported_architecture_or_quantisation_names_the_tensor_and_type(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "bert.gguf"), "bert")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file,
                 writer.close):
        step()
    with pytest.raises(CheckpointError, match=r"bert\.gguf: GGUF architecture 'bert' is not supported"):
        models.load_pretrained(str(tmp_path / "bert.gguf"))
    # A type the gguf package has no dequantiser for (Q8_1, llama.cpp's internal activation type).
    writer = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), "llama")
    for add, value in ((writer.add_block_count, 1), (writer.add_embedding_length, 32),
                       (writer.add_feed_forward_length, 64), (writer.add_head_count, 2), (writer.add_head_count_kv, 2),
                       (writer.add_context_length, 16), (writer.add_layer_norm_rms_eps, 1e-5),
                       (writer.add_vocab_size, 4)):
        add(value)
    writer.add_tensor("token_embd.weight", np.zeros((4, 40), np.uint8),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_1)
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file,
                 writer.close):
        step()
    with pytest.raises(CheckpointError, match=r"odd\.gguf: tensor token_embd\.weight is stored as Q8_1, a ggml type "
                                              "the gguf package cannot dequantise"):
        models.load_pretrained(str(tmp_path / "odd.gguf"))


def test_a_directory_with_two_gguf_files_asks_which(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(CheckpointError, match="holds 2 GGUF files"):
        models.load_pretrained(str(tmp_path))


# ----- the real model ----------------------------------------------------------------------------------

PROMPTS = ["The capital of France is", "The chemical symbol of gold is", "The capital of Japan is"]


def test_smollm2_gguf_matches_transformers_logits_and_tokens(smollm2):
    path, module, params, tokenizer = smollm2
    assert module.config.num_hidden_layers == 30 and module.config.tie_word_embeddings
    reference = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    for text in PROMPTS + ["  Spaced\tout, ünïcödé — 1234 <|im_start|>user\nhi<|im_end|>"]:
        assert tokenizer(text)["input_ids"] == reference(text)["input_ids"], text
    tokenizer.pad_token_id = tokenizer.pad_token_id or 0
    batch = tokenizer(PROMPTS, padding=True, return_tensors="np")
    got = flax_logits(module, params, batch["input_ids"], batch["attention_mask"])
    ref = transformers_gguf_logits(path, batch["input_ids"], batch["attention_mask"])
    valid = batch["attention_mask"].astype(bool)
    # fp32 sums in another order through 30 layers: 1.7e-4 seen at logits of magnitude 27.
    np.testing.assert_allclose(got[valid], ref[valid], atol=1e-5 * np.abs(ref).max(), rtol=0)
    last = got[np.arange(len(PROMPTS)), valid.sum(1) - 1].argmax(-1)
    assert [tokenizer.decode([int(t)]) for t in last] == [" Paris", " Au", " Tokyo"]
