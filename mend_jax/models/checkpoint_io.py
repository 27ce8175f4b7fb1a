"""Reading and writing checkpoint files as flat {PyTorch name: numpy array} dicts.

Every format is turned into PyTorch naming and PyTorch layout here, so the
conversion to Flax trees (convert.py) has one input shape to deal with.
"""
import json
import os
from typing import Dict

import numpy as np

StateDict = Dict[str, np.ndarray]

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
FLAX_MSGPACK = "flax_model.msgpack"
PYTORCH_BIN = "pytorch_model.bin"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, FLAX_MSGPACK, PYTORCH_BIN)


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be read."""


def read_state_dict(directory: str) -> StateDict:
    """Reads the weights in `directory`, preferring safetensors, then msgpack, then torch."""
    for filename, reader in (
        (SAFETENSORS, _read_safetensors),
        (SAFETENSORS_INDEX, _read_sharded_safetensors),
        (FLAX_MSGPACK, _read_flax_msgpack),
        (PYTORCH_BIN, _read_torch_bin),
    ):
        path = os.path.join(directory, filename)
        if os.path.exists(path):
            try:
                return reader(path)
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - every reader fails differently
                raise CheckpointError(f"could not read checkpoint file {path}: {type(e).__name__}: {e}") from e
    raise CheckpointError(
        f"no weights in {directory}: expected one of {', '.join(WEIGHT_FILES)}"
    )


def _read_safetensors(path: str) -> StateDict:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except Exception as e:  # noqa: BLE001
        if "bfloat16" not in str(e).lower() and "bf16" not in str(e).lower():
            raise
    return _read_safetensors_via_flax(path)


def _read_safetensors_via_flax(path: str) -> StateDict:
    # numpy has no bfloat16; the flax reader returns jax arrays that keep it.
    from safetensors.flax import load_file

    return {k: np.asarray(v) for k, v in load_file(path).items()}


def _read_sharded_safetensors(index_path: str) -> StateDict:
    with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    directory = os.path.dirname(index_path)
    state: StateDict = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(directory, shard)
        if not os.path.exists(shard_path):
            raise CheckpointError(f"{index_path} names shard {shard}, which is missing from {directory}")
        state.update(_read_safetensors(shard_path))
    return state


def _read_flax_msgpack(path: str) -> StateDict:
    """Hugging Face Flax checkpoints: (d_in, d_out) kernels, `scale`/`embedding` leaves."""
    from flax import serialization, traverse_util

    with open(path, "rb") as f:
        tree = serialization.msgpack_restore(f.read())
    state = {}
    for keys, value in traverse_util.flatten_dict(tree).items():
        *modules, leaf = keys
        value = np.asarray(value)
        if leaf == "kernel":
            value = value.T  # to PyTorch nn.Linear layout (GPT-2's Flax kernels are stored transposed too)
        state[".".join(modules + [_FLAX_LEAF_TO_TORCH.get(leaf, leaf)])] = value
    return state


_FLAX_LEAF_TO_TORCH = {"kernel": "weight", "embedding": "weight", "scale": "weight"}


def _read_torch_bin(path: str) -> StateDict:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path} is a pickled PyTorch checkpoint and torch is not installed. mend-jax never "
            "unpickles files itself. Either `pip install torch` (it is then read with "
            "weights_only=True), or convert it once to safetensors: in Python with torch, "
            "`transformers.AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`."
        ) from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items()}


def write_safetensors(state: StateDict, path: str) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path, metadata={"format": "pt"})
