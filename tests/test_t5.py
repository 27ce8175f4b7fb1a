"""T5 (v1.0 ReLU, v1.1 gated-GELU) parity with transformers PyTorch."""
import jax
import numpy as np
import pytest
import torch
import transformers

from mend_jax.models import load_pretrained
from mend_jax.models.t5 import relative_position_bucket
from tests import parity

VOCAB = 99
# Few buckets and a short max_distance so that the sequences below reach the
# log-spaced and the clipped buckets, not only the exact ones.
CONFIGS = {
    "v1.0": dict(feed_forward_proj="relu", relative_attention_num_buckets=8, relative_attention_max_distance=6),
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                 relative_attention_num_buckets=8, relative_attention_max_distance=7),
}
FF = {"v1.0": ["wi"], "v1.1": ["wi_0", "wi_1"]}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request, tmp_path_factory):
    version = request.param
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=3, num_heads=4,
        decoder_start_token_id=0, **CONFIGS[version],
    )
    pt = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # non-trivial layer norms
        for p in pt.parameters():
            p.add_(0.02 * torch.randn_like(p))
        if version == "v1.1":  # real v1.1 checkpoints have their own lm_head
            pt.lm_head.weight = torch.nn.Parameter(pt.shared.weight + 0.5 * torch.randn_like(pt.shared.weight))
    module, params = parity.save_and_load(pt, tmp_path_factory.mktemp("t5"))
    return version, pt, module, params


def batch(seed):
    """Right-padded encoder and decoder inputs; decoder starts with the pad id, as T5 does."""
    ids, mask = parity.padded_batch(VOCAB, length=11, seed=seed)
    dec_ids, dec_mask = parity.padded_batch(VOCAB, length=9, seed=seed + 100)
    dec_ids[:, 0] = 0
    dec_mask = dec_mask[::-1].copy()  # pad the rows whose encoder input is full
    inputs = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec_ids, "decoder_attention_mask": dec_mask}
    return inputs, dec_mask


def test_relative_position_bucket_matches_torch():
    rel = np.arange(-300, 300)[None, :]
    bucket = jax.jit(relative_position_bucket, static_argnums=(1, 2, 3))
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (8, 6)):
            ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
                torch.tensor(rel), bidirectional, buckets, distance
            ).numpy()
            got = np.asarray(bucket(rel, bidirectional, buckets, distance))
            np.testing.assert_array_equal(got, ref)


def test_param_tree_mirrors_hf_flax(tiny):
    version, _, _, params = tiny
    enc, dec = params["encoder"]["block"], params["decoder"]["block"]
    assert "relative_attention_bias" in enc["0"]["layer"]["0"]["SelfAttention"]
    assert "relative_attention_bias" not in enc["1"]["layer"]["0"]["SelfAttention"]
    assert "relative_attention_bias" not in dec["0"]["layer"]["1"]["EncDecAttention"]
    assert sorted(dec["2"]["layer"]["2"]["DenseReluDense"]) == sorted(FF[version] + ["wo"])
    assert "weight" in enc["0"]["layer"]["1"]["layer_norm"]
    assert ("lm_head" in params) == (version == "v1.1")


def test_logits_match_with_padding(tiny):
    _, pt, module, params = tiny
    inputs, dec_mask = batch(0)
    assert module.apply({"params": params}, **inputs).shape == (3, 9, VOCAB)
    parity.assert_logits_match(pt, module, params, inputs, valid=dec_mask)


def test_gradients_and_factors_match(tiny):
    version, pt, module, params = tiny
    inputs, dec_mask = batch(1)
    labels = np.where(dec_mask > 0, np.roll(inputs["decoder_input_ids"], -1, axis=1), -100)
    names = [
        "encoder.block.1.layer.1.DenseReluDense.wo.weight",
        f"decoder.block.1.layer.2.DenseReluDense.{FF[version][0]}.weight",
        "decoder.block.2.layer.1.EncDecAttention.k.weight",
        "encoder.block.0.layer.0.SelfAttention.q.weight",
    ]
    parity.check_gradients_and_factors(pt, module, params, inputs, labels, names, shift=False)


def test_round_trip(tiny, tmp_path):
    _, _, module, params = tiny
    inputs, dec_mask = batch(2)
    params = parity.perturb_params(params)
    parity.check_round_trip(transformers.T5ForConditionalGeneration, module, params, inputs, tmp_path, dec_mask)


def _rewritten_checkpoint(pt, tmp_path, rename):
    """pt's checkpoint with tensors renamed (or dropped, for None); returns its directory and names."""
    from safetensors.numpy import load_file, save_file

    src, dst = tmp_path / "src", tmp_path / "dst"
    pt.save_pretrained(src)
    dst.mkdir()
    state = load_file(str(src / "model.safetensors"))
    state = {rename.get(k, k): v for k, v in state.items() if rename.get(k, k)}
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())
    return str(dst), set(state)


def test_embedding_stored_only_as_embed_tokens_loads(tiny, tmp_path):
    _, pt, module, params = tiny
    directory, names = _rewritten_checkpoint(pt, tmp_path, {"shared.weight": "encoder.embed_tokens.weight"})
    assert "shared.weight" not in names and "encoder.embed_tokens.weight" in names
    _, loaded = load_pretrained(directory)
    np.testing.assert_array_equal(loaded["shared"]["embedding"], params["shared"]["embedding"])
    inputs, dec_mask = batch(3)
    parity.assert_logits_match(pt, module, loaded, inputs, valid=dec_mask)


def test_v11_lm_head_tied_by_transformers5_loads(tiny, tmp_path):
    """transformers >= 5 ties v1.1's lm_head to `shared` and then saves no lm_head.weight."""
    version, pt, _, params = tiny
    if version != "v1.1":
        pytest.skip("v1.0 has no lm_head")
    directory, names = _rewritten_checkpoint(pt, tmp_path, {"lm_head.weight": None})
    assert "lm_head.weight" not in names
    _, loaded = load_pretrained(directory)
    np.testing.assert_array_equal(loaded["lm_head"]["kernel"], np.asarray(params["shared"]["embedding"]).T)
