"""Public entry points: load_pretrained, save_pretrained, inner-param lookup."""
import json
import os
from typing import Dict, List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mend_jax.models import convert, gguf_io, hub
from mend_jax.models.checkpoint_io import CheckpointError, read_state_dict, write_safetensors
from mend_jax.models.layers import check_remat
from mend_jax.models.registry import Family, dummy_inputs, get_family

Path = Tuple[str, ...]


def family_of(module: nn.Module) -> Family:
    return get_family(module.config.model_type)


def read_config(directory: str):
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{directory} has no config.json")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if "model_type" not in raw:
        raise CheckpointError(f"{path} has no 'model_type'")
    try:
        family = get_family(raw["model_type"])
    except ValueError as e:  # unsupported type: say which file asked for it
        raise CheckpointError(f"{path}: {e}") from None
    return family, family.config_class.from_dict(raw)


def build_module(hf_config, dtype=jnp.float32, param_dtype=None, remat: str = "none") -> nn.Module:
    """The Flax module of a Hugging Face config: computing in `dtype`, holding its weights in
    `param_dtype` (default: `dtype`), each layer rematerialised as `remat` names (layers.REMAT_POLICIES)."""
    family = get_family(hf_config.model_type)
    return family.build(hf_config, dtype=dtype, param_dtype=param_dtype or dtype, remat=check_remat(remat))


def init_params(module: nn.Module, rng: jax.Array) -> Dict:
    # Jitted: one compilation is much cheaper than running every initialiser eagerly.
    return jax.jit(lambda r: module.init(r, **dummy_inputs(family_of(module)))["params"])(rng)


def param_shapes(module: nn.Module) -> Dict:
    return jax.eval_shape(lambda: init_params(module, jax.random.PRNGKey(0)))


def load_pretrained(
    name_or_path: str, dtype=jnp.float32, param_dtype=None, remat: str = "none"
) -> Tuple[nn.Module, Dict]:
    """Loads a Hugging Face checkpoint (local directory or hub name) or a GGUF file as (module, params).

    Reads model.safetensors (sharded too), flax_model.msgpack, or pytorch_model.bin
    (with torch, weights_only=True), with the architecture from config.json; or a `.gguf`
    file (or a directory holding one), dequantised to float32 (gguf_io.py).
    """
    gguf_path = gguf_io.find(name_or_path)
    if gguf_path is not None:
        hf_config, state = gguf_io.read_checkpoint(gguf_path)
        family = get_family(hf_config.model_type)
    else:
        directory = hub.resolve(name_or_path)
        family, hf_config = read_config(directory)
        state = read_state_dict(directory)
    module = build_module(hf_config, dtype, param_dtype, remat)
    shapes = param_shapes(module)
    needs_init = any(family.optional(n) and n not in state for n in convert.torch_names(shapes))
    fresh = init_params(module, jax.random.PRNGKey(0)) if needs_init else None
    params = convert.state_dict_to_params(family, state, shapes, fresh)
    return module, jax.tree_util.tree_map(jnp.asarray, params)


def last_mlp_matrices(name_or_path: str, n_layers: int = 3) -> List[str]:
    """The PyTorch names of the MLP weight matrices of a decoder's last `n_layers` blocks (what
    MEND and FT edit by default), read from the checkpoint's config alone."""
    import re

    gguf_path = gguf_io.find(name_or_path)
    hf_config = gguf_io.hf_config(gguf_path) if gguf_path else read_config(hub.resolve(name_or_path))[1]
    names = convert.torch_names(param_shapes(build_module(hf_config)))
    blocks = {}
    for name in names:
        found = re.search(r"\.(\d+)\.mlp\.[^.]+\.weight$", name)
        if found:
            blocks.setdefault(int(found.group(1)), []).append(name)
    if not blocks:
        raise CheckpointError(f"{name_or_path}: no MLP weight matrices named like 'LAYER.N.mlp.X.weight'; name the "
                              "matrices to edit (inner_params)")
    return [n for i in sorted(blocks)[-n_layers:] for n in sorted(blocks[i])]


def load_tokenizer(name_or_path: str):
    """The tokenizer of a checkpoint directory, hub name or GGUF file (transformers' fast tokenizer)."""
    import transformers

    gguf_path = gguf_io.find(name_or_path)
    if gguf_path is not None:
        return gguf_io.tokenizer(gguf_path)
    return transformers.AutoTokenizer.from_pretrained(name_or_path)


def save_pretrained(module: nn.Module, params: Dict, out_dir: str) -> None:
    """Writes config.json and model.safetensors that `transformers` PyTorch loads."""
    os.makedirs(out_dir, exist_ok=True)
    module.config.save_pretrained(out_dir)
    state = convert.params_to_state_dict(family_of(module), jax.device_get(params))
    state = {k: v.astype(np.float32) if v.dtype == jnp.bfloat16 else v for k, v in state.items()}
    write_safetensors(state, os.path.join(out_dir, "model.safetensors"))


def inner_param_paths(module: nn.Module, params: Dict, names: Sequence[str]) -> List[Path]:
    """Maps Hugging Face PyTorch names of edited matrices to paths in `params`."""
    return convert.resolve_names(family_of(module), params, names)


def inner_in_float32(params: Dict, inner_paths: Sequence[Path]) -> Dict:
    """`params` with the edited matrices in float32 (a no-op for a float32 model). Works on
    abstract params (jax.ShapeDtypeStruct) too."""
    def to_float32(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=x.sharding)
        return x.astype(jnp.float32)

    flat = dict(traverse_util.flatten_dict(params))
    for path in inner_paths:
        if flat[path].dtype != jnp.float32:
            flat[path] = to_float32(flat[path])
    return traverse_util.unflatten_dict(flat)


def add_pad_token(module: nn.Module, params: Dict, tokenizer=None) -> Tuple[nn.Module, Dict]:
    """The reference's GPT-2 fix, for any decoder: add '[PAD]' and grow the token embedding by
    one mean row (and an untied `lm_head` by one mean output, bias included)."""
    family = family_of(module)
    if not family.embedding_path:
        raise ValueError(f"{family.model_type} models have no pad-token fix; their tokenizers have a pad token")
    cfg = module.config.__class__.from_dict(module.config.to_dict())
    flat = dict(traverse_util.flatten_dict(params))  # a new tree: the caller's stays as it was
    table_path = family.embedding_path + ("embedding",)
    vocab = flat[table_path].shape[0]
    flat[table_path] = _append_mean(flat[table_path], axis=0)
    if ("lm_head", "kernel") in flat and flat[("lm_head", "kernel")].shape[-1] == vocab:
        flat[("lm_head", "kernel")] = _append_mean(flat[("lm_head", "kernel")], axis=1)
        if ("lm_head", "bias") in flat:
            flat[("lm_head", "bias")] = _append_mean(flat[("lm_head", "bias")], axis=0)
    params = traverse_util.unflatten_dict(flat)
    cfg.pad_token_id = vocab
    cfg.vocab_size = vocab + 1
    if tokenizer is not None:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        if tokenizer.pad_token_id != cfg.pad_token_id:
            raise ValueError(
                f"tokenizer gave [PAD] id {tokenizer.pad_token_id}, but the grown embedding row is "
                f"{cfg.pad_token_id}; the tokenizer and the checkpoint disagree on the vocabulary size"
            )
    return module.clone(config=cfg), params


def _append_mean(x: jax.Array, axis: int) -> jax.Array:
    return jnp.concatenate([x, x.mean(axis=axis, keepdims=True).astype(x.dtype)], axis=axis)
