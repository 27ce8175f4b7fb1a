"""Checks of a run's config: before any work, and against the config a workdir's run was started with.

Every error names the key as it is set on the command line (`--config.KEY`).
"""
import json
import math
import os
from typing import Any, Dict, List, Tuple

import ml_collections

from mend_jax.data.io import write_json_atomically
from mend_jax.models.layers import DTYPES, REMAT_POLICIES


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""

    def in_file(self) -> str:
        """The message for a config read from a file (editor.json) instead of the command line."""
        return str(self).replace("--config.", "", 1)


# Keys that may change when a run resumes: its length, how often it logs, validates and
# saves, and whether it only evaluates. Any other change would continue one run with another's state.
RESUMABLE_KEYS = (
    "max_iters", "val_interval", "early_stop_patience", "eval_only", "final_eval_steps", "log_interval",
    "checkpoint_interval", "eval_chunk", "async_checkpointing", "max_skipped_fraction",
    # Where the state lives: a run may resume on another mesh (data_parallel.py keeps the numbers).
    "mesh.data", "mesh.fsdp", "sharding.rules", "sharding.min_size",
    # Rematerialisation recomputes the same values instead of storing them.
    "model.remat",
)
# With D devices on the data axis, a step takes D batches; these must fall on its last one.
DATA_PARALLEL_MULTIPLES = ("accumulate_bs", "log_interval", "val_interval")
POSITIVE_INTS = (
    "accumulate_bs", "checkpoint_interval", "val_interval", "log_interval", "val_steps", "eval_chunk",
    "batch_size", "val_batch_size", "data.n_edits", "data.max_length", "mend.rank", "ft.max_edit_steps",
    "ft.locality_batch_size", "ft.locality_pool_size", "enn.n_edit_steps",
)
NON_NEGATIVE = ("c_edit", "c_loc", "c_base", "early_stop_patience", "mend.n_hidden")
POSITIVE = ("grad_clip",)


def get(config: ml_collections.ConfigDict, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _has(config, key: str) -> bool:
    try:
        get(config, key)
        return True
    except (KeyError, AttributeError):
        return False


def _bad(key: str, value, expected: str) -> ConfigError:
    return ConfigError(f"--config.{key}={value!r}: {expected}")


# Keys that take one of a few names.
CHOICES = {"model.dtype": tuple(DTYPES), "model.remat": tuple(REMAT_POLICIES), "opt_mu_dtype": tuple(DTYPES)}


def check_model_keys(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for a model key outside its choices, before the model is loaded."""
    for key, allowed in CHOICES.items():
        if _has(config, key) and get(config, key) not in allowed:
            raise _bad(key, get(config, key), f"must be one of {', '.join(allowed)}")


def validate(config: ml_collections.ConfigDict, trains: bool = True) -> None:
    """Raises ConfigError for values that would fail (or mean nothing) only after the model is built.

    `trains`: the algorithm meta-trains (FT does not, so its schedule keys do not matter).
    """
    check_model_keys(config)
    check_finite_floats(config)
    for key in POSITIVE_INTS:
        if _has(config, key):
            value = get(config, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _bad(key, value, "must be a positive integer")
    for key in NON_NEGATIVE + POSITIVE:
        if _has(config, key):
            value = get(config, key)
            if not _is_number(value) or value < 0 or (key in POSITIVE and value == 0):
                raise _bad(key, value, "must be a positive number" if key in POSITIVE else "must be a number >= 0")
    for key in ("lr", "edit_lr", "lr_lr"):
        value = config.get(key)
        if value is not None and (not _is_number(value) or value < 0):
            raise _bad(key, value, "a learning rate must be a number >= 0")
    if config.final_eval_steps == 0 or config.final_eval_steps < -1:
        raise _bad("final_eval_steps", config.final_eval_steps, "must be a positive number of batches, or -1 for all")
    if not 0 < config.data.loc_pct <= 100:
        raise _bad("data.loc_pct", config.data.loc_pct, "must be a percentage in (0, 100]")
    if config.data.loc_max_length == 0 or config.data.loc_max_length < -1:
        raise _bad("data.loc_max_length", config.data.loc_max_length,
                   "must be a positive number of tokens, or -1 for the model's position table")
    if not 0 < config.max_skipped_fraction <= 1:
        raise _bad("max_skipped_fraction", config.max_skipped_fraction, "must be a fraction in (0, 1]")
    if trains and not config.eval_only and (isinstance(config.max_iters, bool) or config.max_iters < 1):
        raise _bad(
            "max_iters", config.max_iters,
            "must be >= 1: with no training step, MEND's normalisation statistics are empty and the "
            "editor's edits mean nothing. To evaluate a trained run, pass its --workdir with "
            "--config.eval_only=True",
        )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_finite_floats(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for any NaN or inf in the config: `value < 0` is False for NaN, and a NaN
    learning rate would train a NaN editor."""
    for key, value in flatten(config.to_dict()).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise _bad(key, value, "must be a finite number (NaN and inf are not)")


def check_data_parallel(config: ml_collections.ConfigDict, n_data: int) -> None:
    """Raises ConfigError unless the schedule's windows and events fall on the last batch of a
    data-parallel step (batches 1..D, D+1..2D, ...: data_parallel.py)."""
    if n_data == 1:
        return
    for key in DATA_PARALLEL_MULTIPLES:
        if get(config, key) % n_data:
            raise _bad(key, get(config, key), f"must be a multiple of the mesh's data axis ({n_data} devices, "
                       "each taking one batch of a step), or set --config.mesh.data to a divisor of it")


def flatten(tree: Dict, prefix: str = "") -> Dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


# Keys added after runs were first saved, with the value that older runs had in effect: a saved
# config without them resumes as if it had that value.
ADDED_KEYS = {"data.world": "default", "opt_mu_dtype": "float32", "data.facts.relations": [],
              "data.facts.n_cities": 1000, "data.facts.max_neighbors": 10, "data.length_buckets": [],
              "data.loc_neighbors": 0}


def differences(saved: Dict, current: Dict) -> List[Tuple[str, Any, Any]]:
    """(key, saved value, current value) for every non-resumable key that differs."""
    new = flatten(current)
    old = {**{k: v for k, v in ADDED_KEYS.items() if k in new}, **flatten(saved)}
    keys = sorted(set(old) | set(new))
    return [(k, old.get(k), new.get(k)) for k in keys if k not in RESUMABLE_KEYS and old.get(k) != new.get(k)]


def describe(diffs: List[Tuple[str, Any, Any]], limit: int = 8) -> str:
    shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diffs[:limit])
    more = f" (and {len(diffs) - limit} more)" if len(diffs) > limit else ""
    return shown + more


def config_path(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints", "config.json")


def save(workdir: str, config: ml_collections.ConfigDict) -> None:
    write_json_atomically(config_path(workdir), config.to_dict(), indent=1, sort_keys=True, default=str)


def load(workdir: str):
    """The config the workdir's run was started with, or None if it has none."""
    path = config_path(workdir)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_resume(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError if `workdir` holds a run whose config differs in a non-resumable key."""
    saved = load(workdir)
    if saved is None:
        return
    current = json.loads(json.dumps(config.to_dict(), default=str))
    diffs = differences(saved, current)
    if diffs:
        raise ConfigError(
            f"{workdir} holds a run with another config, which resuming would continue with the new "
            f"values: {describe(diffs)}. Start the new run in a new --workdir (only "
            f"{', '.join(RESUMABLE_KEYS)} may change on resume)"
        )
