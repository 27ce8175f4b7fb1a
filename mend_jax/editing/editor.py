"""`Editor`: a trained editor as a tool. Apply it to new facts, see before and after,
export the edited model for `transformers`.

    from mend_jax import Editor
    ed = Editor.from_run("runs/gen_mend_world")
    result = ed.edit(prompts=[...], target_new=[...], rephrase_prompts=[...], locality_prompts=[...])
    result.metrics, result.before, result.after, result.history
    ed.save_pretrained("edited/")

Every edit() call starts from the original model (for ENN, the base it was trained
with). Edits are applied in batches of `batch_size` (all at once by default), batch t
computed on the model already edited by batches 1..t-1; `sequential=True` is
`batch_size=1`. "before" is always the original model, never a partly edited one, and
locality always compares with the original model. The metrics are defined in the
README, "Editing with a trained editor".
"""
import dataclasses
import json
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence

import jax
import ml_collections
import numpy as np

from mend_jax import config_checks, config_lib, editors, experiments, losses
from mend_jax.editing import editor_files, outputs
from mend_jax.data.counterfact import CounterFactCase
from mend_jax.editing.codecs import make_codec
from mend_jax.editing.counterfact_scores import (
    Scorer, case_scores, concat_case_scores, neighbor_reference, summarize_case_scores)
from mend_jax.editing.requests import EditInputError, EditRequests, check_positive_int, make_requests
from mend_jax.editors.base import needs_training
from mend_jax.editors.train_base import TrainableBase
from mend_jax.forwarding import jit_forwarding_inputs

DEFAULT_NEW_TOKENS = 8
# apply() warns when a step holds more than this many times the edits per step the editor trained with.
FAR_BEYOND_TRAINING = 4


class EditScaleWarning(editor_files.EditorWarning):
    """More edits per step than the editor was meta-trained with."""


class NoTrainedEditor(FileNotFoundError):
    """A run directory without a trained editor to apply."""


@dataclasses.dataclass
class EditResult:
    """What one edit() call did. `before`/`after`: one dict per edit (prompt, target,
    completion, p_target, success); `history`: one dict per applied batch."""

    metrics: Dict[str, Optional[float]]
    before: List[Dict[str, Any]]
    after: List[Dict[str, Any]]
    history: List[Dict[str, Any]]
    params: Any = dataclasses.field(repr=False)  # the edited model (None for independent edits)
    # (rows, model) pairs: which edited model each edit was scored on.
    owners: List[Any] = dataclasses.field(default_factory=list, repr=False)
    # edit_counterfact: each CounterFact measure per case, after the edits (NaN where a case has no such prompt).
    case_scores: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    def to_json(self) -> Dict[str, Any]:
        return {"metrics": self.metrics, "before": self.before, "after": self.after, "history": self.history}


def _rows(batch, rows: slice):
    return jax.tree_util.tree_map(lambda x: x[rows], batch)


class Editor:
    def __init__(self, config: ml_collections.ConfigDict, model: experiments.TaskModel, editor, params, stats,
                 max_new_tokens: int = DEFAULT_NEW_TOKENS):
        check_positive_int("max_new_tokens", max_new_tokens)
        editor_files.check_finite(params, stats)
        self.config, self.model, self.editor = config, model, editor
        self.params, self.stats = params, stats
        trains_base = isinstance(editor, TrainableBase)
        inner = editor.editor if trains_base else editor
        inner_params = params["editor"] if trains_base else params
        # The model edits start from: ENN's is the base it was meta-trained with.
        self.original = editor.current_base(params, model.params) if trains_base else model.params
        target = model.target
        self._inner = (inner_params, stats)  # arguments, not constants baked into the compiled edit
        # Only the edited matrices are computed; the rest of the model is `current`'s arrays.
        self._edit_fn = jit_forwarding_inputs(lambda p, s, current, batch: inner.edit(p, s, current, batch, False)[0])
        self._score = jax.jit(lambda current, batch: losses.token_stats(
            target.logits(current, batch), batch["labels"], target.shift_labels))
        self.codec = make_codec(model, config, max_new_tokens)
        self.edited = None  # the model of the last edit() call
        self._last_independent = False

    # ----- construction -----------------------------------------------------------
    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, params=None, stats=None, **kwargs) -> "Editor":
        """The editor `config` describes, with `params`/`stats` (default: its initialisation)."""
        config, model, editor = _assemble(config)
        if params is None:
            params, stats = editor.init(jax.random.PRNGKey(config.seed), model.params)
        return cls(config, model, editor, params, stats, **kwargs)

    @classmethod
    def for_model(cls, name_or_path: str, alg: str = "ft", inner_params: Optional[Sequence[str]] = None,
                  **kwargs) -> "Editor":
        """An editor that needs no training (FT) for a causal LM: a checkpoint directory, hub name or GGUF
        file. `inner_params`: the matrices FT may change (default: the MLP matrices of the last 3 layers)."""
        if alg != "ft":
            raise EditInputError(f"Editor.for_model edits with alg='ft' only: {alg!r} must be meta-trained first "
                                 "(python -m mend_jax.train), then applied with Editor.from_run")
        config = config_lib.base_config()
        config.task, config.alg = "gen", alg
        config.model.name = config.model.tokenizer = name_or_path
        config.model.pad_token_fix = True  # GPT-2-style tokenizers have no pad token
        config.model.inner_params = tuple(inner_params) if inner_params else ()
        if not config.model.inner_params:
            from mend_jax import models

            config.model.inner_params = tuple(models.last_mlp_matrices(name_or_path))
        return cls.from_config(config, **kwargs)

    @classmethod
    def load(cls, directory: str, **kwargs) -> "Editor":
        """An editor saved by `save` (or exported by a training run under RUN/editor)."""
        meta = editor_files.read_meta(directory)
        config, model, editor = _assemble_saved(ml_collections.ConfigDict(meta["config"]),
                                                os.path.join(directory, editor_files.META))
        editor_files.check_identity(directory, meta, model.target.inner_paths, model.params)
        # The structure to fill, from shapes alone: nothing is initialised only to be overwritten.
        like = jax.eval_shape(lambda: editor.init(jax.random.PRNGKey(0), model.params))
        params, stats = editor_files.load_weights(directory, *like)
        return cls(config, model, editor, params, stats, **kwargs)

    @classmethod
    def from_run(cls, run_dir: str, **kwargs) -> "Editor":
        """The kept (best) editor of a training run: RUN/editor when the run finished,
        else its Orbax checkpoint (best, then latest). FT needs no training: its run only
        names the config."""
        if not os.path.isdir(run_dir):
            raise NoTrainedEditor(f"run directory {run_dir!r} does not exist")
        exported = os.path.join(run_dir, editor_files.EDITOR_DIR)
        if editor_files.has_editor(exported):
            return cls.load(exported, **kwargs)
        if not os.path.isfile(config_checks.config_path(run_dir)):
            raise NoTrainedEditor(f"{run_dir} is not a training run: it has no {editor_files.EDITOR_DIR}/ and no "
                                  f"{os.path.relpath(config_checks.config_path(run_dir), run_dir)}")
        config, model, editor = _assemble(ml_collections.ConfigDict(config_checks.load(run_dir)))
        if not needs_training(editor):
            params, stats = editor.init(jax.random.PRNGKey(config.seed), model.params)
        else:
            state = _restore_checkpoint(run_dir, config, editor, model.params)
            params, stats = state.params, state.stats
        return cls(config, model, editor, params, stats, **kwargs)

    def save(self, directory: str) -> None:
        """editor.safetensors + editor.json (editing/editor_files.py), with what it was trained for.
        `directory` must be new, empty or an earlier saved editor (editing/outputs.py)."""
        info = {"alg": self.config.alg,
                **editor_files.identity(self.config, self.model.target.inner_paths, self.model.params)}
        editor_files.save_editor(directory, self.params, self.stats, self.config, info)

    # ----- editing ------------------------------------------------------------------
    def edit(self, prompts: Sequence[str], target_new: Sequence[str], rephrase_prompts=None, locality_prompts=None,
             portability_prompts=None, portability_answers=None, sequential: bool = False,
             batch_size: Optional[int] = None, independent: bool = False) -> EditResult:
        requests = make_requests(prompts, target_new, rephrase_prompts, locality_prompts, portability_prompts,
                                 portability_answers)
        return self.apply(requests, sequential=sequential, batch_size=batch_size, independent=independent)

    def apply(self, requests: EditRequests, sequential: bool = False, batch_size: Optional[int] = None,
              independent: bool = False) -> EditResult:
        """`independent=True` edits each batch on the original model and scores it there (the
        paper's evaluation of single edits); there is then no one edited model to export."""
        n = len(requests)
        if batch_size is not None:
            check_positive_int("batch_size", batch_size)
        step = 1 if sequential else (batch_size or n)
        self._warn_if_beyond_training(min(step, n))
        if independent and requests.portability_prompts and len(requests.portability_prompts) != n:
            raise EditInputError("independent edits are scored one batch at a time: give one portability prompt "
                                 "per edit")
        self._check_lengths(requests)
        codec, original = self.codec, self.original
        probes = self._probes(requests)
        edits = probes["edit"]
        before = codec.complete(original, requests.prompts)
        edits_with_cond = {**edits, "cond": codec.cond(edits, requests.prompts, requests.targets, before.texts)}
        loc_before = codec.complete(original, requests.locality_prompts) if requests.locality_prompts else None

        # The edit rows are scored once per step: on their own model (independent), or all of them
        # on the model so far, whose last scoring is the final one (sequential).
        current, history, owners, scored = original, [], [], []
        for rows in (slice(lo, min(lo + step, n)) for lo in range(0, n, step)):
            current = self._edit_fn(*self._inner, original if independent else current, _rows(edits_with_cond, rows))
            if independent:
                owners.append((rows, current))
                scored.append(self._stats([(rows, current)], edits))
                so_far, this_batch = np.concatenate([c for c, _ in scored]), scored[-1][0]
            else:
                scored = [self._stats([(slice(None), current)], edits)]
                so_far, this_batch = scored[0][0][:rows.stop], scored[0][0][rows]
            earlier = so_far[:rows.start]  # retention: edits of earlier batches, after this one
            entry = {"step": len(history) + 1, "n_edits": rows.stop, "success_so_far": float(so_far.mean()),
                     "success_of_this_batch": float(this_batch.mean()),
                     "success_of_earlier": float(earlier.mean()) if len(earlier) else None}
            if loc_before is not None:
                entry["locality"] = _unchanged(loc_before, codec.complete(current, requests.locality_prompts))
            history.append(entry)
        owners = owners or [(slice(0, n), current)]

        scored_before = {name: self._stats([(slice(None), original)], batch) for name, batch in probes.items()}
        scored_after = {name: self._stats(owners if name != "portability" or independent else
                                          [(slice(None), current)], batch)
                        for name, batch in probes.items() if name != "edit"}
        scored_after["edit"] = tuple(np.concatenate(column) for column in zip(*scored))
        after = np.concatenate([codec.complete(params, requests.prompts[rows]).texts for rows, params in owners])
        metrics = {"n_edits": n, "n_batches": len(history), "independent": independent}
        for name, key in (("edit", "reliability"), ("rephrase", "generalization"), ("portability", "portability")):
            metrics[key] = float(np.mean(scored_after[name][0])) if name in probes else None
            metrics[f"{key}_before"] = float(np.mean(scored_before[name][0])) if name in probes else None
        localities = [h["locality"] for h in history if "locality" in h]
        metrics["locality"] = (float(np.mean(localities)) if independent else localities[-1]) if localities else None
        self.edited, self._last_independent = (None if independent else current), independent
        return EditResult(metrics, self._table(requests, before.texts, scored_before["edit"]),
                          self._table(requests, list(after), scored_after["edit"]), history, self.edited, owners)

    def _check_lengths(self, requests: EditRequests) -> None:
        """Every text against the model's positions before any work; the error names where the text came from."""
        checks = (("prompts", requests.prompts, requests.targets, True),
                  ("rephrases", requests.rephrases, requests.targets, False),
                  ("locality_prompts", requests.locality_prompts, None, True),
                  ("portability_prompts", requests.portability_prompts, requests.portability_answers, False))
        for field, texts, answers, completes in checks:
            for i, text in enumerate(texts):
                problem = self.codec.length_problem(text, answers[i] if answers else None, completes)
                if problem:
                    raise EditInputError(f"{requests.origin(field, i)}: {problem}")

    def _warn_if_beyond_training(self, step: int) -> None:
        trained = int(self.config.data.n_edits)
        if needs_training(self.editor) and step > FAR_BEYOND_TRAINING * trained:
            warnings.warn(EditScaleWarning(
                f"this editor was meta-trained with {trained} edit(s) per step and is applied to {step} at once; "
                f"edits far beyond the trained number can damage the model. Use batch_size={trained} (--batch-size) "
                "or an editor trained with more (--config.data.n_edits)"), stacklevel=3)

    def _stats(self, owners, batch):
        """(correct, nll) per row of `batch`, each row scored on the model that owns it."""
        parts = [self._score(params, _rows(batch, rows)) for rows, params in owners]
        return tuple(np.concatenate([np.asarray(getattr(p, f)) for p in parts]) for f in ("correct", "nll"))

    def edit_counterfact(self, cases: Sequence[CounterFactCase], sequential: bool = False,
                         batch_size: Optional[int] = None, independent: bool = False) -> EditResult:
        """Edits CounterFact cases (data/counterfact.py) to their target_new and adds CounterFact's
        metrics (editing/counterfact_scores.py), before and after, to the result's metrics. The
        first paraphrase of each case serves as its rephrase; locality is measured on each case's
        neighbourhood prompts (neighborhood_score, neighborhood_token_agreement).
        `independent=True` is CounterFact's own protocol: every case edits the original model alone."""
        if self.model.task not in ("gen", "qa", "counterfact"):
            raise EditInputError(f"CounterFact edits language models (gen, qa), not a {self.model.task} model")
        if not cases:
            raise EditInputError("no CounterFact cases to edit")
        cases = list(cases)
        requests = make_requests(
            [c.rewrite_prompt for c in cases], [c.target_new for c in cases],
            [c.paraphrase_prompts[0] for c in cases] if all(c.paraphrase_prompts for c in cases) else None,
            where="CounterFact cases")  # locality: the neighbourhood scores, per case
        result = self.apply(requests, sequential=sequential, batch_size=batch_size, independent=independent)
        scorer = Scorer(self.codec, self.model.target)
        reference = neighbor_reference(scorer, self.original, cases)
        before = case_scores(scorer, self.original, cases, reference)
        starts = np.cumsum([0] + [len(c.neighborhood_prompts) for c in cases])  # each case's reference rows
        after = concat_case_scores([case_scores(scorer, params, cases[rows],
                                                reference[starts[rows.start]:starts[rows.stop]])
                                    for rows, params in result.owners])
        result.case_scores = after
        result.metrics.update(summarize_case_scores(after))
        result.metrics.update({f"{k}_before": v for k, v in summarize_case_scores(before).items()})
        return result

    def _probes(self, requests: EditRequests) -> Dict[str, Dict[str, np.ndarray]]:
        probes = {"edit": self.codec.edit_batch(requests.prompts, requests.targets)}
        if requests.rephrases:
            probes["rephrase"] = self.codec.edit_batch(requests.rephrases, requests.targets)
        if requests.portability_prompts:
            probes["portability"] = self.codec.edit_batch(requests.portability_prompts, requests.portability_answers)
        return probes

    @staticmethod
    def _table(requests: EditRequests, completions: List[str], stats) -> List[Dict[str, Any]]:
        correct, nll = stats
        return [{"prompt": p, "target": t, "completion": str(c), "p_target": float(pt), "success": bool(ok)}
                for p, t, c, pt, ok in zip(requests.prompts, requests.targets, completions,
                                           np.exp(-np.asarray(nll, np.float64)), correct)]

    # ----- export ---------------------------------------------------------------------
    def check_export(self, out_dir: str, flag: str = "") -> None:
        """Raises OutputError unless save_pretrained(out_dir) can write there without losing a file:
        call it before editing, so that a bad destination costs no work."""
        outputs.check_output_dir(out_dir, outputs.MODEL, outputs.export_bytes(self.original), flag)

    def save_pretrained(self, out_dir: str, metrics: Optional[Dict[str, Any]] = None) -> None:
        """The model of the last edit() (the original model before any) as config.json,
        model.safetensors and the tokenizer, which transformers' from_pretrained loads, and
        `metrics` as metrics.json. `out_dir` must be new, empty or an earlier export; it is
        replaced atomically (editing/outputs.py)."""
        from mend_jax import models

        if self.edited is None and self._last_independent:
            raise ValueError("the last edit() was independent (each batch on the original model): there is no one "
                             "edited model to save; edit with independent=False first")
        params = self.edited if self.edited is not None else self.original

        def fill(tmp: str) -> None:
            models.save_pretrained(self.model.target.module, params, tmp)
            self.model.tokenizer.save_pretrained(tmp)
            if metrics is not None:
                with open(os.path.join(tmp, outputs.METRICS_FILE), "w") as f:
                    json.dump(metrics, f, indent=1)

        outputs.write_dir(out_dir, outputs.MODEL, fill)


def _assemble(config: ml_collections.ConfigDict):
    """(config with the algorithm's defaults, the task's model, the editor) for `config`."""
    config = config_lib.apply_alg_defaults(config)
    model = experiments.build_model(config)
    editor = editors.make_editor(config, model.target, model.params)
    if hasattr(editor, "bind_data") and config.alg == "ft" and config.ft.locality:  # FT+KL's locality batches
        sources = experiments.TASKS[config.task].sources(config, with_data=True)
        editor.bind_data(experiments.TASKS[config.task].data(config, model, sources)[0])
    return config, model, editor


def _assemble_saved(config: ml_collections.ConfigDict, path: str):
    """_assemble for a config read from a file: a value the code cannot use is an EditorFileError naming the file."""
    try:
        config_lib.apply_alg_defaults(config)
        config_checks.validate(config, trains=False)
        return _assemble(config)
    except config_checks.ConfigError as e:
        raise editor_files.EditorFileError(f"{path}: {e.in_file()}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise editor_files.EditorFileError(f"{path}: its config cannot build an editor: {e}") from None


def _unchanged(reference, completions) -> float:
    """The share of prompts whose greedy completion is token for token the reference's."""
    return float(np.mean(np.all(reference.ids == completions.ids, axis=1)))


def _restore_checkpoint(run_dir: str, config, editor, base_params):
    from mend_jax.checkpointing import Checkpointer
    from mend_jax.trainer import initial_state

    state = None
    if any(os.listdir(os.path.join(run_dir, "checkpoints", d)) for d in ("best", "latest")
           if os.path.isdir(os.path.join(run_dir, "checkpoints", d))):
        abstract, _ = initial_state(config, editor, base_params)
        ckpt = Checkpointer(run_dir, async_save=False)
        try:
            state = ckpt.restore(abstract, "best") or ckpt.restore(abstract, "latest")
        finally:
            ckpt.close()
    if state is None:
        raise NoTrainedEditor(f"{run_dir} has no trained editor: no {editor_files.EDITOR_DIR}/ and no checkpoint "
                              "under checkpoints/ (train it first: python -m mend_jax.train ... --workdir "
                              f"{run_dir})")
    return state
