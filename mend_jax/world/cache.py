"""Builds the world once per configuration into a user cache directory.

``${MEND_JAX_CACHE:-~/.cache/mend_jax}/world-<hash>/`` holds the data sets
(see formats.py), ``model/`` (the pretrained GPT-2 and its tokenizer) and
``world.json``. A build is written into a temporary directory and renamed into
place, so a killed build never leaves a half-written world behind.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Optional

from mend_jax import environment
from mend_jax.data.io import publish_directory
from mend_jax.models import save_pretrained
from mend_jax.world import formats
from mend_jax.world.facts import World, WorldConfig, generate_world
from mend_jax.world.pretrain import PretrainConfig, pretrain
from mend_jax.world.tokenizer import object_token_count, train_tokenizer

FORMAT_VERSION = 3  # bump whenever the files a build writes change
WORLD_JSON = "world.json"
ACCURACY_MEASURE = (
    "teacher-forced argmax of every object token (' Object' and '.') after the prefix, "
    "over all facts (train and valid) x all statement templates, alone and in the gen edits' context"
)


@dataclasses.dataclass(frozen=True)
class WorldArtifacts:
    """Where a built world lies.

    gen_dir holds self_sample/{train,valid}.json and loc/{train,valid}.txt;
    nq_dir holds {train,validation}.json.
    """

    root: str
    gen_dir: str
    zsre_train: str
    zsre_dev: str
    nq_dir: str
    fever_train: str
    fever_dev: str
    model_dir: str
    tokenizer_file: str
    n_tokens: int  # the gen edit's target length: " Object" and "."
    fact_accuracy: float


def cache_root() -> str:
    return os.environ.get("MEND_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mend_jax")


def world_key(config: WorldConfig, pretrain_config: PretrainConfig) -> str:
    spec = {"format": FORMAT_VERSION, "world": dataclasses.asdict(config), "pretrain": dataclasses.asdict(pretrain_config)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def ensure_world(
    config: Optional[WorldConfig] = None,
    pretrain_config: Optional[PretrainConfig] = None,
    progress: bool = True,
) -> WorldArtifacts:
    """Returns the cached world for these configs, building it first if it is missing."""
    config = config or WorldConfig()
    pretrain_config = pretrain_config or PretrainConfig()
    root = os.path.join(cache_root(), f"world-{world_key(config, pretrain_config)}")
    if not os.path.exists(os.path.join(root, WORLD_JSON)):
        _build_atomically(root, config, pretrain_config, progress)
    return _artifacts(root)


def _build_atomically(root: str, config: WorldConfig, pretrain_config: PretrainConfig, progress: bool) -> None:
    if os.path.isdir(root):  # only a hand-made directory lacks world.json: publishing never leaves one
        shutil.rmtree(root)
    publish_directory(root, lambda tmp: _build(tmp, generate_world(config), pretrain_config, progress), WORLD_JSON)


def _build(out: str, world: World, pretrain_config: PretrainConfig, progress: bool) -> None:
    start = time.time()
    loc = {split: formats.loc_split(world, split) for split in formats.SPLITS}
    tok = train_tokenizer(formats.all_texts(world))
    n_tokens = object_token_count(tok, world.facts)
    formats.write_all(world, out, n_tokens)
    result = pretrain(tok, formats.fact_texts(world), n_tokens, loc["train"] + loc["valid"], pretrain_config, progress)
    model_dir = os.path.join(out, "model")
    save_pretrained(result.module, result.params, model_dir)
    tok.model_max_length = pretrain_config.n_positions  # the model has no position past these
    tok.save_pretrained(model_dir)
    info = {
        "format_version": FORMAT_VERSION,
        "world_config": dataclasses.asdict(world.config),
        "pretrain_config": dataclasses.asdict(pretrain_config),
        "n_facts": {split: len(world.split(split)) for split in formats.SPLITS},
        "n_tokens": n_tokens,
        "vocab_size": len(tok),
        "fact_accuracy": result.fact_accuracy,
        "fact_accuracy_measure": ACCURACY_MEASURE,
        "pretrain_steps": result.steps,
        "build_seconds": round(time.time() - start, 1),
        "environment": environment.describe(),  # another CPU or library version builds other weights
    }
    with open(os.path.join(out, WORLD_JSON), "w") as f:
        json.dump(info, f, indent=1)


def _artifacts(root: str) -> WorldArtifacts:
    with open(os.path.join(root, WORLD_JSON)) as f:
        info = json.load(f)
    path = lambda template, split: os.path.join(root, template.format(split))
    return WorldArtifacts(
        root=root,
        gen_dir=os.path.join(root, "gen"),
        zsre_train=path(formats.ZSRE, "train"),
        zsre_dev=path(formats.ZSRE, "dev"),
        nq_dir=os.path.join(root, "nq"),
        fever_train=path(formats.FEVER, "train"),
        fever_dev=path(formats.FEVER, "dev"),
        model_dir=os.path.join(root, "model"),
        tokenizer_file=os.path.join(root, "model", "tokenizer.json"),
        n_tokens=info["n_tokens"],
        fact_accuracy=info["fact_accuracy"],
    )


def ensure_counterfact(config: Optional[WorldConfig] = None, pretrain_config: Optional[PretrainConfig] = None,
                       progress: bool = True) -> str:
    """The world's facts as CounterFact files, ``<world>/counterfact/{train,valid}.json``.

    Written on first use beside a built world (worlds cached before CounterFact lack them),
    into a temporary directory renamed into place.
    """
    config = config or WorldConfig()
    root = ensure_world(config, pretrain_config, progress).root
    out = os.path.join(root, os.path.dirname(formats.COUNTERFACT))
    if not all(os.path.isfile(os.path.join(root, formats.COUNTERFACT.format(s))) for s in formats.SPLITS):
        tmp = tempfile.mkdtemp(prefix=".counterfact-", dir=root)
        try:
            formats.write_counterfact(generate_world(config), tmp)
            os.chmod(os.path.join(tmp, "counterfact"), 0o755)
            try:
                os.rename(os.path.join(tmp, "counterfact"), out)
            except OSError:
                if not os.path.isdir(out):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
