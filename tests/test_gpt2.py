"""GPT-2 parity with transformers PyTorch: logits, gradients, factors, round trip."""
import numpy as np
import pytest
import transformers

from mend_jax.models import add_pad_token, inner_param_paths, load_pretrained
from tests import parity

INNER = ["transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight", "transformer.h.0.attn.c_proj.weight"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    return parity.random_pretrained(transformers.GPT2LMHeadModel, cfg, tmp_path_factory.mktemp("gpt2"))


def test_logits_gradients_factors_and_round_trip_match(tiny, tmp_path):
    parity.check_causal_lm(*tiny, 97, INNER, tmp_path)


def test_checkpoint_without_backbone_prefix_loads(tiny, tmp_path):
    """Old GPT-2 repos were saved from GPT2Model: keys lack 'transformer.'."""
    pt, module, params = tiny
    pt.transformer.save_pretrained(tmp_path)
    _, loaded = load_pretrained(str(tmp_path))
    np.testing.assert_array_equal(
        loaded["transformer"]["h"]["1"]["mlp"]["c_fc"]["kernel"], params["transformer"]["h"]["1"]["mlp"]["c_fc"]["kernel"]
    )


def test_flax_msgpack_checkpoint_loads(tiny, tmp_path):
    """HF Flax GPT-2 checkpoints store (d_out, d_in) kernels under the same tree."""
    from flax import serialization, traverse_util

    pt, module, params = tiny
    flat = traverse_util.flatten_dict(params)
    hf_flax = {k: (np.asarray(v).T if k[-1] == "kernel" else np.asarray(v)) for k, v in flat.items()}
    (tmp_path / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(traverse_util.unflatten_dict(hf_flax)))
    module.config.save_pretrained(tmp_path)
    _, loaded = load_pretrained(str(tmp_path))
    ids, mask = parity.padded_batch(97, seed=3)
    parity.assert_logits_match(pt, module, loaded, {"input_ids": ids, "attention_mask": mask}, mask)


def test_pad_token_fix(tiny):
    _, module, params = tiny
    grown_module, grown = add_pad_token(module, params)
    wte = params["transformer"]["wte"]["embedding"]
    new = grown["transformer"]["wte"]["embedding"]
    assert new.shape == (wte.shape[0] + 1, wte.shape[1])
    np.testing.assert_allclose(new[-1], wte.mean(0), atol=1e-6)
    assert grown_module.config.pad_token_id == wte.shape[0]
    assert params["transformer"]["wte"]["embedding"].shape == wte.shape  # caller's tree untouched
    ids, mask = parity.padded_batch(97, seed=4)
    logits = grown_module.apply({"params": grown}, input_ids=ids, attention_mask=mask)
    assert logits.shape[-1] == 98


def test_inner_names_without_prefix_resolve(tiny):
    _, module, params = tiny
    assert inner_param_paths(module, params, ["h.1.mlp.c_fc.weight"]) == [("transformer", "h", "1", "mlp", "c_fc", "kernel")]
