"""Meta-training loop shared by every editor.

The jitted pieces are pure functions of one train-state pytree:
`grad_step` accumulates the gradient of one batch (skipping non-finite ones),
`apply_step` clips and applies the accumulated gradient every `accumulate_bs`
batches (accumulation.py: the windows; clipping.py: torch's clipping), and `evaluate` scores many single edits at once with vmap. On a mesh with
several data-parallel devices, `group_step` (data_parallel.py) takes one batch per
device in place of that many `grad_step`s; the state and the base model live where
the sharding rules put them (sharding.py).
"""
import dataclasses
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P
from mend_jax import config_checks, config_lib, data_parallel, distributed, environment, meta, sharding
from mend_jax.accumulation import accumulate, applies_update, starts_window
from mend_jax.clipping import clip_grad_norm_like_torch
from mend_jax.checkpointing import BEST_METRIC, Checkpointer, check_free_space, state_bytes
from mend_jax.data.batching import stack_batches
from mend_jax.editing import editor_files
from mend_jax.editors.base import needs_training
from mend_jax.forwarding import jit_forwarding_inputs
from mend_jax.metric_log import MetricLog, with_suffix
from mend_jax.models.layers import DTYPES
from mend_jax.progress import progress as progress_bar


@flax.struct.dataclass
class TrainState:
    params: Any  # trainable editor parameters (with train_base, the trained base leaves too)
    stats: Any  # non-trainable editor state (normalisation statistics)
    opt_state: Any
    # The gradient summed over the current accumulation window. The update leaves it as it is
    # (zeroing it would cost a write of the whole tree, and XLA copies it first): the next batch,
    # which starts a new window, replaces it instead of adding to it (starts_window).
    grad_acc: Any
    step: jax.Array  # batches seen
    n_skipped: jax.Array  # batches with non-finite gradients
    rng: jax.Array
    best_val: jax.Array  # best early-stopping metric so far
    best_step: jax.Array


def make_optimizer(config: ml_collections.ConfigDict, labels) -> optax.GradientTransformation:
    """Adam at `lr` on everything (editor and trained base), as the reference does in effect;
    optionally `lr_lr` on the α's. `opt_mu_dtype` stores Adam's first moment in bfloat16 (the
    second stays float32: its 0.1% steps per update are below bfloat16's resolution)."""
    name = config.get("opt_mu_dtype", "float32")  # a run saved before the key existed had float32
    mu_dtype = None if name == "float32" else DTYPES[name]  # None: the params' dtype
    adam = lambda lr: optax.adam(lr, mu_dtype=mu_dtype)
    if config.edit_lrs_use_lr_lr:
        groups = {"editor": adam(config.lr), "base": adam(config.lr), "edit_lrs": adam(config.lr_lr)}
        inner = optax.multi_transform(groups, labels)
    else:
        inner = adam(config.lr)
    return optax.chain(clip_grad_norm_like_torch(config.grad_clip), inner)


class TrainingDiverged(RuntimeError):
    """Too many non-finite batches in one accumulation window."""


class DivergenceCheck:
    """Stops a run whose accumulation window is mostly non-finite batches, which the
    step would otherwise skip on, reporting a run that never trained."""

    def __init__(self, max_fraction: float, n_skipped: int, step: int):
        self.max_fraction, self.n_skipped, self.first_step = max_fraction, n_skipped, step

    def check(self, n_skipped: int, step: int) -> None:
        """`n_skipped`: the run's count after batch `step`, which closes a window."""
        skipped, size = n_skipped - self.n_skipped, step + 1 - self.first_step
        if size > 0 and skipped / size > self.max_fraction:
            raise TrainingDiverged(
                f"the run has diverged: {skipped} of the {size} batches of steps {self.first_step}-{step} had a "
                f"non-finite loss or gradient (more than max_skipped_fraction={self.max_fraction}). The last "
                "checkpoint is kept; lower --config.lr, or raise --config.max_skipped_fraction to skip on"
            )
        self.n_skipped, self.first_step = n_skipped, step + 1


def _committed(tree):
    """Arrays committed to the device, as restored checkpoints are, so that the jitted
    functions compile once for both (jit's cache keys on committed shardings)."""
    return jax.device_put(tree, jax.devices()[0])


def state_builder(config: ml_collections.ConfigDict, editor, base_params) -> Tuple[Callable[[Any], TrainState], Any]:
    """(a pure function base_params -> the train state before the first step, its optimizer).
    `base_params` may be abstract (jax.ShapeDtypeStruct): nothing is computed here."""
    init_rng, rng = jax.random.split(jax.random.PRNGKey(config.seed))
    abstract_params, _ = jax.eval_shape(editor.init, init_rng, base_params)
    optimizer = make_optimizer(config, editor.param_labels(abstract_params))

    def build(base_params) -> TrainState:
        params, stats = editor.init(init_rng, base_params)
        return TrainState(
            params=params,
            stats=stats,
            opt_state=optimizer.init(params),
            grad_acc=jax.tree_util.tree_map(jnp.zeros_like, params),
            step=jnp.zeros((), jnp.int32),
            n_skipped=jnp.zeros((), jnp.int32),
            rng=rng,
            best_val=jnp.array(np.inf, jnp.float32),
            best_step=jnp.zeros((), jnp.int32),
        )

    return build, optimizer


def initial_state(config: ml_collections.ConfigDict, editor, base_params) -> Tuple[TrainState, Any]:
    """(the train state before the first step, its optimizer) on one device: also the structure
    that a checkpoint restores into."""
    build, optimizer = state_builder(config, editor, base_params)
    return _committed(build(base_params)), optimizer


@dataclasses.dataclass
class Experiment:
    """Everything the trainer needs from an experiment."""

    editor: Any
    target: Any
    base_params: Any
    train_data: Any  # .train_batch(step) -> batch
    val_data: Any  # .eval_batch(i) -> batch, .n_eval_batches
    drawdown: Callable[[Dict[str, float]], float]


class Trainer:
    def __init__(self, config: ml_collections.ConfigDict, experiment: Experiment, workdir: str, devices=None):
        """`devices`: the mesh's devices (default: all of the job's)."""
        self.config = config_lib.apply_alg_defaults(config)
        self.trains = needs_training(experiment.editor)  # fine-tuning baselines go straight to evaluation
        config_checks.validate(self.config, trains=self.trains)
        self.exp = experiment
        self.workdir = workdir
        self.coef = meta.Coefficients(
            edit=config.c_edit, loc=config.c_loc, base=config.c_base, base_in_gradient=config.c_base_in_gradient
        )
        if hasattr(experiment.editor, "bind_data"):
            experiment.editor.bind_data(experiment.train_data)
        self._place_on_mesh(devices)
        self._build_functions()

    def _place_on_mesh(self, devices):
        """The mesh, where the base model and the train state live on it, and the base model there."""
        cfg = self.config
        self.mesh = sharding.make_mesh(cfg.get("mesh"), devices)
        self.n_data = self.mesh.shape["data"]
        if self.trains:
            config_checks.check_data_parallel(cfg, self.n_data)
        rules = cfg.get("sharding")
        self.base_shardings = sharding.tree_shardings(self.exp.base_params, self.mesh, rules, "base")
        self.base_params = distributed.to_global(self.exp.base_params, self.base_shardings)
        self._build_state, self.optimizer = state_builder(cfg, self.exp.editor, self.base_params)
        abstract = jax.eval_shape(self._build_state, self.base_params)
        self.state_shardings = sharding.tree_shardings(abstract, self.mesh, rules, "state")
        self.replicated = sharding.replicated(self.mesh)

    # ----- pure, jitted pieces -------------------------------------------------
    def _build_functions(self):
        exp, coef, acc_bs = self.exp, self.coef, self.config.accumulate_bs

        def loss_fn(params, stats, base_params, batch):
            return meta.edit_and_score(exp.editor, exp.target, coef, params, stats, base_params, batch, train=True)

        def grad_step(state: TrainState, base_params, batch):
            (loss, (stats, sums)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, state.stats, base_params, batch
            )
            grad_norm, finite = data_parallel.norm_and_finite(grads)
            finite = finite & jnp.isfinite(loss)
            scaled = jax.tree_util.tree_map(lambda g: jnp.where(finite, g / acc_bs, jnp.zeros_like(g)), grads)
            grad_acc = accumulate(state.grad_acc, scaled, starts_window(state.step, acc_bs))
            # Statistics poisoned by a non-finite batch would spoil every later edit.
            stats = jax.tree_util.tree_map(
                lambda new, old: jnp.where(data_parallel.all_finite(stats), new, old), stats, state.stats
            )
            sums["grad_norm"] = grad_norm
            state = state.replace(
                stats=stats, grad_acc=grad_acc, step=state.step + 1, n_skipped=state.n_skipped + (~finite)
            )
            return state, sums

        def apply_step(state: TrainState):
            updates, opt_state = self.optimizer.update(state.grad_acc, state.opt_state, state.params)
            return state.replace(
                params=optax.apply_updates(state.params, updates),
                opt_state=opt_state,
            )

        def eval_one(params, stats, base_params, batch):
            _, (_, sums) = meta.edit_and_score(
                exp.editor, exp.target, coef, params, stats, base_params, batch, train=False
            )
            return sums

        def edit_only(params, stats, base_params, batch):
            edited, _, _ = exp.editor.edit(params, stats, base_params, meta.edit_inputs(batch), False)
            return edited

        state_sh, repl = self.state_shardings, self.replicated
        self._init_state = jax.jit(self._build_state, out_shardings=state_sh)
        self._grad_step = jax.jit(grad_step, donate_argnums=0, out_shardings=(state_sh, repl))
        self._apply_step = jax.jit(apply_step, donate_argnums=0, out_shardings=state_sh)
        # Each batch's gradient where its parameter lives, one batch per data-parallel device.
        grad_shardings = jax.tree_util.tree_map(
            lambda s: NamedSharding(self.mesh, P("data", *s.spec)), self.state_shardings.grad_acc
        )
        group_step = data_parallel.make_group_step(exp.editor, loss_fn, acc_bs, self.mesh, grad_shardings)
        self._group_step = jax.jit(group_step, donate_argnums=0, out_shardings=(state_sh, repl))
        score_chunk = jax.vmap(eval_one, in_axes=(None, None, None, 0))
        if self.n_data > 1:  # each device of the data axis scores its own rows of the chunk
            score_chunk = data_parallel.per_batch(eval_one, self.mesh, in_specs=(P(), P(), P(), P("data")),
                                                  in_axes=(None, None, None, 0))
        self._evaluate = jax.jit(score_chunk, out_shardings=repl)
        self._edit_only = jit_forwarding_inputs(edit_only)  # the model's unedited leaves are not copied

    def init_state(self) -> TrainState:
        return self._init_state(self.base_params)

    def abstract_state(self) -> TrainState:
        """The train state's shapes, dtypes and shardings, allocated nowhere: with abstract base
        params (jax.ShapeDtypeStruct) the steps compile ahead of time from these alone."""
        return distributed.to_global(jax.eval_shape(self._build_state, self.base_params), self.state_shardings)

    def _replicate(self, batch):
        """A batch that every process builds in full, on every device of the mesh."""
        return distributed.to_global(batch, self.replicated)

    def _input(self, batch):
        """A batch as the jitted functions take it: host arrays as they are on one process."""
        return batch if jax.process_count() == 1 else self._replicate(batch)

    def _eval_input(self, chunk):
        """A chunk of validation batches that every process stacks in full (cheap beside scoring
        it), its rows split over the data axis."""
        if self.n_data == 1:
            return self._input(chunk)
        return distributed.to_global(chunk, sharding.over_data(self.mesh))

    def _train_inputs(self, indices):
        """(batches, valid) of one data-parallel group: each process builds its own rows only."""
        rows = data_parallel.padded(indices, self.n_data)
        batches = distributed.global_batch(self.exp.train_data.train_batch, rows, sharding.over_data(self.mesh))
        valid = np.arange(self.n_data) < len(indices)
        return batches, distributed.to_global(valid, self.replicated)

    # ----- evaluation -------------------------------------------------------------
    def evaluate(self, state: TrainState, n_batches: Optional[int] = None, progress: bool = False) -> Dict[str, float]:
        """Scores validation batches 0..n-1 (each `data.n_edits` edits and their locality
        examples; all when n is None or negative), `eval_chunk_size(n)` batches per call."""
        n_total = self.exp.val_data.n_eval_batches
        n = n_total if n_batches is None or n_batches < 0 else min(n_batches, n_total)
        chunk = self.eval_chunk_size(n)
        pieces = []
        bar = progress_bar(n, "eval", enabled=progress and distributed.is_main())
        start = time.perf_counter()
        for lo in range(0, n, chunk):
            batch = self._eval_chunk(lo, chunk, n)
            sums = distributed.to_host(self._evaluate(state.params, state.stats, self.base_params, batch))
            keep = min(chunk, n - lo)
            pieces.append({k: np.asarray(v)[:keep] for k, v in sums.items()})
            bar.update(keep)
        bar.close()
        merged = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
        metrics = meta.finalize(merged)
        metrics["time/eval"] = time.perf_counter() - start
        metrics["time/edit"] = self.time_edit(state)
        metrics["drawdown"] = self.exp.drawdown(metrics)
        metrics["n_batches_evaluated"] = n
        metrics["n_edits_evaluated"] = n * self.exp.val_data.n_edits
        return metrics

    def _eval_chunk(self, lo: int, size: int, n_batches: int):
        """Validation batches lo..lo+size-1 as one call's input; past the last of 0..n-1 that
        last batch repeats, so every call has the same static shape (its rows are dropped)."""
        indices = [min(i, n_batches - 1) for i in range(lo, lo + size)]
        return self._eval_input(stack_batches([self.exp.val_data.eval_batch(i) for i in indices]))

    def eval_chunk_size(self, n_batches: int) -> int:
        """Validation batches per call: `eval_chunk` (at most the n to score), rounded up to a
        multiple of the data axis, whose devices split each call."""
        return -(-max(1, min(self.config.eval_chunk, n_batches)) // self.n_data) * self.n_data

    def time_edit(self, state: TrainState, repeats: int = 5) -> float:
        """Median wall time of one jitted edit (compiled beforehand)."""
        batch = self._replicate(self.exp.val_data.eval_batch(0))  # on the devices first: time the edit alone
        run = lambda: jax.block_until_ready(self._edit_only(state.params, state.stats, self.base_params, batch))
        run()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    # ----- the loop ---------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        cfg = self.config
        main = distributed.is_main()  # files other than checkpoints come from process 0 alone
        log = MetricLog(self.workdir, enabled=main)
        config_checks.check_resume(self.workdir, cfg)  # before anything is written
        ckpt = Checkpointer(self.workdir, async_save=cfg.async_checkpointing)
        if main:
            config_checks.save(self.workdir, cfg)
        state = self.init_state()
        if self.trains and not cfg.eval_only:
            check_free_space(ckpt.root, state_bytes(state))  # fail now, not at the first save
        restored = ckpt.restore(state, "latest")
        if restored is not None:
            state = restored
            print(f"resumed from step {_scalar(state.step)} in {self.workdir}")
        try:
            if not cfg.eval_only and self.trains:
                state = self._train(state, ckpt, log)
            final_state = self._final_state(state, ckpt, cfg.eval_only and self.trains)
            if self.trains:  # the kept editor as shareable files (editing/editor_files.py)
                params, stats = distributed.to_host((final_state.params, final_state.stats))  # on every process
                try:
                    editor_files.check_finite(params, stats, f"the kept editor (step {_scalar(final_state.best_step)})")
                except editor_files.NonFiniteEditor as e:
                    raise TrainingDiverged(f"{e}; nothing was exported to {editor_files.EDITOR_DIR}/") from None
                inner = distributed.to_host(_inner_leaves(self.base_params, self.exp.target.inner_paths))
                if main:
                    editor_files.save_editor(os.path.join(self.workdir, editor_files.EDITOR_DIR), params, stats, cfg,
                                {"alg": cfg.alg, "step": _scalar(final_state.best_step),
                                 **editor_files.identity(cfg, self.exp.target.inner_paths, inner)})
            metrics = self.evaluate(final_state, cfg.final_eval_steps, progress=True)
            log.scalars(_scalar(final_state.step), with_suffix(metrics, "_val"), suffix="/final")
            results = {
                "results": with_suffix(metrics, "_val"),
                "step": _scalar(final_state.step),
                "kept_step": _scalar(final_state.best_step),  # the validation step of the evaluated editor
                "steps_trained": _scalar(state.step),
                # The run's own count (the kept editor's checkpoint holds the count at its step).
                "n_skipped_batches": _scalar(state.n_skipped),
                "config": cfg.to_dict(),
                "environment": environment.describe(),  # the figures depend on the CPU and libraries
            }
            results["results_path"] = log.write_results(results)
            return results
        finally:
            ckpt.close()
            log.close()

    def _final_state(self, state, ckpt: Checkpointer, eval_only: bool):
        best = ckpt.restore(state, "best")
        if best is None and eval_only and ckpt.restore(state, "latest") is None:
            raise FileNotFoundError(
                f"eval_only needs a trained editor, but {self.workdir}/checkpoints holds none; "
                "pass the --workdir of a finished run"
            )
        return best if best is not None else state

    def _validate(self, state: TrainState, step: int, ckpt: Checkpointer, log: MetricLog):
        """Validation on `val_steps` batches; keeps the best editor by `loss/total_edit_val`."""
        val = self.evaluate(state, self.config.val_steps)
        log.scalars(step, with_suffix(val, "_val"))
        if val["loss/total_edit"] < _scalar(state.best_val):
            best = {"best_val": np.float32(val["loss/total_edit"]), "best_step": np.int32(step)}
            shardings = {k: getattr(self.state_shardings, k) for k in best}
            state = state.replace(**distributed.to_global(best, shardings))
            ckpt.save_best(step, state, with_suffix(val, "_val"))
        return state, val

    def _train_group(self, state: TrainState, indices):
        """The state after batches `indices`, and one dict of device arrays per batch (read when logged)."""
        if self.n_data == 1:
            batch = self._input(self.exp.train_data.train_batch(indices[0]))
            state, sums = self._grad_step(state, self.base_params, batch)
            return state, [sums]
        batches, valid = self._train_inputs(indices)
        state, sums = self._group_step(state, self.base_params, batches, valid)
        return state, [jax.tree_util.tree_map(lambda x, i=i: x[i], sums) for i in range(len(indices))]

    def _train(self, state: TrainState, ckpt: Checkpointer, log: MetricLog) -> TrainState:
        cfg = self.config
        step = start = _scalar(state.step)  # tracked on the host so the loop never waits on the device
        bar = progress_bar(cfg.max_iters, "meta-train", initial=step, enabled=distributed.is_main())
        postfix: Dict[str, str] = {}
        recent, validated, stopped = [], None, False
        window = DivergenceCheck(cfg.max_skipped_fraction, _scalar(state.n_skipped), step)
        while step < cfg.max_iters:
            # One batch, or with D data-parallel devices up to D batches ending on a multiple of D;
            # config_checks.check_data_parallel puts every event below on such a group's last batch.
            indices = data_parallel.group(step, self.n_data, cfg.max_iters)
            state, sums = self._train_group(state, indices)
            recent.extend(sums)
            last = indices[-1]
            if applies_update(last, cfg.accumulate_bs):
                window.check(_scalar(state.n_skipped), last)
                state = self._apply_step(state)
            if last % cfg.log_interval == 0:
                train_metrics = {k: float(np.mean([distributed.to_host(r[k]) for r in recent])) for k in recent[0]}
                log.scalars(last, train_metrics)
                postfix["ES(train)"] = f"{train_metrics['edit/acc']:.2f}"
                recent = []
            if last % cfg.val_interval == 0:
                state, val = self._validate(state, last, ckpt, log)
                validated = last
                postfix.update({"ES": f"{val['edit/acc']:.2f}", "DD": f"{val['drawdown']:.3g}"})
                if last - _scalar(state.best_step) >= cfg.early_stop_patience:
                    print(f"early stop at step {last}: no better {BEST_METRIC} since step {_scalar(state.best_step)}")
                    stopped = True
                    break
            step = last + 1
            # With D > 1 the save after batch b with (b+1) % checkpoint_interval == 0 waits for its group's end.
            if step % cfg.checkpoint_interval < len(indices):
                ckpt.save_latest(step, state)
            bar.set_postfix(postfix, refresh=False)
            bar.update(len(indices))
        bar.close()
        if not stopped and step > start and validated != step - 1:
            # The reference validates only every val_interval steps; the last editor counts too.
            state, _ = self._validate(state, step - 1, ckpt, log)
        ckpt.save_latest(_scalar(state.step), state)
        return state


def _inner_leaves(params, inner_paths):
    """The edited matrices of `params` alone, in its nesting (what the editor's identity hashes)."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({tuple(p): flat[tuple(p)] for p in inner_paths})


def _scalar(x):
    """A scalar of the train state as a Python number (on every process of a multi-host job)."""
    return distributed.to_host(x).item()
