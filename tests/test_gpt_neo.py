"""GPT-Neo parity with transformers PyTorch: logits, gradients, factors, round trip."""
import numpy as np
import pytest
import transformers

from tests import parity

# Layer 0 is global, layer 1 local; the local one edits nothing but shapes every later logit.
INNER = ["transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight",
         "transformer.h.1.attn.attention.q_proj.weight", "transformer.h.0.attn.attention.out_proj.weight"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # window_size 4 < the batch's length 9, so the local layer's window cuts off real keys.
    cfg = transformers.GPTNeoConfig(
        vocab_size=97, max_position_embeddings=32, hidden_size=32, num_layers=2, num_heads=4,
        attention_types=[[["global", "local"], 1]], window_size=4, bos_token_id=0, eos_token_id=0,
    )
    return parity.random_pretrained(transformers.GPTNeoForCausalLM, cfg, tmp_path_factory.mktemp("gpt_neo"))


def test_logits_gradients_factors_and_round_trip_match(tiny, tmp_path):
    parity.check_causal_lm(*tiny, 97, INNER, tmp_path)


def test_local_window_matters(tiny):
    """Making layer 1 global changes the logits: the test above really checks the window."""
    pt, module, params = tiny
    ids, mask = parity.padded_batch(97)
    cfg = module.config.__class__.from_dict({**module.config.to_dict(), "attention_layers": ["global", "global"]})
    all_global = parity.flax_logits(module.clone(config=cfg), params, {"input_ids": ids, "attention_mask": mask})
    local = parity.flax_logits(module, params, {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_allclose(all_global[:, :4], local[:, :4], atol=1e-6)  # windows not yet full
    assert np.abs(all_global[0, 4:] - local[0, 4:]).max() > 1e-3
