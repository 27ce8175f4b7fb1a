"""Checkpoint loading end to end: file formats, dtypes, hub names and the error messages.

Every checkpoint is a tiny random GPT-2 written by `transformers` PyTorch, so the
files are exactly what a user would hand to `load_pretrained`.
"""
import copy
import json
import re
import shutil
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

from mend_jax.models import CheckpointError, inner_param_paths, load_pretrained, known_model_types
from mend_jax.models import convert, hub
from mend_jax.models.api import family_of
from tests import parity

VOCAB = 97


def tiny_config(n_embd=32):
    return transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=n_embd, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The PyTorch model, its safetensors directory, the loaded (module, params) and a padded batch."""
    torch.manual_seed(0)
    pt = transformers.GPT2LMHeadModel(tiny_config()).eval()
    with torch.no_grad():  # non-trivial biases and norms
        for p in pt.parameters():
            p.add_(0.02 * torch.randn_like(p))
    directory = tmp_path_factory.mktemp("gpt2")
    module, params = parity.save_and_load(pt, directory)
    ids, mask = parity.padded_batch(VOCAB)
    return types.SimpleNamespace(
        pt=pt, dir=directory, module=module, params=params, inputs={"input_ids": ids, "attention_mask": mask}, mask=mask
    )


def with_config(ckpt, directory):
    """`directory` holding only the fixture's config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(ckpt.dir / "config.json", directory / "config.json")
    return directory


def assert_loads_with_equal_logits(ckpt, directory):
    module, params = load_pretrained(str(directory))
    parity.assert_logits_match(ckpt.pt, module, params, ckpt.inputs, valid=ckpt.mask)


# --- formats -------------------------------------------------------------------------------


def test_sharded_safetensors(ckpt, tmp_path):
    ckpt.pt.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert not (tmp_path / "model.safetensors").exists()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    assert_loads_with_equal_logits(ckpt, tmp_path)


def test_sharded_safetensors_missing_shard_is_named(ckpt, tmp_path):
    ckpt.pt.save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*-of-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"names shard {re.escape(shard.name)}, which is missing"):
        load_pretrained(str(tmp_path))


@pytest.mark.parametrize("wrapped", [False, True], ids=["state_dict", "lightning_style"])
def test_pytorch_bin(ckpt, tmp_path, wrapped):
    state = ckpt.pt.state_dict()
    torch.save({"state_dict": state} if wrapped else state, with_config(ckpt, tmp_path) / "pytorch_model.bin")
    assert_loads_with_equal_logits(ckpt, tmp_path)


class _Marker:
    """Unpickling this creates a file: it proves whether arbitrary pickle code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_pytorch_bin_is_read_with_weights_only(ckpt, tmp_path):
    marker = tmp_path / "unpickled"
    path = with_config(ckpt, tmp_path) / "pytorch_model.bin"
    torch.save({**ckpt.pt.state_dict(), "extra": _Marker(str(marker))}, path)
    with pytest.raises(CheckpointError, match=f"could not read checkpoint file {re.escape(str(path))}: UnpicklingError"):
        load_pretrained(str(tmp_path))
    assert not marker.exists()


def test_pytorch_bin_without_torch_explains_conversion(ckpt, tmp_path, monkeypatch):
    path = with_config(ckpt, tmp_path) / "pytorch_model.bin"
    torch.save(ckpt.pt.state_dict(), path)
    # transformers already decided torch is available and would import it for config.json's
    # "dtype"; without torch installed it skips that, so drop the field to mimic it.
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("dtype", None), config.pop("torch_dtype", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as info:
        load_pretrained(str(tmp_path))
    message = str(info.value)
    assert "torch is not installed" in message
    assert "safe_serialization=True" in message and "weights_only=True" in message


def test_bf16_safetensors(ckpt, tmp_path):
    pt_bf16 = copy.deepcopy(ckpt.pt).to(torch.bfloat16)
    pt_bf16.save_pretrained(tmp_path)
    module, params = load_pretrained(str(tmp_path))
    loaded = convert.params_to_state_dict(family_of(module), params)
    expected = pt_bf16.state_dict()
    assert len(loaded) > 10
    for name, value in loaded.items():
        assert value.dtype == np.float32, name  # the default dtype, not the file's
        np.testing.assert_array_equal(value, expected[name].float().numpy(), err_msg=name)


# --- errors --------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    path = str(tmp_path / "no_such_checkpoint")
    with pytest.raises(CheckpointError, match=f"checkpoint directory {re.escape(path)} does not exist"):
        load_pretrained(path)


def test_file_instead_of_directory(ckpt):
    path = str(ckpt.dir / "config.json")
    with pytest.raises(CheckpointError, match=f"{re.escape(path)} is a file; pass the directory"):
        load_pretrained(path)


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match=f"{re.escape(str(tmp_path))} has no config.json"):
        load_pretrained(str(tmp_path))


def test_directory_without_weights(ckpt, tmp_path):
    with_config(ckpt, tmp_path)
    with pytest.raises(CheckpointError, match=f"no weights in {re.escape(str(tmp_path))}: expected one of model.safetensors"):
        load_pretrained(str(tmp_path))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors_names_the_file(ckpt, tmp_path, damage):
    path = with_config(ckpt, tmp_path) / "model.safetensors"
    good = (ckpt.dir / "model.safetensors").read_bytes()
    path.write_bytes(b"\x00garbage" * 100 if damage == "garbage" else good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=f"could not read checkpoint file {re.escape(str(path))}"):
        load_pretrained(str(tmp_path))


def test_invalid_json_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "gpt2",')
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))} is not valid JSON"):
        load_pretrained(str(tmp_path))


def test_unknown_model_type_lists_supported(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama-xyz"}))
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}: unsupported model_type 'llama-xyz'") as info:
        load_pretrained(str(tmp_path))
    supported = known_model_types()
    assert {"gpt2", "bert", "t5", "bart"} <= set(supported)
    assert str(supported) in str(info.value)


def test_missing_weight_is_named(ckpt, tmp_path):
    state = {k: v.contiguous() for k, v in ckpt.pt.state_dict().items() if k != "transformer.h.1.mlp.c_fc.weight"}
    state.pop("lm_head.weight")  # tied to wte: safetensors refuses shared storage
    save_file(state, str(with_config(ckpt, tmp_path) / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lacks 1 weight\(s\).*'transformer\.h\.1\.mlp\.c_fc\.weight'"):
        load_pretrained(str(tmp_path))


def test_shape_mismatch_names_the_tensor(ckpt, tmp_path):
    """config.json says n_embd 32; the weights are from an n_embd 16 model."""
    small = transformers.GPT2LMHeadModel(tiny_config(n_embd=16))
    small.save_pretrained(tmp_path)
    shutil.copy(ckpt.dir / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="in the checkpoint but the model built from config.json expects") as info:
        load_pretrained(str(tmp_path))
    # Whichever tensor is checked first, the message names it with both true shapes.
    name, got, expected = re.match(r"(\S+) has shape (\([\d, ]*\)).*expects (\([\d, ]*\))", str(info.value)).groups()
    assert got == str(tuple(small.state_dict()[name].shape))
    assert expected == str(tuple(ckpt.pt.state_dict()[name].shape))
    assert got != expected


def test_wrong_inner_param_name_suggests_close_names(ckpt):
    with pytest.raises(KeyError, match=r"'transformer\.h\.1\.mlp\.c_fcc\.weight' is not in the gpt2 model") as info:
        inner_param_paths(ckpt.module, ckpt.params, ["transformer.h.1.mlp.c_fcc.weight"])
    closest = str(info.value).split("Closest names:")[1]
    assert "'transformer.h.1.mlp.c_fc.weight'" in closest


@pytest.mark.parametrize("name", ["distilgpt2", "someone/not-a-real-repo-xyz"])
def test_hub_name_offline_says_how_to_download(name):
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # tests/conftest.py; otherwise this would try the network
    repo = hub.LEGACY_NAMES.get(name, name)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=f"{re.escape(repr(name))} is not a local directory") as info:
        load_pretrained(name)
    assert time.perf_counter() - start < 5
    assert f"hf download {repo} --local-dir DIR" in str(info.value)
    assert "pass DIR instead" in str(info.value)


# --- legacy names --------------------------------------------------------------------------


def test_legacy_names():
    assert hub.LEGACY_NAMES["distilgpt2"] == "distilbert/distilgpt2"
    for size in ("", "-medium", "-large", "-xl"):
        assert hub.LEGACY_NAMES[f"gpt2{size}"] == f"openai-community/gpt2{size}"


def test_resolve_keeps_local_directories(ckpt, tmp_path, monkeypatch):
    assert hub.resolve(str(ckpt.dir)) == str(ckpt.dir)
    # A local directory wins over the legacy hub name it shares.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpt2").mkdir()
    assert hub.resolve("gpt2") == "gpt2"


# --- dtype ---------------------------------------------------------------------------------


def test_bf16_dtype(ckpt):
    module, params = load_pretrained(str(ckpt.dir), dtype=jnp.bfloat16)
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}
    logits = np.asarray(parity.flax_logits(module, params, ckpt.inputs).astype(np.float32))
    assert np.isfinite(logits).all()
    ref = parity.flax_logits(ckpt.module, ckpt.params, ckpt.inputs)
    valid = ckpt.mask.astype(bool)
    # bf16 keeps ~3 significant digits; 2 layers of it stay well within 5% of the logit range.
    np.testing.assert_allclose(logits[valid], ref[valid], atol=0.05 * np.abs(ref).max(), rtol=0)
