"""MEND speed and memory on a distilgpt2-shaped model with random weights.

  python benchmarks/bench_mend.py [--steps 10] [--edit_tokens 30] [--loc_tokens 200]

Batch shapes follow the reference: 1 edit of about 30 tokens plus 1 locality
passage of 200 tokens. Prints a table: median meta-training step time (one
batch's gradient plus the optimizer update), median edit time, the ratio of an
edit to one forward+backward of the base model on the same edit batch, and
peak memory (device memory where the backend reports it, else process RSS).
"""
import argparse
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import transformers

from mend_jax import config_lib, models
from mend_jax.editors.base import EditTarget
from mend_jax.editors.mend import MEND
from mend_jax.trainer import Experiment, Trainer

INNER = [f"transformer.h.{i}.mlp.{m}.weight" for i in (3, 4, 5) for m in ("c_fc", "c_proj")]


def lm_batch(rng, n, length, n_label):
    ids = rng.integers(0, 50257, (n, length)).astype(np.int32)
    mask = np.ones_like(ids)
    labels = np.full_like(ids, -100)
    labels[:, length - n_label:] = ids[:, length - n_label:]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


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
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--edit_tokens", type=int, default=30)
    ap.add_argument("--loc_tokens", type=int, default=200)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()

    cfg = transformers.GPT2Config(vocab_size=50258, n_layer=6, n_embd=768, n_head=12, n_positions=1024)
    dtype = jnp.float32 if args.dtype == "float32" else jnp.bfloat16
    module = models.build_module(cfg, dtype=dtype)
    params = models.init_params(module, jax.random.PRNGKey(0))
    target = EditTarget(module, tuple(models.inner_param_paths(module, params, INNER)), tuple(INNER), True)
    config = config_lib.apply_alg_defaults(config_lib.base_config())
    editor = MEND(target, params, config.mend, edit_lr=config.edit_lr)

    rng = np.random.default_rng(0)
    edit = lm_batch(rng, 1, args.edit_tokens, 10)
    batch = {"edit_inner": edit, "edit_outer": edit, "loc": lm_batch(rng, 1, args.loc_tokens, args.loc_tokens - 1)}
    data = type("OneBatch", (), {"train_batch": lambda self, step: batch, "eval_batch": lambda self, i: batch,
                                 "n_eval_batches": 1})()
    trainer = Trainer(config, Experiment(editor, target, params, data, data, lambda m: 0.0), workdir="/tmp/bench_mend")
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
    print(f"MEND on distilgpt2 shapes, {args.dtype}, edit {args.edit_tokens} tok + loc {args.loc_tokens} tok, {device}")
    width = max(len(r[0]) for r in rows)
    print(f"| {'metric'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
