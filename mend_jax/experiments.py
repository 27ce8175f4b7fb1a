"""Builds an `Experiment` (model, editor, data) from a config, for the tasks gen, qa and fc."""
import dataclasses
import os
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import ml_collections

from mend_jax import config_lib, editors, models
from mend_jax.config_checks import ConfigError, check_model_keys
from mend_jax.data import counterfact, model_samples, real_facts, tfds_source
from mend_jax.data.fever import FeverDataset, fever_path
from mend_jax.data.gen import GenDataset, find_wikitext, load_self_sample, self_sample_path
from mend_jax.data.io import DataNotFoundError
from mend_jax.data.nq import QaPairs, load_nq, nq_path
from mend_jax.data.zsre import SHIFT_LABELS, Seq2SeqEncoder, ZsreDataset, zsre_path
from mend_jax.editors.base import EditTarget
from mend_jax.models.layers import DTYPES
from mend_jax.models.bert import has_classifier
from mend_jax.trainer import Experiment



def _world_preset(config):
    """(WorldConfig, PretrainConfig) of the world `data.world` names."""
    from mend_jax.world import preset

    return preset(config_lib.world_name(config))


def _resolve_world(config):
    """(model dir, tokenizer dir, self_sample dir, (train loc, valid loc)) of the embedded world."""
    from mend_jax.world import ensure_world

    world = ensure_world(*_world_preset(config))
    loc = os.path.join(world.gen_dir, "loc")
    return world.model_dir, world.model_dir, world.gen_dir, (os.path.join(loc, "train.txt"), os.path.join(loc, "valid.txt"))


def load_model_and_tokenizer(config: ml_collections.ConfigDict, model_dir: str, tokenizer_dir: str):
    check_model_keys(config)
    module, params = models.load_pretrained(model_dir, dtype=DTYPES[config.model.dtype], remat=config.model.remat)
    tokenizer = models.load_tokenizer(tokenizer_dir)
    tokenizer.padding_side = "right"
    if config.model.pad_token_fix and tokenizer.pad_token_id is None:
        check_vocabulary(tokenizer, module.config, tokenizer_dir)  # before both grow by a [PAD] row
        module, params = models.add_pad_token(module, params, tokenizer)
    return module, params, tokenizer


# The config keys that point at each task's data.
DATA_KEYS = {"gen": "--config.data.path / --config.data.loc_path", "qa": "--config.data.path / --config.data.nq_path",
             "fc": "--config.data.path", "counterfact": "--config.data.path"}


def _missing_data_hint(what: str, task: str = "gen") -> str:
    return (
        f"{what} Download the reference's data (the Google Drive folder linked in the MEND README), "
        f"unzip it under data/, or set {DATA_KEYS[task]}. "
        "To run with no download at all, use the embedded default: "
        f"python -m mend_jax.train --config=configs/{task}.py"
    )


def _tfds_name(config: ml_collections.ConfigDict) -> Optional[str]:
    return tfds_source.parse_loc_source(config.data.loc_source)


def locality_files(loc_path: str) -> Tuple[str, str]:
    """(train, valid) locality text: a wikitext-103 raw directory, or one text file for both."""
    if os.path.isdir(loc_path):
        loc_files = find_wikitext(loc_path)
        return loc_files["train"], loc_files["valid"]
    if os.path.isfile(loc_path):
        return loc_path, loc_path
    raise FileNotFoundError(_missing_data_hint(f"locality text {loc_path!r} does not exist."))


def _tfds_passages(config, name: str, split: str, pct: float = 100.0):
    return tfds_source.passages(
        name, tfds_source.tfds_split(split, pct), data_dir=config.data.tfds_data_dir or None,
        max_passages=config.data.tfds_max_passages,
    )


# Files from which transformers builds a tokenizer (any one of these sets).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json + merges.txt", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")


def check_vocabulary(tokenizer, model_config, tokenizer_dir: str) -> None:
    """Refuses a tokenizer that does not fit the model's embedding table.

    transformers builds a tokenizer of a handful of special tokens when a directory has
    no vocabulary files; a run on it trains on nonsense and ends at chance. A model's table
    may be a little larger than its vocabulary (padded to a multiple of 64 or 128), never smaller.
    """
    n_tokens, table = len(tokenizer), getattr(model_config, "vocab_size", None)
    slack = max(table // 100, min(128, table // 10)) if table else 0  # T5: 32,100 tokens, 32,128 rows
    if table is None or table - slack <= n_tokens <= table:
        return
    present = sorted(os.listdir(tokenizer_dir)) if os.path.isdir(tokenizer_dir) else []
    has_vocabulary = any(name in present for name in ("tokenizer.json", "vocab.json", "vocab.txt", "spiece.model",
                                                       "sentencepiece.bpe.model"))
    advice = ("the tokenizer is another model's: point --config.model.tokenizer at the model's own" if has_vocabulary
              else f"a tokenizer needs one of {', '.join(TOKENIZER_FILES)}: copy the model's tokenizer files "
                   "there, or set --config.model.tokenizer")
    raise ConfigError(
        f"the tokenizer of {tokenizer_dir!r} has {n_tokens} tokens but the model's embedding has {table} rows; "
        f"the directory holds {', '.join(present) or 'no files'}, so {advice}"
    )


def check_model_inputs(config, module, tokenizer, tokenizer_dir: str) -> None:
    """The tokenizer fits the embedding and every padded length fits the position table."""
    check_vocabulary(tokenizer, module.config, tokenizer_dir)
    check_lengths(config, module.config)


def check_lengths(config, model_config) -> None:
    """Every padded length the data produces must fit the model's position table: beyond it,
    every batch is non-finite (or silently wrong) rather than an error."""
    limit = max_positions(model_config)
    if limit is None:
        return
    lengths = {"data.max_length": config.data.max_length}
    if config.task == "gen" and config.data.loc_max_length > 0:
        lengths["data.loc_max_length"] = config.data.loc_max_length
    if config.task == "qa":
        lengths["data.target_max_length"] = config.data.target_max_length
    for key, length in lengths.items():
        if length > limit:
            raise ConfigError(
                f"--config.{key}={length} is longer than the model's position table ({limit} positions, "
                f"{config.model.name}); set it to at most {limit}"
            )


def max_positions(model_config) -> Optional[int]:
    """The longest input the model's position table allows (None: relative positions, as T5)."""
    for key in ("n_positions", "max_position_embeddings"):
        if getattr(model_config, key, None):
            return int(getattr(model_config, key))
    return None


def locality_limit(config, model_config) -> int:
    """gen's locality cut: data.loc_max_length, or with -1 (the reference: passages are not cut)
    the model's position table."""
    if config.data.loc_max_length < 0:
        return max_positions(model_config)
    return config.data.loc_max_length


def gen_datasets(config, tokenizer, data_dir: str, train_loc: str, val_loc: str,
                 loc_max_length: int) -> Tuple[GenDataset, GenDataset]:
    """train_loc/val_loc are text files, or None with data.loc_source=tfds:NAME."""
    n_edits = config.data.n_edits
    common = dict(
        max_length=config.data.max_length, loc_max_length=loc_max_length,
        loc_buckets=tuple(config.data.loc_length_buckets),
        n_edits=n_edits, seed=config.seed, loc_pool=config.data.loc_pool,
    )
    train_edits, val_edits = (self_sample_path(data_dir, split) for split in ("train", "valid"))
    name = _tfds_name(config)
    if name is not None:
        train = GenDataset(load_self_sample(train_edits), _tfds_passages(config, name, "train", config.data.loc_pct),
                           tokenizer, n_loc=config.batch_size - n_edits, **common)
        val = GenDataset(load_self_sample(val_edits), _tfds_passages(config, name, "valid"), tokenizer,
                         n_loc=config.val_batch_size - n_edits, **common)
        return train, val
    train = GenDataset.from_files(
        train_edits, train_loc, tokenizer, pct=config.data.loc_pct, n_loc=config.batch_size - n_edits, **common,
    )
    val = GenDataset.from_files(val_edits, val_loc, tokenizer, n_loc=config.val_batch_size - n_edits, **common)
    return train, val


def _target(config, module, params, shift_labels: bool) -> Tuple[EditTarget, Any]:
    """(the EditTarget of `model.inner_params`, the params with those matrices in float32).

    A bf16 model keeps its edited matrices in float32 (and EditableDense multiplies by them in
    float32): an edit adds a small ΔW, and most of its entries are below bf16's resolution of W.
    """
    inner_names = tuple(config.model.inner_params)
    try:
        inner_paths = tuple(models.inner_param_paths(module, params, inner_names))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"--config.model.inner_params: {str(e).strip(chr(34))}") from e
    target = EditTarget(module=module, inner_paths=inner_paths, inner_names=inner_names, shift_labels=shift_labels)
    return target, models.inner_in_float32(params, inner_paths)


def _files_model(config) -> Tuple[str, str]:
    return config.model.name, config.model.tokenizer or config.model.name


def _require_dir(path: str, what: str, task: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(_missing_data_hint(f"{what} {path!r} does not exist.", task))


@dataclasses.dataclass
class TaskModel:
    """The model an experiment edits, with what its task needs to encode edits for it."""

    task: str
    target: EditTarget
    params: Any
    tokenizer: Any
    encoder: Optional[Seq2SeqEncoder] = None  # qa: questions and answers for T5 or BART


# Each task resolves where its model (and, with with_data, its data) lie, loads the model,
# then builds its data sets. Data paths are checked before the model loads, so a missing
# download fails at once.

def _gen_sources(config, with_data: bool) -> Dict[str, Any]:
    if config.data.source == "world":
        model_dir, tokenizer_dir, data_dir, loc_files = _resolve_world(config)
        return {"model": model_dir, "tokenizer": tokenizer_dir, "data": data_dir, "loc_files": loc_files}
    model_dir, tokenizer_dir = _files_model(config)
    sources = {"model": model_dir, "tokenizer": tokenizer_dir}
    if with_data and config.data.source != "model_samples":  # those depend on the model: _gen_data samples them
        _require_dir(config.data.path, "data.path", "gen")
        loc_files = (None, None) if _tfds_name(config) else locality_files(config.data.loc_path)
        sources.update(data=config.data.path, loc_files=loc_files)
    return sources


def _gen_model(config, sources) -> TaskModel:
    module, params, tokenizer = load_model_and_tokenizer(config, sources["model"], sources["tokenizer"])
    check_model_inputs(config, module, tokenizer, sources["tokenizer"])
    return TaskModel("gen", *_target(config, module, params, shift_labels=True), tokenizer)


def _gen_data(config, model: TaskModel, sources):
    limit = locality_limit(config, model.target.module.config)
    if config.data.source == "model_samples":
        data_dir, train_loc, val_loc = model_samples.ensure_for_config(config, model)
        sources = {**sources, "data": data_dir, "loc_files": (train_loc, val_loc)}
    return gen_datasets(config, model.tokenizer, sources["data"], *sources["loc_files"], limit)


def _gen_drawdown(m):
    return m["perplexity/post"] - m["perplexity/pre"]


def _accuracy_drawdown(m):
    return m["acc/pre"] - m["acc/post"]


def qa_locality(config, nq_dir: str, split: str) -> Optional[QaPairs]:
    """NQ pairs for this split's locality, or None for other zsRE rows.

    As in the reference, NQ serves validation only, unless data.zsre_nq_train is set.
    """
    name = _tfds_name(config)
    if not (config.data.zsre_nq or name) or (split == "train" and not config.data.zsre_nq_train):
        return None
    if name is not None:
        return tfds_source.qa_pairs(name, tfds_source.tfds_split(split),
                                    data_dir=config.data.tfds_data_dir or None)
    return load_nq(nq_path(nq_dir, split))


def _task_world_sources(ensure) -> Dict[str, Any]:
    world = ensure()
    return {"model": world.model_dir, "tokenizer": world.model_dir, "data": world.data_dir, "nq": world.data_dir}


def _files_sources(config, task: str, with_data: bool) -> Dict[str, Any]:
    model_dir, tokenizer_dir = _files_model(config)
    sources = {"model": model_dir, "tokenizer": tokenizer_dir}
    if with_data:
        _require_dir(config.data.path, "data.path", task)
        sources.update(data=config.data.path, nq=config.data.get("nq_path") or config.data.path)
    return sources


def _qa_sources(config, with_data: bool) -> Dict[str, Any]:
    if config.data.source == "world":
        from mend_jax.world.task_models import ensure_qa_world

        return _task_world_sources(ensure_qa_world)
    return _files_sources(config, "qa", with_data)


def _qa_model(config, sources) -> TaskModel:
    module, params, tokenizer = load_model_and_tokenizer(config, sources["model"], sources["tokenizer"])
    model_type = module.config.model_type
    if model_type not in ("t5", "bart"):
        raise ValueError(
            f"the qa task edits seq2seq models (t5, bart), but {sources['model']} is a {model_type!r} model"
        )
    check_model_inputs(config, module, tokenizer, sources["tokenizer"])
    style = "bart" if model_type == "bart" else "t5"
    encoder = Seq2SeqEncoder(
        tokenizer, style=style, max_length=config.data.max_length, target_max_length=config.data.target_max_length,
        decoder_start_token_id=getattr(module.config, "decoder_start_token_id", None),
    )
    target, params = _target(config, module, params, SHIFT_LABELS[style])
    return TaskModel("qa", target, params, tokenizer, encoder=encoder)


def _qa_data(config, model: TaskModel, sources):
    common = dict(n_edits=config.data.n_edits, seed=config.seed, loc_pool=config.data.loc_pool)
    return tuple(
        ZsreDataset.from_files(zsre_path(sources["data"], split), model.encoder,
                               nq=qa_locality(config, sources["nq"], split), n_loc=size - config.data.n_edits,
                               **common)
        for split, size in (("train", config.batch_size), ("valid", config.val_batch_size))
    )


def _fc_sources(config, with_data: bool) -> Dict[str, Any]:
    if _tfds_name(config):
        raise ValueError("data.loc_source does not apply to fc: its locality examples are other FEVER claims")
    if config.data.source == "world":
        from mend_jax.world.task_models import ensure_fc_world

        return _task_world_sources(ensure_fc_world)
    return _files_sources(config, "fc", with_data)


def _fc_model(config, sources) -> TaskModel:
    module, params, tokenizer = load_model_and_tokenizer(config, sources["model"], sources["tokenizer"])
    cfg = module.config
    if cfg.model_type != "bert" or not has_classifier(cfg) or cfg.num_labels != 1:
        raise ValueError(
            f"the fc task edits a BERT classifier with one logit, but {sources['model']} is a {cfg.model_type!r} "
            "model" + (f" with num_labels={cfg.num_labels}" if cfg.model_type == "bert" else "")
            + "; convert the reference's FC_model.ckpt with python -m mend_jax.convert_lightning (--model-type bert)"
        )
    check_model_inputs(config, module, tokenizer, sources["tokenizer"])
    return TaskModel("fc", *_target(config, module, params, shift_labels=False), tokenizer)


def _fc_data(config, model: TaskModel, sources):
    common = dict(max_length=config.data.max_length, n_edits=config.data.n_edits, seed=config.seed)
    return tuple(
        FeverDataset.from_files(fever_path(sources["data"], split), model.tokenizer,
                                n_loc=size - config.data.n_edits, **common)
        for split, size in (("train", config.batch_size), ("valid", config.val_batch_size))
    )


def _counterfact_sources(config, with_data: bool) -> Dict[str, Any]:
    if config.data.source == "real_facts":  # the splits depend on the model: _counterfact_data builds them
        model_dir, tokenizer_dir = _files_model(config)
        return {"model": model_dir, "tokenizer": tokenizer_dir}
    if config.data.source == "world":
        from mend_jax.world import ensure_counterfact, ensure_world

        world = _world_preset(config)
        model_dir = ensure_world(*world).model_dir
        return {"model": model_dir, "tokenizer": model_dir, "data": ensure_counterfact(*world)}
    model_dir, tokenizer_dir = _files_model(config)
    sources = {"model": model_dir, "tokenizer": tokenizer_dir}
    if with_data:
        if not os.path.exists(config.data.path):
            raise DataNotFoundError(f"data.path {config.data.path!r} does not exist. {counterfact.COUNTERFACT_HINT}. "
                                    "To run with no download: python -m mend_jax.train --config=configs/counterfact.py")
        sources["data"] = config.data.path
    return sources


def _counterfact_model(config, sources) -> TaskModel:
    return dataclasses.replace(_gen_model(config, sources), task="counterfact")


def real_fact_splits(config, model: TaskModel) -> str:
    """The directory of the model's real-fact splits (data/known_facts.py), built on first use."""
    from mend_jax.data import known_facts
    from mend_jax.world import cache_root

    facts = config.data.facts
    return known_facts.ensure_splits(cache_root(), model.target, model.params, model.tokenizer, config.model.name,
                                     tuple(facts.relations), facts.n_cities, config.seed, facts.max_neighbors)


def _counterfact_data(config, model: TaskModel, sources):
    if config.data.source == "real_facts":
        sources = {**sources, "data": real_fact_splits(config, model)}
    splits = counterfact.load_splits(sources["data"], config.data.n_valid_cases)
    return tuple(
        counterfact.CounterFactDataset(cases, model.tokenizer, max_length=config.data.max_length,
                                       length_buckets=config.data.get("length_buckets", ()),
                                       loc_neighbors=config.data.get("loc_neighbors", 0),
                                       n_edits=config.data.n_edits, n_loc=size - config.data.n_edits,
                                       seed=config.seed, source=f"{sources['data']} ({split})")
        for cases, split, size in zip(splits, ("train", "valid"), (config.batch_size, config.val_batch_size))
    )


class _Task(NamedTuple):
    sources: Callable  # (config, with_data) -> where the model and data lie
    model: Callable  # (config, sources) -> TaskModel
    data: Callable  # (config, TaskModel, sources) -> (train, valid)
    drawdown: Callable  # validation metrics -> the task's drawdown


TASKS = {
    "gen": _Task(_gen_sources, _gen_model, _gen_data, _gen_drawdown),
    "qa": _Task(_qa_sources, _qa_model, _qa_data, _accuracy_drawdown),
    "fc": _Task(_fc_sources, _fc_model, _fc_data, _accuracy_drawdown),
    "counterfact": _Task(_counterfact_sources, _counterfact_model, _counterfact_data, _accuracy_drawdown),
}


def check_world_paths(config) -> None:
    """A data path set on a world config would be ignored (the world brings its data): refuse it."""
    if config.data.source != "world":
        return
    world = config_lib.world_name(config)
    _world_preset(config)  # an unknown name fails here, naming the choices
    if world != "default" and config.task not in ("gen", "counterfact"):
        raise ConfigError(f"--config.data.world={world!r}: only gen and counterfact have other worlds than "
                          f"'default'; {config.task}'s world model is built for the default world")
    for key in ("path", "loc_path", "nq_path"):
        if config.data.get(key):
            raise ConfigError(
                f"--config.data.{key}={config.data[key]!r} is set, but data.source is 'world', which uses the "
                f"embedded world's data; add --config.data.source=files (and --config.model.name) to use your "
                f"files, or drop --config.data.{key}"
            )


DATA_SOURCES = ("files", "world", "real_facts", "model_samples")


def check_config(config: ml_collections.ConfigDict) -> None:
    """The checks every experiment passes before a model is loaded."""
    if config.task not in TASKS:
        raise ConfigError(f"--config.task={config.task!r}: not implemented; available: {', '.join(TASKS)}")
    if not tuple(config.model.inner_params):
        raise ConfigError(f"--config.model.inner_params={tuple(config.model.inner_params)!r}: must name at least one "
                          "weight matrix to edit (e.g. the last layers' MLP kernels)")
    if config.batch_size <= config.data.n_edits or config.val_batch_size <= config.data.n_edits:
        raise ConfigError(f"--config.batch_size={config.batch_size}, val_batch_size={config.val_batch_size}: both "
                          f"must exceed data.n_edits={config.data.n_edits} (the rest is locality data)")
    n_loc = min(config.batch_size, config.val_batch_size) - config.data.n_edits
    if not 0 <= config.data.get("loc_neighbors", 0) <= n_loc:
        raise ConfigError(f"--config.data.loc_neighbors={config.data.loc_neighbors}: must be between 0 and the "
                          f"{n_loc} locality rows of a batch (batch_size or val_batch_size - data.n_edits)")
    if config.data.source not in DATA_SOURCES:
        raise ConfigError(f"--config.data.source={config.data.source!r}: must be one of {', '.join(DATA_SOURCES)}")
    if config.data.source == "real_facts":
        if config.task != "counterfact":
            raise ConfigError(f"--config.data.source='real_facts' builds CounterFact cases: it goes with "
                              f"--config.task=counterfact, not {config.task!r}")
        try:
            real_facts.check_relations(config.data.facts.relations or list(real_facts.RELATIONS))
        except real_facts.RealFactsError as e:
            raise ConfigError(f"--config.data.facts.relations={tuple(config.data.facts.relations)!r}: {e}") from None
    if config.data.source == "model_samples" and config.task != "gen":
        raise ConfigError(f"--config.data.source='model_samples' samples the gen experiment's edits and locality "
                          f"text: it goes with --config.task=gen, not {config.task!r}")
    if not config.model.inner_params:
        raise ValueError("model.inner_params is empty: name the matrices to edit, e.g. transformer.h.5.mlp.c_fc.weight")
    check_world_paths(config)


def build_model(config: ml_collections.ConfigDict) -> TaskModel:
    """The model, tokenizer and edit target of `config`, without its data sets (for editing)."""
    check_config(config)
    task = TASKS[config.task]
    return task.model(config, task.sources(config, with_data=False))


def build(config: ml_collections.ConfigDict) -> Experiment:
    check_config(config)
    task = TASKS[config.task]
    sources = task.sources(config, with_data=True)
    model = task.model(config, sources)
    train, val = task.data(config, model, sources)
    editor = editors.make_editor(config, model.target, model.params)
    return Experiment(editor=editor, target=model.target, base_params=model.params, train_data=train, val_data=val,
                      drawdown=task.drawdown)
