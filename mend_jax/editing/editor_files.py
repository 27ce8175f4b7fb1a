"""A trained editor as two files, for sharing: editor.safetensors and editor.json.

editor.safetensors holds every leaf of the editor's trainable parameters
("params/...") and non-trainable state ("stats/...", e.g. MEND's normalisation
statistics), named by their path in the pytree. editor.json holds the run's
config (which model, inner params and editor shapes), from which the editor's
structure is rebuilt, and where the weights came from. No pickle, no Orbax.

Both files record what the editor was trained for (`identity`): the base model's name, the
inner params, a SHA-256 of the inner weights the editor edits, and the number of edits per
training step. An editor is refused by a model whose inner weights differ, and a weights file
by an editor.json that names other inner params.
"""
import hashlib
import json
import os
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np

from mend_jax import __version__
from mend_jax.data.io import DataFormatError, read_json
from mend_jax.editing import outputs
from safetensors.numpy import save_file

WEIGHTS, META = "editor.safetensors", "editor.json"
EDITOR_DIR = "editor"  # where a run exports its kept editor
FORMAT_VERSION = 2  # 2: the identity fields (1 had none; still read, unchecked)
IDENTITY_FIELDS = ("base_model", "inner_params", "inner_weights_sha256", "edits_per_step")


class EditorFileError(RuntimeError):
    """An editor directory that cannot be read; the message names the file."""


class EditorWarning(UserWarning):
    """Something about an editor that the user should know; the CLI prints it as one line."""


class NonFiniteEditor(ValueError):
    """Editor parameters with NaN or inf, which would edit nothing or everything."""


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


def first_non_finite(leaves: Dict[str, Any]) -> Optional[str]:
    """The name of the first leaf holding a NaN or inf, or None."""
    for name, leaf in leaves.items():
        array = np.asarray(leaf)
        if np.issubdtype(array.dtype, np.inexact) or array.dtype.name == "bfloat16":
            if not np.all(np.isfinite(array.astype(np.float32))):
                return name
    return None


def check_finite(params, stats, what: str = "the editor") -> None:
    """Raises NonFiniteEditor naming the first leaf of `params`/`stats` that is not finite."""
    _check_leaves(jax.device_get({**flatten("params", params), **flatten("stats", stats)}), what)


def _check_leaves(leaves: Dict[str, Any], what: str) -> None:
    bad = first_non_finite(leaves)
    if bad is not None:
        raise NonFiniteEditor(f"{what} has non-finite values (NaN or inf) in {bad}: it cannot be saved or applied. "
                              "Retrain it (a NaN or inf learning rate, or a diverged run, gives such an editor)")


def inner_weights_sha256(inner_paths: Sequence[Tuple[str, ...]], params) -> str:
    """A SHA-256 of the edited matrices (names, shapes and float32 values): which weights an editor was trained on."""
    from flax import traverse_util

    flat = traverse_util.flatten_dict(params)
    digest = hashlib.sha256()
    for path in inner_paths:
        array = np.ascontiguousarray(np.asarray(jax.device_get(flat[tuple(path)]), np.float32))
        digest.update(f"{'/'.join(path)}:{array.shape};".encode())
        digest.update(array.astype("<f4").tobytes())
    return digest.hexdigest()


def identity(config: ml_collections.ConfigDict, inner_paths, base_params) -> Dict[str, Any]:
    """What an editor was trained for (IDENTITY_FIELDS), recorded in both of its files."""
    return {"base_model": str(config.model.name), "inner_params": list(config.model.inner_params),
            "inner_weights_sha256": inner_weights_sha256(inner_paths, base_params),
            "edits_per_step": int(config.data.n_edits)}


def save_editor(directory: str, params, stats, config: ml_collections.ConfigDict, info: Dict[str, Any]) -> None:
    """Writes the editor atomically (editing/outputs.py): a killed save leaves the previous files (or
    none), and a directory this project did not write is refused. `info` holds `identity(...)`."""
    leaves = jax.device_get({**flatten("params", params), **flatten("stats", stats)})
    _check_leaves(leaves, "the editor")
    missing = [f for f in IDENTITY_FIELDS if f not in info]
    if missing:
        raise ValueError(f"save_editor needs the editor's identity ({', '.join(missing)} missing)")

    def fill(tmp: str) -> None:
        tensor_meta = {"format": "mend_jax.editor", **{f: json.dumps(info[f]) for f in IDENTITY_FIELDS}}
        save_file({k: _storable(v) for k, v in leaves.items()}, os.path.join(tmp, WEIGHTS), metadata=tensor_meta)
        meta = {"format_version": FORMAT_VERSION, "mend_jax_version": __version__, **info,
                "config": json.loads(json.dumps(config.to_dict(), default=str))}
        with open(os.path.join(tmp, META), "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)

    outputs.write_dir(directory, outputs.EDITOR, fill)


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
    if meta.get("format_version") not in (1, FORMAT_VERSION) or not isinstance(meta.get("config"), dict):
        raise EditorFileError(f"{path}: not an editor file of format {FORMAT_VERSION} with a 'config'")
    return meta


def check_identity(directory: str, meta: Dict[str, Any], inner_paths, base_params) -> None:
    """Raises EditorFileError unless the editor in `directory` was trained for these inner
    weights: its weights file and editor.json agree, and the weights hash to what it recorded."""
    from safetensors import safe_open

    path = os.path.join(directory, WEIGHTS)
    if meta.get("format_version", 1) < 2:
        warnings.warn(EditorWarning(f"{directory}: an editor saved before mend-jax recorded the model an editor "
                                    "was trained for; it cannot be checked against this model"), stacklevel=2)
        return
    try:
        with safe_open(path, "numpy") as f:
            tensor_meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise EditorFileError(f"{path} cannot be read: {e}") from None
    recorded = {}
    for field in IDENTITY_FIELDS:
        try:
            recorded[field] = json.loads(tensor_meta[field])
        except (KeyError, ValueError):
            raise EditorFileError(f"{path} does not record the editor's {field}; it was not written by "
                                  "mend-jax's save_editor") from None
    config_inner = list(meta["config"]["model"]["inner_params"])
    if recorded["inner_params"] != config_inner or meta.get("inner_params") != config_inner:
        raise EditorFileError(f"{path} was trained for the inner params {recorded['inner_params']}, but "
                              f"{META} names {config_inner}: the two files come from different editors")
    actual = inner_weights_sha256(inner_paths, base_params)
    if actual != recorded["inner_weights_sha256"]:
        raise EditorFileError(
            f"{path} was trained for other weights than this model's: {recorded['base_model']} "
            f"({', '.join(recorded['inner_params'])}) with inner weights {recorded['inner_weights_sha256'][:12]}, "
            f"this model's hash to {actual[:12]}. An editor only edits the model and layers it was trained on")


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
