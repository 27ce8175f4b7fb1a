"""Flax models that load Hugging Face checkpoints, and the glue MEND needs."""
from mend_jax.models.api import (
    add_pad_token,
    build_module,
    init_params,
    inner_in_float32,
    inner_param_paths,
    last_mlp_matrices,
    load_pretrained,
    load_tokenizer,
    save_pretrained,
)
from mend_jax.models.checkpoint_io import CheckpointError
from mend_jax.models.convert import get_path
from mend_jax.models.factors import inner_factors
from mend_jax.models.registry import known_model_types

__all__ = [
    "CheckpointError",
    "add_pad_token",
    "build_module",
    "get_path",
    "init_params",
    "inner_in_float32",
    "inner_factors",
    "inner_param_paths",
    "known_model_types",
    "last_mlp_matrices",
    "load_pretrained",
    "load_tokenizer",
    "save_pretrained",
]
