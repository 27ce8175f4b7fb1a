"""A trained editor as two files, for sharing: editor.safetensors and editor.json.

editor.safetensors holds every leaf of the editor's trainable parameters
("params/...") and non-trainable state ("stats/...", e.g. MEND's normalisation
statistics), named by their path in the pytree. editor.json holds the run's
config (which model, inner params and editor shapes), from which the editor's
structure is rebuilt, and where the weights came from. No pickle, no Orbax.
"""
import json
import os
import shutil
import tempfile
from typing import Any, Dict, Tuple

import jax
import ml_collections
import numpy as np

from mend_jax import __version__
from mend_jax.data.io import DataFormatError, read_json
from safetensors.numpy import save_file

WEIGHTS, META = "editor.safetensors", "editor.json"
EDITOR_DIR = "editor"  # where a run exports its kept editor
FORMAT_VERSION = 1


class EditorFileError(RuntimeError):
    """An editor directory that cannot be read; the message names the file."""


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def flatten(prefix: str, tree) -> Dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join([prefix] + [_key_name(k) for k in path]): leaf for path, leaf in leaves}


def _storable(leaf) -> np.ndarray:
    """A contiguous numpy array of the leaf's shape (0-d too); bfloat16, which numpy's safetensors
    writer lacks, as float32 (load_weights casts back to the editor's dtype)."""
    array = np.asarray(leaf)
    if array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
    return np.ascontiguousarray(array).reshape(array.shape)


def save_editor(directory: str, params, stats, config: ml_collections.ConfigDict, info: Dict[str, Any]) -> None:
    """Writes the editor atomically: a killed save leaves the previous files (or none)."""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".editor-", dir=parent)
    try:
        leaves = jax.device_get({**flatten("params", params), **flatten("stats", stats)})
        save_file({k: _storable(v) for k, v in leaves.items()}, os.path.join(tmp, WEIGHTS),
                  metadata={"format": "mend_jax.editor"})
        meta = {"format_version": FORMAT_VERSION, "mend_jax_version": __version__, **info,
                "config": json.loads(json.dumps(config.to_dict(), default=str))}
        with open(os.path.join(tmp, META), "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o755)
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        os.rename(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def has_editor(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, WEIGHTS)) and os.path.isfile(os.path.join(directory, META))


def read_meta(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, META)
    if not os.path.isfile(path):
        raise EditorFileError(f"{directory} holds no trained editor ({META} is missing)")
    try:
        meta = read_json(path, "")
    except DataFormatError as e:
        raise EditorFileError(str(e)) from None
    if meta.get("format_version") != FORMAT_VERSION or "config" not in meta:
        raise EditorFileError(f"{path}: not an editor file of format {FORMAT_VERSION} with a 'config'")
    return meta


def load_weights(directory: str, params_like, stats_like) -> Tuple[Any, Any]:
    """The saved leaves, in the structure (and dtypes) of `params_like` / `stats_like`."""
    from safetensors.numpy import load_file

    path = os.path.join(directory, WEIGHTS)
    if not os.path.isfile(path):
        raise EditorFileError(f"{directory} holds no trained editor ({WEIGHTS} is missing)")
    try:
        saved = load_file(path)
    except Exception as e:  # safetensors raises its own error types
        raise EditorFileError(f"{path} cannot be read: {e}") from None

    def fill(prefix, like):
        names = list(flatten(prefix, like))
        leaves, treedef = jax.tree_util.tree_flatten(like)
        missing = [n for n in names if n not in saved]
        if missing:
            raise EditorFileError(f"{path} lacks {len(missing)} of the editor's tensors, e.g. {missing[0]}; "
                                  "it was saved for another config")
        out = []
        for name, leaf in zip(names, leaves):
            if tuple(saved[name].shape) != tuple(leaf.shape):
                raise EditorFileError(f"{path}: {name} has shape {saved[name].shape}, the editor needs {leaf.shape}")
            out.append(jax.numpy.asarray(saved[name], dtype=leaf.dtype))
        return jax.tree_util.tree_unflatten(treedef, out)

    return fill("params", params_like), fill("stats", stats_like)
