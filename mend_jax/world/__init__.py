"""A small fictional world of facts and a tiny GPT-2 that knows them: mend-jax's offline default.

`ensure_world()` generates the facts, writes them in the reference's data formats,
trains a tokenizer and pretrains the model, all once per configuration into the
user cache (``$MEND_JAX_CACHE``, else ``~/.cache/mend_jax``); later calls return at once.
"""
from mend_jax.world.cache import WorldArtifacts, cache_root, ensure_counterfact, ensure_world
from mend_jax.world.facts import RELATIONS, Fact, Relation, World, WorldConfig, generate_world
from mend_jax.world.presets import PRESETS, preset
from mend_jax.world.pretrain import PretrainConfig
from mend_jax.world.tokenizer import load_tokenizer

__all__ = [
    "PRESETS",
    "RELATIONS",
    "Fact",
    "PretrainConfig",
    "Relation",
    "World",
    "WorldArtifacts",
    "WorldConfig",
    "cache_root",
    "ensure_counterfact",
    "ensure_world",
    "generate_world",
    "load_tokenizer",
    "preset",
]
