"""Named sizes of the embedded world (`config.data.world`): which facts and which GPT-2.

"default" is the world of the main command. "small" has a quarter of its subjects and a
64-wide GPT-2 with the same four layers (so the same inner params), and builds in about
two minutes on two CPU cores: for notebooks, smoke runs and CI, not for figures.
"""
from typing import Tuple

from mend_jax.world.facts import WorldConfig
from mend_jax.world.pretrain import PretrainConfig

PRESETS = {
    "default": (WorldConfig(), PretrainConfig()),
    "small": (
        WorldConfig(n_countries=4, cities_per_country=2, n_languages=3, n_people=16, n_companies=4),
        PretrainConfig(n_embd=64, n_head=2, warmup_steps=50, eval_every=50),
    ),
}


def preset(name: str) -> Tuple[WorldConfig, PretrainConfig]:
    """(world config, GPT-2 pretraining config) of a named world."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"data.world must be one of {sorted(PRESETS)}, got {name!r}") from None
