"""BART parity with transformers PyTorch: logits, gradients, factors, round trip, loading."""
import jax
import numpy as np
import pytest
import torch
import transformers

from mend_jax.models import build_module, load_pretrained
from mend_jax.models.checkpoint_io import write_safetensors
from mend_jax.models.convert import torch_names
from tests import parity

VOCAB = 99
INNER = [
    "model.encoder.layers.1.fc1.weight",
    "model.decoder.layers.1.fc2.weight",
    "model.decoder.layers.0.encoder_attn.q_proj.weight",
    "model.encoder.layers.0.self_attn.v_proj.weight",
]
TIED = {"lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"}


def tiny_config(**overrides):
    kw = dict(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32,
    )
    return transformers.BartConfig(**{**kw, **overrides})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    pt = transformers.BartForConditionalGeneration(tiny_config(scale_embedding=True)).eval()
    with torch.no_grad():  # non-trivial biases, norms and final_logits_bias (a buffer)
        for p in list(pt.parameters()) + [pt.final_logits_bias]:
            p.add_(0.02 * torch.randn_like(p))
    module, params = parity.save_and_load(pt, tmp_path_factory.mktemp("bart"))
    return pt, module, params


def seq2seq_batch(seed, decoder_left_pad=False):
    ids, mask = parity.padded_batch(VOCAB, length=9, seed=seed)
    dec_ids, dec_mask = parity.padded_batch(VOCAB, length=9, seed=seed + 100)
    if decoder_left_pad:  # right padding cannot reveal an ignored decoder mask: causality hides it
        dec_mask = dec_mask[:, ::-1].copy()
    inputs = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec_ids, "decoder_attention_mask": dec_mask}
    return inputs, dec_mask


def test_param_names_match_pytorch(tiny):
    pt, _, params = tiny
    names = set(torch_names(params))
    assert names == set(pt.state_dict()) - TIED
    assert params["model"]["encoder"]["embed_positions"]["embedding"].shape == (32 + 2, 32)
    assert params["final_logits_bias"].shape == (1, VOCAB)
    assert set(params["model"]["decoder"]["layers"]["1"]) == {
        "self_attn", "self_attn_layer_norm", "encoder_attn", "encoder_attn_layer_norm",
        "fc1", "fc2", "final_layer_norm",
    }
    np.testing.assert_array_equal(params["final_logits_bias"], pt.final_logits_bias.numpy())


def test_logits_match_with_padding(tiny):
    pt, module, params = tiny
    inputs, dec_mask = seq2seq_batch(seed=0)
    assert parity.flax_logits(module, params, inputs).shape == (3, 9, VOCAB)
    parity.assert_logits_match(pt, module, params, inputs, valid=dec_mask)


def test_decoder_attention_mask_honoured(tiny):
    pt, module, params = tiny
    inputs, dec_mask = seq2seq_batch(seed=1, decoder_left_pad=True)
    parity.assert_logits_match(pt, module, params, inputs, valid=dec_mask)
    unmasked = dict(inputs, decoder_attention_mask=np.ones_like(dec_mask))
    changed = parity.flax_logits(module, params, inputs) - parity.flax_logits(module, params, unmasked)
    assert np.abs(changed[dec_mask.astype(bool)]).max() > 1e-3


def test_gradients_and_factors_match(tiny):
    pt, module, params = tiny
    inputs, dec_mask = seq2seq_batch(seed=2)
    labels = np.where(dec_mask > 0, np.roll(inputs["decoder_input_ids"], -1, axis=1), -100)
    labels[:, 0] = -100
    parity.check_gradients_and_factors(pt, module, params, inputs, labels, INNER, shift=False)


def test_round_trip(tiny, tmp_path):
    _, module, params = tiny
    inputs, dec_mask = seq2seq_batch(seed=3)
    params = parity.perturb_params(params)
    assert np.abs(params["final_logits_bias"]).min() > 0
    parity.check_round_trip(transformers.BartForConditionalGeneration, module, params, inputs, tmp_path, dec_mask)


def test_backbone_checkpoint_loads_with_zero_logits_bias(tiny, tmp_path):
    """BartModel checkpoints lack both the 'model.' prefix and final_logits_bias."""
    pt, _, params = tiny
    pt.model.save_pretrained(tmp_path)
    _, loaded = load_pretrained(str(tmp_path))
    np.testing.assert_array_equal(loaded["final_logits_bias"], np.zeros((1, VOCAB), np.float32))
    np.testing.assert_array_equal(
        loaded["model"]["decoder"]["layers"]["1"]["fc2"]["kernel"], params["model"]["decoder"]["layers"]["1"]["fc2"]["kernel"]
    )


def test_embedding_stored_under_encoder_name_loads(tiny, tmp_path):
    pt, module, params = tiny
    state = {k: v.numpy() for k, v in pt.state_dict().items() if k not in TIED}
    state["model.encoder.embed_tokens.weight"] = state.pop("model.shared.weight")
    write_safetensors(state, str(tmp_path / "model.safetensors"))
    module.config.save_pretrained(tmp_path)
    _, loaded = load_pretrained(str(tmp_path))
    np.testing.assert_array_equal(loaded["model"]["shared"]["embedding"], params["model"]["shared"]["embedding"])


def test_untied_embeddings_rejected():
    module = build_module(tiny_config(tie_word_embeddings=False))
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        module.init(jax.random.PRNGKey(0), input_ids=np.zeros((1, 3), np.int32), decoder_input_ids=np.zeros((1, 3), np.int32))
