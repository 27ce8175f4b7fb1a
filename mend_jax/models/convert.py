"""Flax parameter trees <-> PyTorch state dicts, and Hugging Face dotted names.

A Flax leaf path maps to its PyTorch name by joining the path with dots and
renaming the leaf (kernel/embedding/scale -> weight). Kernels are (d_in, d_out)
here; nn.Linear stores (d_out, d_in), GPT-2's Conv1D (d_in, d_out).
"""
import difflib
from typing import Any, Dict, Iterable, List, Tuple

import numpy as np
from flax import traverse_util

from mend_jax.models.checkpoint_io import CheckpointError, StateDict
from mend_jax.models.registry import Family

Path = Tuple[str, ...]
_LEAF_TO_TORCH = {"kernel": "weight", "embedding": "weight", "scale": "weight"}


def torch_name(path: Path) -> str:
    *modules, leaf = path
    return ".".join(list(modules) + [_LEAF_TO_TORCH.get(leaf, leaf)])


def torch_names(params: Any) -> Dict[str, Path]:
    """{PyTorch dotted name: Flax path} for every leaf of `params`."""
    return {torch_name(path): path for path in traverse_util.flatten_dict(_unfreeze(params))}


def _candidates(family: Family, name: str) -> Iterable[str]:
    yield name
    if family.base_prefix and name.startswith(family.base_prefix):
        yield name[len(family.base_prefix):]
    for alias in family.aliases(name):
        yield alias
        if family.base_prefix and alias.startswith(family.base_prefix):
            yield alias[len(family.base_prefix):]


def _to_flax_layout(family: Family, path: Path, value: np.ndarray, expected_shape) -> np.ndarray:
    if path[-1] == "kernel" and not family.conv1d_kernels:
        value = value.T
    if tuple(value.shape) != tuple(expected_shape):
        raise CheckpointError(
            f"{torch_name(path)} has shape {tuple(value.shape)} in the checkpoint but the "
            f"model built from config.json expects {tuple(expected_shape)}"
        )
    return value


def state_dict_to_params(family: Family, state: StateDict, param_shapes: Any, init_params=None) -> Dict:
    """Fills a Flax tree shaped like `param_shapes` from a PyTorch-named state dict.

    Leaves that the checkpoint lacks are taken from `init_params` when the family
    marks them optional (e.g. a fresh classifier head); otherwise it is an error.
    """
    flat_shapes = traverse_util.flatten_dict(_unfreeze(param_shapes))
    flat_init = traverse_util.flatten_dict(_unfreeze(init_params)) if init_params is not None else {}
    out, missing = {}, []
    for path, shape_struct in flat_shapes.items():
        name = torch_name(path)
        found = next((c for c in _candidates(family, name) if c in state), None)
        if found is not None:
            value = _to_flax_layout(family, path, np.asarray(state[found]), shape_struct.shape)
            out[path] = value.astype(shape_struct.dtype)
        elif family.optional(name) and path in flat_init:
            out[path] = np.asarray(flat_init[path])
        else:
            missing.append(name)
    if missing:
        raise CheckpointError(
            f"checkpoint lacks {len(missing)} weight(s) the model needs, e.g. {missing[:5]}; "
            f"it holds e.g. {sorted(state)[:5]}"
        )
    return traverse_util.unflatten_dict(out)


def params_to_state_dict(family: Family, params: Any) -> StateDict:
    state = {}
    for path, value in traverse_util.flatten_dict(_unfreeze(params)).items():
        value = np.asarray(value)
        if path[-1] == "kernel" and not family.conv1d_kernels:
            value = value.T
        state[torch_name(path)] = value
    return state


def resolve_names(family: Family, params: Any, names: Iterable[str]) -> List[Path]:
    """Hugging Face PyTorch names (e.g. 'transformer.h.5.mlp.c_fc.weight') -> Flax paths.

    Names may omit the backbone prefix ('h.5.mlp.c_fc.weight'). An unknown name
    raises a KeyError that lists the closest real names.
    """
    table = torch_names(params)
    lookup = dict(table)
    if family.base_prefix:
        for name, path in table.items():
            if name.startswith(family.base_prefix):
                lookup.setdefault(name[len(family.base_prefix):], path)
    paths, named = [], {}
    for name in names:
        if name not in lookup:
            close = difflib.get_close_matches(name, list(table), n=5, cutoff=0.5)
            raise KeyError(
                f"inner param {name!r} is not in the {family.model_type} model. "
                f"Closest names: {close or sorted(table)[:5]}"
            )
        path = lookup[name]
        if path in named:
            raise ValueError(f"inner param {name!r} names the same matrix as {named[path]!r}: list each matrix once")
        shape = get_path(params, path).shape
        if len(shape) != 2:
            raise ValueError(
                f"inner param {name!r} has shape {tuple(shape)}: the editors edit weight matrices (2-D), "
                "not biases or layer-norm parameters; name a Linear/Conv1D '.weight'"
            )
        named[path] = name
        paths.append(path)
    return paths


def get_path(tree: Any, path: Path):
    """The leaf of `tree` at `path`."""
    for key in path:
        tree = tree[key]
    return tree


def _unfreeze(tree):
    from flax.core import unfreeze

    return unfreeze(tree) if hasattr(tree, "unfreeze") else tree
