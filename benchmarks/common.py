"""What the benchmark scripts share: loading an experiment config and applying overrides."""
import json
import os

from mend_jax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(experiment: str, arg: str = "world"):
    """configs/`experiment`.py's get_config(arg), as `--config=configs/EXPERIMENT.py:ARG` gives it."""
    return config_lib.config_module(os.path.join(REPO, "configs", f"{experiment}.py")).get_config(arg)


def override(config, values: dict):
    """Sets dotted keys ("ft.locality") in place; unknown keys raise, as on the command line."""
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"unknown config key {key!r}")
        node[leaf] = value
    return config


def parse_overrides(items) -> dict:
    """`KEY=VALUE` strings (the scripts' --set) as {key: value}, values parsed as JSON when they can be."""
    values = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return values


def shorten(config, max_iters):
    """Fewer meta-training steps, with at least four validations on the way."""
    if max_iters is not None:
        config.max_iters = max_iters
        config.val_interval = min(config.val_interval, max(max_iters // 4, 1))
        config.checkpoint_interval = min(config.checkpoint_interval, config.val_interval)
        config.early_stop_patience = max(config.early_stop_patience, max_iters)
    return config
