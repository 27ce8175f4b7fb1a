"""MEND speed and memory on the paper's model shapes, with random weights.

  python benchmarks/bench_mend.py [--model distilgpt2] [--steps 10] [--dtype float32]
  python benchmarks/bench_mend.py --model t5-small     # also bart-base, bert-base

Models and inner params are those of configs/gen.py:distilgpt2, configs/qa.py:t5-small
and :bart-base, and configs/fc.py:bert-base. Batch shapes follow the reference: 1 edit
plus 1 locality example (gen: an edit of 30 tokens and a passage of 200; qa: questions
of 32 tokens and answers of 8; fc: claims of 32 tokens). Prints a table: median
meta-training step time (one batch's gradient plus the optimizer update), median edit
time, the ratio of an edit to one forward+backward of the base model on the same edit
batch, and peak memory (device memory where the backend reports it, else process RSS).
"""
import argparse
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import common
from mend_jax import config_lib, models
from mend_jax.editors.base import EditTarget
from mend_jax.models.architectures import ARCHITECTURES
from mend_jax.models.layers import DTYPES
from mend_jax.editors.mend import MEND
from mend_jax.trainer import Experiment, Trainer


def lm_batch(rng, vocab, length, n_label):
    ids = rng.integers(0, vocab, (1, length)).astype(np.int32)
    labels = np.full_like(ids, -100)
    labels[:, length - n_label:] = ids[:, length - n_label:]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels}


def seq2seq_batch(rng, vocab, length, answer_length):
    ids = rng.integers(0, vocab, (1, length)).astype(np.int32)
    answer = rng.integers(0, vocab, (1, answer_length)).astype(np.int32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "decoder_input_ids": answer,
            "decoder_attention_mask": np.ones_like(answer), "labels": answer}


def claim_batch(rng, vocab, length, _):
    ids = rng.integers(0, vocab, (1, length)).astype(np.int32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": rng.integers(0, 2, (1,)).astype(np.int32)}


# The batch of each task: (builder, (edit length, edit labels), (locality length, locality labels),
# loss shifts labels). Models and inner params: mend_jax.models.architectures.
TASK_BATCHES = {
    "gen": (lm_batch, (30, 10), (200, 199), True),
    "qa": (seq2seq_batch, (32, 8), (32, 8), False),
    "fc": (claim_batch, (32, None), (32, None), False),
}
BART_BATCH = (seq2seq_batch, (32, 8), (32, 8), True)  # BART's labels are shifted like a decoder's
MODELS = sorted(ARCHITECTURES)


def batch_spec(model: str):
    return BART_BATCH if model.startswith("bart") else TASK_BATCHES[ARCHITECTURES[model].experiment]


def build(model: str, dtype=jnp.float32, abstract: bool = False, remat: str = "none"):
    """(EditTarget, parameters, one meta-training batch) of `model`'s shape and inner params.
    The parameters are random, or with `abstract` only their shapes (nothing is allocated)."""
    arch = ARCHITECTURES[model]
    make_batch, edit_shape, loc_shape, shift = batch_spec(model)
    hf_config = arch.make_config()
    inner = list(common.load_config(arch.experiment, arch.arg).model.inner_params)
    module = models.build_module(hf_config, dtype=dtype, remat=remat)
    params = models.api.param_shapes(module) if abstract else models.init_params(module, jax.random.PRNGKey(0))
    target = EditTarget(module, tuple(models.inner_param_paths(module, params, inner)), tuple(inner), shift)
    params = models.inner_in_float32(params, target.inner_paths)  # as experiments.py loads a bf16 model
    rng = np.random.default_rng(0)
    edit = make_batch(rng, hf_config.vocab_size, *edit_shape)
    batch = {"edit_inner": edit, "edit_outer": edit, "loc": make_batch(rng, hf_config.vocab_size, *loc_shape)}
    return target, params, batch


def one_batch_trainer(config, target, params, batch, workdir: str, devices=None) -> Trainer:
    """A MEND Trainer whose training and validation data are `batch` alone."""
    editor = MEND(target, params, config.mend, edit_lr=config.edit_lr)
    data = type("OneBatch", (), {"train_batch": lambda self, step: batch, "eval_batch": lambda self, i: batch,
                                 "n_eval_batches": 1})()
    return Trainer(config, Experiment(editor, target, params, data, data, lambda m: 0.0), workdir, devices=devices)


def timed(fn, steps):
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory_mb():
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20, "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process max RSS"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="distilgpt2", choices=MODELS)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    args = ap.parse_args()

    target, params, batch = build(args.model, DTYPES[args.dtype])
    edit = batch["edit_inner"]
    config = config_lib.apply_alg_defaults(config_lib.base_config())
    trainer = one_batch_trainer(config, target, params, batch, "/tmp/bench_mend")
    state = trainer.init_state()

    def train_step():
        nonlocal state
        state, _ = trainer._grad_step(state, params, batch)
        state = trainer._apply_step(state)
        return state.params

    step_time = timed(train_step, args.steps)
    edit_time = timed(lambda: trainer._edit_only(state.params, state.stats, params, batch), args.steps)
    fwd_bwd = jax.jit(jax.grad(lambda p: target.nll(target.logits(p, edit), edit)))
    base_time = timed(lambda: fwd_bwd(params), args.steps)
    mem, mem_kind = peak_memory_mb()

    device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
    rows = [
        ("meta-train step (median)", f"{step_time * 1e3:.1f} ms"),
        ("edit (median)", f"{edit_time * 1e3:.1f} ms"),
        ("edit / base fwd+bwd", f"{edit_time / base_time:.2f}x  (fwd+bwd {base_time * 1e3:.1f} ms)"),
        (f"peak memory ({mem_kind})", f"{mem:.0f} MiB"),
    ]
    print(f"MEND on {args.model} shapes, {args.dtype}, 1 edit + 1 locality example, {device}")
    width = max(len(r[0]) for r in rows)
    print(f"| {'metric'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
