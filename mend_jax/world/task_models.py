"""The embedded world's models for qa and fc: a tiny T5 that answers its questions
and a tiny BERT classifier that checks its claims.

`ensure_qa_world()` / `ensure_fc_world()` write the world's qa and fc data and
train the model once per configuration, into ``<cache>/world-qa-<hash>/`` (or
``world-fc-``) with ``data/`` (zsre/, nq/, fever/ as formats.py lays them out),
``model/`` and ``task_model.json``, renamed into place when complete.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Callable, Dict, Iterable, Sequence

import jax
import numpy as np
import optax
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from mend_jax.progress import progress as progress_bar
from mend_jax.world import cache as world_cache
from mend_jax.world import formats
from mend_jax.world.facts import WorldConfig, generate_world
from mend_jax.world.pretrain import warmup_cosine_adamw

FORMAT_VERSION = 1  # bump whenever what a build writes changes
INFO_JSON = "task_model.json"
_MAX_VOCAB = 1 << 16  # never reached: merging stops when every word is one token


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How a task model is trained until it knows the world."""

    seed: int = 0
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    batch_size: int = 64
    max_steps: int = 3000
    eval_every: int = 100
    target_accuracy: float = 0.99  # stop once reached
    min_accuracy: float = 0.9  # below this after max_steps the model is unusable: fail


@dataclasses.dataclass(frozen=True)
class TaskWorld:
    """A task's data (zsre/, nq/, fever/ under data_dir) and its pretrained model."""

    data_dir: str
    model_dir: str
    accuracy: float  # of the pretrained model on every question or claim of the world
    info: Dict


def word_tokenizer(texts: Iterable[str], special_tokens: Sequence[str], template: str,
                   **named_specials) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE trained until each word of `texts` is one token (with its leading space).

    `template` is the post-processor's single-sequence template, e.g. "$A </s>";
    `named_specials` name the roles of the special tokens (pad_token="<pad>", ...).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_MAX_VOCAB, min_frequency=1, special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, tok.token_to_id(t)) for t in special_tokens if t in template],
    )
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **named_specials)


def fit(params, loss_fn: Callable, accuracy_fn: Callable, n_examples: int, batch_fn: Callable,
        cfg: FitConfig, desc: str, progress: bool):
    """Trains `params` on minibatches `batch_fn(indices)` with AdamW until `accuracy_fn(params)`
    reaches the target; returns (params, accuracy, steps)."""
    optimizer = warmup_cosine_adamw(cfg)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(cfg.seed)
    accuracy, steps = 0.0, 0
    bar = progress_bar(cfg.max_steps, desc, enabled=progress)
    for steps in range(1, cfg.max_steps + 1):
        idx = rng.choice(n_examples, min(cfg.batch_size, n_examples), replace=False)
        params, opt_state, loss = step(params, opt_state, batch_fn(idx))
        bar.update(1)
        if steps % cfg.eval_every == 0 or steps == cfg.max_steps:
            accuracy = accuracy_fn(params)
            bar.set_postfix(loss=f"{float(loss):.3f}", acc=f"{accuracy:.3f}")
            if accuracy >= cfg.target_accuracy:
                break
    bar.close()
    if accuracy < cfg.min_accuracy:
        raise RuntimeError(
            f"{desc}: the model is right on only {accuracy:.1%} of the world after {steps} steps "
            f"(needs {cfg.min_accuracy:.0%}); raise FitConfig.max_steps or the model size"
        )
    return params, accuracy, steps


def _ensure(task: str, spec: Dict, build: Callable[[str, str], Dict], progress: bool) -> TaskWorld:
    """The cached data and model for `spec`; `build(data_dir, model_dir) -> info` trains the model.

    Only the world's facts and their qa/fc files are needed, not its GPT-2, so
    this writes them itself (with the world's own writers) instead of calling
    `ensure_world`, which would pretrain the GPT-2 first.
    """
    world_config = WorldConfig()
    spec = {"format": FORMAT_VERSION, "world_format": world_cache.FORMAT_VERSION,
            "world": dataclasses.asdict(world_config), **spec}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    root = os.path.join(world_cache.cache_root(), f"world-{task}-{key}")
    if not os.path.exists(os.path.join(root, INFO_JSON)):
        os.makedirs(os.path.dirname(root), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}-", dir=os.path.dirname(root))
        try:
            start = time.time()
            formats.write_qa_and_fc(generate_world(world_config), os.path.join(tmp, "data"))
            info = build(os.path.join(tmp, "data"), os.path.join(tmp, "model"))
            info.update(spec=spec, build_seconds=round(time.time() - start, 1))
            with open(os.path.join(tmp, INFO_JSON), "w") as f:
                json.dump(info, f, indent=1)
            os.chmod(tmp, 0o755)  # mkdtemp's 0o700 would hide it from other users
            try:
                os.rename(tmp, root)
            except OSError:
                if not os.path.exists(os.path.join(root, INFO_JSON)):
                    raise  # otherwise another process finished the same build first
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with open(os.path.join(root, INFO_JSON)) as f:
        info = json.load(f)
    return TaskWorld(os.path.join(root, "data"), os.path.join(root, "model"), info["accuracy"], info)


def ensure_qa_world(progress: bool = True) -> TaskWorld:
    from mend_jax.world import pretrain_seq2seq

    cfg, fit_cfg = pretrain_seq2seq.T5Spec(), pretrain_seq2seq.FIT
    spec = {"t5": dataclasses.asdict(cfg), "fit": dataclasses.asdict(fit_cfg)}
    return _ensure("qa", spec, lambda data, out: pretrain_seq2seq.build(data, out, cfg, fit_cfg, progress), progress)


def ensure_fc_world(progress: bool = True) -> TaskWorld:
    from mend_jax.world import pretrain_classifier

    cfg, fit_cfg = pretrain_classifier.BertSpec(), pretrain_classifier.FIT
    spec = {"bert": dataclasses.asdict(cfg), "fit": dataclasses.asdict(fit_cfg)}
    return _ensure("fc", spec, lambda data, out: pretrain_classifier.build(data, out, cfg, fit_cfg, progress), progress)
