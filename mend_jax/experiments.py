"""Builds an `Experiment` (model, editor, data) from a config."""
import os
from typing import Tuple

import jax.numpy as jnp
import ml_collections
import transformers

from mend_jax import editors, models
from mend_jax.data.gen import GenDataset, find_wikitext, self_sample_path
from mend_jax.editors.base import EditTarget
from mend_jax.trainer import Experiment

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _resolve_world():
    """(model dir, tokenizer dir, self_sample dir, (train loc, valid loc)) of the embedded world."""
    from mend_jax.world import ensure_world

    world = ensure_world()
    loc = os.path.join(world.gen_dir, "loc")
    return world.model_dir, world.model_dir, world.gen_dir, (os.path.join(loc, "train.txt"), os.path.join(loc, "valid.txt"))


def load_model_and_tokenizer(config: ml_collections.ConfigDict, model_dir: str, tokenizer_dir: str):
    try:
        dtype = DTYPES[config.model.dtype]
    except KeyError:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {config.model.dtype!r}") from None
    module, params = models.load_pretrained(model_dir, dtype=dtype)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.padding_side = "right"
    if config.model.pad_token_fix and tokenizer.pad_token_id is None:
        module, params = models.add_pad_token(module, params, tokenizer)
    return module, params, tokenizer


def _missing_data_hint(what: str) -> str:
    return (
        f"{what} Download the reference's data (the Google Drive folder linked in the MEND README), "
        "unzip it under data/, or set --config.data.path / --config.data.loc_path. "
        "To run with no download at all, use the embedded default: "
        "python -m mend_jax.train --config=configs/gen.py"
    )


def locality_files(loc_path: str) -> Tuple[str, str]:
    """(train, valid) locality text: a wikitext-103 raw directory, or one text file for both."""
    if os.path.isdir(loc_path):
        loc_files = find_wikitext(loc_path)
        return loc_files["train"], loc_files["valid"]
    if os.path.isfile(loc_path):
        return loc_path, loc_path
    raise FileNotFoundError(_missing_data_hint(f"locality text {loc_path!r} does not exist."))


def gen_datasets(config, tokenizer, data_dir: str, train_loc: str, val_loc: str) -> Tuple[GenDataset, GenDataset]:
    n_edits = config.data.n_edits
    common = dict(
        max_length=config.data.max_length, loc_max_length=config.data.loc_max_length,
        n_edits=n_edits, seed=config.seed, loc_pool=config.data.loc_pool,
    )
    train = GenDataset.from_files(
        self_sample_path(data_dir, "train"), train_loc, tokenizer, pct=config.data.loc_pct,
        n_loc=config.batch_size - n_edits, **common,
    )
    val = GenDataset.from_files(
        self_sample_path(data_dir, "valid"), val_loc, tokenizer, n_loc=config.val_batch_size - n_edits, **common
    )
    return train, val


def build(config: ml_collections.ConfigDict) -> Experiment:
    if config.task != "gen":
        raise ValueError(f"task {config.task!r} is not implemented yet; available: gen")
    if config.batch_size <= config.data.n_edits or config.val_batch_size <= config.data.n_edits:
        raise ValueError("batch_size and val_batch_size must exceed data.n_edits (the rest is locality data)")
    if config.data.source == "world":
        model_dir, tokenizer_dir, data_dir, loc_files = _resolve_world()
    elif config.data.source == "files":
        model_dir, tokenizer_dir = config.model.name, config.model.tokenizer or config.model.name
        data_dir = config.data.path
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(_missing_data_hint(f"data.path {data_dir!r} does not exist."))
        loc_files = locality_files(config.data.loc_path)
    else:
        raise ValueError(f"data.source must be 'files' or 'world', got {config.data.source!r}")
    if not config.model.inner_params:
        raise ValueError("model.inner_params is empty: name the matrices to edit, e.g. transformer.h.5.mlp.c_fc.weight")

    module, params, tokenizer = load_model_and_tokenizer(config, model_dir, tokenizer_dir)
    inner_names = tuple(config.model.inner_params)
    target = EditTarget(
        module=module,
        inner_paths=tuple(models.inner_param_paths(module, params, inner_names)),
        inner_names=inner_names,
        shift_labels=True,
    )
    train, val = gen_datasets(config, tokenizer, data_dir, *loc_files)
    editor = editors.make_editor(config, target, params)
    return Experiment(
        editor=editor, target=target, base_params=params, train_data=train, val_data=val,
        drawdown=lambda m: m["perplexity/post"] - m["perplexity/pre"],
    )
