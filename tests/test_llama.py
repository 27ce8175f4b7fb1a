"""Llama / Qwen2 / Mistral parity with transformers PyTorch: logits, gradients, factors, round trip."""
import numpy as np
import pytest
import transformers

from mend_jax.models import load_pretrained, rotary
from mend_jax.models.convert import torch_names
from tests import parity

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
# Llama 3.1's scaling with head_dim 8: wavelengths 2π·10^k for k < 4, so one is kept (< 128 / 8),
# one blended and two divided by `factor` (> 128 / 1).
LLAMA3_ROPE = {
    "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
    "low_freq_factor": 1.0, "high_freq_factor": 8.0, "original_max_position_embeddings": 128,
}
CASES = {
    # Grouped-query attention, untied head, biases everywhere, llama3 rope scaling.
    "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig(
        **TINY, num_key_value_heads=2, tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
        max_position_embeddings=256, rope_parameters=LLAMA3_ROPE,
    )),
    # q/k/v biases, tied embeddings; layer 1 (>= max_window_layers) attends over a window of 4.
    "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config(
        **TINY, num_key_value_heads=2, tie_word_embeddings=True,
        use_sliding_window=True, sliding_window=4, max_window_layers=1,
    )),
    # Multi-query attention, every layer windowed to 4 keys of the 9.
    "mistral": (transformers.MistralForCausalLM, transformers.MistralConfig(
        **TINY, num_key_value_heads=1, sliding_window=4,
    )),
}
INNER = [
    "model.layers.1.mlp.gate_proj.weight",
    "model.layers.1.mlp.up_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
]


@pytest.fixture(scope="module", params=sorted(CASES))
def tiny(request, tmp_path_factory):
    pt_class, cfg = CASES[request.param]
    return parity.random_pretrained(pt_class, cfg, tmp_path_factory.mktemp(request.param))


def _inputs(seed):
    ids, mask = parity.padded_batch(97, seed=seed)
    return {"input_ids": ids, "attention_mask": mask}, mask


def test_param_names_match_state_dict(tiny):
    pt, _, params = tiny
    expected = set(pt.state_dict())
    if pt.config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    assert set(torch_names(params)) == expected


def test_logits_match_with_padding(tiny):
    pt, module, params = tiny
    inputs, mask = _inputs(0)
    assert module.apply({"params": params}, **inputs).shape == (3, 9, 97)
    parity.assert_logits_match(pt, module, params, inputs, valid=mask)


def test_eager_attention_logits_match(tiny):
    """The eager path adds its mask to the scores, as the Flax model does; sdpa (the default) is above."""
    pt, module, params = tiny
    pt.set_attn_implementation("eager")
    try:
        inputs, mask = _inputs(5)
        parity.assert_logits_match(pt, module, params, inputs, valid=mask)
    finally:
        pt.set_attn_implementation("sdpa")


def test_sliding_window_changes_logits(tiny):
    """So that the parity above covers the window: without it the logits differ."""
    pt, module, params = tiny
    if getattr(pt.config, "sliding_window", None) is None:
        pytest.skip("no sliding window in this case")
    raw = {**pt.config.to_dict(), "sliding_window": None}
    raw.pop("layer_types", None)  # Qwen2 recomputes them: all full attention
    full_cfg = pt.config.__class__.from_dict(raw)
    inputs, mask = _inputs(6)
    windowed = parity.flax_logits(module, params, inputs)
    full = parity.flax_logits(module.clone(config=full_cfg), params, inputs)
    assert np.abs(windowed - full)[mask.astype(bool)].max() > 1e-3


def test_inverse_frequencies_match_rotary_buffer(tiny):
    pt, module, _ = tiny
    cfg = module.config
    ours = rotary.inverse_frequencies(cfg.hidden_size // cfg.num_attention_heads, *rotary.rope_settings(cfg))
    np.testing.assert_allclose(ours, pt.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)
    if cfg.model_type == "llama":
        plain = rotary.inverse_frequencies(len(ours) * 2, LLAMA3_ROPE["rope_theta"])
        assert (ours == plain).any() and (ours != plain).sum() >= 2


def test_logits_gradients_factors_and_round_trip_match(tiny, tmp_path):
    parity.check_causal_lm(*tiny, 97, INNER, tmp_path)


def test_checkpoint_without_backbone_prefix_loads(tiny, tmp_path):
    """A checkpoint saved from the bare backbone lacks 'model.'; only a tied model can be built from one."""
    pt, _, params = tiny
    if not pt.config.tie_word_embeddings:
        pytest.skip("an untied head is not in the backbone's checkpoint")
    pt.model.save_pretrained(tmp_path)
    _, loaded = load_pretrained(str(tmp_path))
    np.testing.assert_array_equal(
        loaded["model"]["layers"]["1"]["mlp"]["down_proj"]["kernel"],
        params["model"]["layers"]["1"]["mlp"]["down_proj"]["kernel"],
    )
