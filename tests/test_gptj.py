"""GPT-J parity with transformers PyTorch: logits, gradients, factors, round trip, untied head."""
import numpy as np
import pytest
import transformers

from mend_jax.models import add_pad_token
from tests import parity

INNER = ["transformer.h.1.mlp.fc_in.weight", "transformer.h.1.mlp.fc_out.weight",
         "transformer.h.1.attn.k_proj.weight", "transformer.h.0.attn.out_proj.weight"]


def build(tmp_path_factory, rotary_dim):
    cfg = transformers.GPTJConfig(
        vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4, rotary_dim=rotary_dim,
        bos_token_id=0, eos_token_id=0,
    )
    return parity.random_pretrained(transformers.GPTJForCausalLM, cfg, tmp_path_factory.mktemp(f"gptj{rotary_dim}"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build(tmp_path_factory, rotary_dim=4)  # half of head_dim 8: the rest passes through


def test_logits_gradients_factors_and_round_trip_match(tiny, tmp_path):
    parity.check_causal_lm(*tiny, 97, INNER, tmp_path)


def test_full_head_rotary_logits_match(tmp_path_factory):
    """transformers' config rejects rotary_dim=None; rotary_dim=head_dim rotates every feature."""
    pt, module, params = build(tmp_path_factory, rotary_dim=8)
    ids, mask = parity.padded_batch(97, seed=5)
    parity.assert_logits_match(pt, module, params, {"input_ids": ids, "attention_mask": mask}, valid=mask)


def test_untied_lm_head_with_bias_loaded(tiny):
    pt, _, params = tiny
    head = params["lm_head"]
    np.testing.assert_array_equal(np.asarray(head["kernel"]), pt.lm_head.weight.detach().numpy().T)
    np.testing.assert_array_equal(np.asarray(head["bias"]), pt.lm_head.bias.detach().numpy())
    assert not np.allclose(np.asarray(head["kernel"]).T, np.asarray(params["transformer"]["wte"]["embedding"]))


def test_pad_token_fix_grows_the_untied_head(tiny):
    _, module, params = tiny
    grown_module, grown = add_pad_token(module, params)
    head, new_head = params["lm_head"], grown["lm_head"]
    assert grown["transformer"]["wte"]["embedding"].shape == (98, 32)
    assert new_head["kernel"].shape == (32, 98) and new_head["bias"].shape == (98,)
    np.testing.assert_allclose(new_head["kernel"][:, -1], head["kernel"].mean(1), atol=1e-6)
    ids, mask = parity.padded_batch(97, seed=4)
    assert grown_module.apply({"params": grown}, input_ids=ids, attention_mask=mask).shape == (3, 9, 98)
