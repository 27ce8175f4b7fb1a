"""Editor speed, FLOP utilisation and memory on the paper's model shapes, with random weights,
or on a local checkpoint with its own weights.

  python benchmarks/bench_mend.py [--models distilgpt2] [--algs mend] [--steps 10] [--rounds 2]
  python benchmarks/bench_mend.py --models distilgpt2,t5-small,bart-base,bert-base --algs mend,enn,efk
  python benchmarks/bench_mend.py --profile          # where the step's time goes, by op kind
  python benchmarks/bench_mend.py --models smollm2-135m  # SmolLM2-135M's shape (configs/gen.py:smollm2-135m)
  python benchmarks/bench_mend.py --models PATH      # a checkpoint directory or .gguf file, its own weights

Models and inner params are those of configs/gen.py:distilgpt2, configs/qa.py:t5-small
and :bart-base, and configs/fc.py:bert-base (any model of mend_jax/models/architectures.py).
Batch shapes follow the reference: 1 edit plus 1 locality example (gen: an edit of 30 tokens
and a passage of 200; qa: questions of 32 tokens and answers of 8; fc: claims of 32 tokens).
The editor's config is the reference's (config_lib.base_config and the alg's defaults).
A local checkpoint (a directory models.load_pretrained reads, or a GGUF file) is benchmarked
with its own weights, as a decoder with the gen batch, editing its last three MLP blocks
(models.last_mlp_matrices), the default of mend_jax.edit --model.

Per model and algorithm, measured in one process (several rows run one process each, so that
each row's peak RSS is its own), timings as medians over `--rounds` alternating rounds of
`--steps` calls:
- the meta-training step (one batch's gradient plus the optimizer update), its FLOPs from the
  compiled steps' cost analysis, and the achieved GFLOP/s;
- the rate of a jitted 2048x2048 matrix product in the step's dtype (8192x8192 on an
  accelerator), and the step's time over its FLOP floor (FLOPs / that rate);
- where the device has a datasheet peak (benchmarks/device_peaks.py: NVIDIA A100/H100/H200,
  TPU v4-v6e) or `--peak_tflops` gives one, the step's FLOP utilisation (MFU: its FLOP rate
  over that peak, in the mode its products run: bf16, TF32 for float32 at JAX's default
  precision on a GPU, or float32 at full precision);
- the optimizer update alone, which reads and writes the whole train state and so is bound by
  memory traffic: its time over its byte floor (the compiled update's argument and output
  bytes at the bandwidth of STREAM's triad, measured by the same process); the step over its
  roofline floor (the gradient's FLOP floor plus the update's byte floor); and a training
  batch (the gradient, and the update once per `accumulate_bs` batches, as meta-training
  applies it) over its FLOP floor;
- one edit, and its ratio to one forward+backward of the base model on the same edit batch;
- the process's peak RSS after the training steps (measured first, beside the GEMM: the
  forward+backward's gradient of the whole base model is the benchmark's, not training's),
  the RSS the libraries held before the model was built (JAX, transformers, and torch when
  transformers finds it installed), and the compiled step's `memory_analysis()` bytes
  (arguments + outputs - donated + temporaries); on an accelerator, also the device's peak
  bytes in use after the training steps.
`--host_memory` sets the host allocator's mode as train.py's flag does (mend_jax/host_memory.py):
trim by default, lean, or keep; `--huge_pages off` runs without transparent huge pages
(train.py's --nohuge_pages).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import common
import device_peaks
import hlo_profile
from mend_jax import config_lib, editors, host_memory, models
from mend_jax.editors.base import EditTarget
from mend_jax.models.architectures import ARCHITECTURES
from mend_jax.models.layers import DTYPES
from mend_jax.trainer import Experiment, Trainer

# The reference GEMM's size: an accelerator finishes a 2048 product too soon to reach its rate.
CPU_GEMM_SIZE, ACCELERATOR_GEMM_SIZE = 2048, 8192
STREAM_FLOATS = 2**24  # 64 MiB a float32 array: far beyond the caches, as the train state is
ALGS = ("mend", "enn", "efk")


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


def is_checkpoint(model: str) -> bool:
    """Whether `model` names a local checkpoint (a directory or file) rather than an architecture."""
    return model not in ARCHITECTURES and os.path.exists(model)


def build(model: str, dtype=jnp.float32, abstract: bool = False, remat: str = "none"):
    """(EditTarget, parameters, one meta-training batch) of `model`'s shape and inner params.
    The parameters are random, or with `abstract` only their shapes (nothing is allocated); a
    local checkpoint's are its own."""
    if is_checkpoint(model):
        make_batch, edit_shape, loc_shape, shift = TASK_BATCHES["gen"]
        inner = models.last_mlp_matrices(model)
        module, params = models.load_pretrained(model, dtype=dtype, remat=remat)
        hf_config = module.config
        if abstract:
            params = jax.eval_shape(lambda: params)
    else:
        arch = ARCHITECTURES[model]
        make_batch, edit_shape, loc_shape, shift = batch_spec(model)
        hf_config = arch.make_config()
        inner = list(common.load_config(arch.experiment, arch.arg).model.inner_params)
        module = models.build_module(hf_config, dtype=dtype, remat=remat)
        params = models.api.param_shapes(module)
        if not abstract:
            params = random_params(params)
    target = EditTarget(module, tuple(models.inner_param_paths(module, params, inner)), tuple(inner), shift)
    params = models.inner_in_float32(params, target.inner_paths)  # as experiments.py loads a bf16 model
    rng = np.random.default_rng(0)
    edit = make_batch(rng, hf_config.vocab_size, *edit_shape)
    batch = {"edit_inner": edit, "edit_outer": edit, "loc": make_batch(rng, hf_config.vocab_size, *loc_shape)}
    return target, params, batch


def random_params(shapes, scale: float = 0.02):
    """Normal(0, scale) weights of these shapes, made one leaf at a time: the peak memory is the
    model's plus one leaf's, not the whole initialiser's temporaries (the benchmark's RSS is the
    training's, not the set-up's)."""
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    normal = jax.jit(lambda key, s: scale * jax.random.normal(key, s.shape, s.dtype), static_argnums=1)
    return treedef.unflatten([normal(jax.random.PRNGKey(i), s) for i, s in enumerate(leaves)])


def one_batch_trainer(config, target, params, batch, workdir: str, devices=None) -> Trainer:
    """A Trainer of `config.alg`'s editor whose training and validation data are `batch` alone."""
    editor = editors.make_editor(config, target, params)
    data = type("OneBatch", (), {"train_batch": lambda self, step: batch, "eval_batch": lambda self, i: batch,
                                 "n_eval_batches": 1})()
    return Trainer(config, Experiment(editor, target, params, data, data, lambda m: 0.0), workdir, devices=devices)


def bench_config(alg: str, overrides=()):
    """The reference's config for `alg`, with `KEY=VALUE` overrides (values parsed as JSON when they can be)."""
    config = config_lib.base_config()
    config.alg = alg
    return config_lib.apply_alg_defaults(common.override(config, common.parse_overrides(overrides)))


def medians(fns: dict, steps: int, rounds: int) -> dict:
    """{name: median seconds of one call}, the functions taking turns, `steps` calls a round each."""
    for fn in fns.values():
        jax.block_until_ready(fn())  # warm
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(steps):
                t0 = time.perf_counter()
                jax.block_until_ready(fn())
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def compiled_bytes(compiled) -> dict:
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
            "temporaries": m.temp_size_in_bytes, "total": total}


def stream_triad():
    """(a jitted in-place y <- 1.5 x + y over STREAM_FLOATS float32 values, (x, y), bytes it moves):
    STREAM's triad, this process's measure of memory bandwidth. y is donated, so each call
    updates its buffer in place as the optimizer update does the train state's."""
    x = jnp.ones((STREAM_FLOATS,), jnp.float32)
    triad = jax.jit(lambda x, y: 1.5 * x + y, donate_argnums=1)
    return triad, [x, jnp.zeros_like(x)], 3 * x.nbytes


def peak_rss_mib() -> float:
    """The process's resident-set high-water mark so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_peak_mib():
    """The device's peak bytes in use so far in MiB (accelerators), or None where it does not say."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None


def measure(model: str, alg: str, dtype: str, steps: int, rounds: int, overrides=(), profile: bool = False,
            peak_tflops: float = None) -> dict:
    libraries_rss = peak_rss_mib()  # JAX, transformers (and torch if installed)
    config = bench_config(alg, overrides)
    target, params, batch = build(model, DTYPES[dtype], remat=config.model.remat)
    trainer = one_batch_trainer(config, target, params, batch, "/tmp/bench_mend")
    state = trainer.init_state()
    base = trainer.base_params
    grad_step = trainer._grad_step.lower(state, base, batch).compile()
    apply_step = trainer._apply_step.lower(state).compile()
    edit = trainer._edit_only  # compiles on its first call: it computes the edited matrices alone
    edit_batch = batch["edit_inner"]
    fwd_bwd = jax.jit(jax.grad(lambda p: target.nll(target.logits(p, edit_batch), edit_batch)))
    fwd_bwd = fwd_bwd.lower(params).compile()
    gemm_size = CPU_GEMM_SIZE if jax.devices()[0].platform == "cpu" else ACCELERATOR_GEMM_SIZE
    a = jnp.ones((gemm_size, gemm_size), DTYPES[dtype])
    gemm = jax.jit(lambda x: x @ x).lower(a).compile()

    def train_step():
        nonlocal state
        state, _ = grad_step(state, base, batch)
        state = apply_step(state)
        return state.params

    def update_only():
        nonlocal state
        state = apply_step(state)
        return state.params

    # The step first, beside the small GEMM: the peak RSS after it is the training's. The
    # forward+backward's gradient of the whole base model is the benchmark's, not training's.
    times = medians({"step": train_step, "gemm": lambda: gemm(a)}, steps, rounds)
    training_rss = peak_rss_mib()
    training_device_peak = device_peak_mib()
    triad, triad_args, triad_bytes = stream_triad()

    def stream():
        triad_args[1] = triad(*triad_args)
        return triad_args[1]

    times.update(medians({
        "edit": lambda: edit(state.params, state.stats, base, batch),
        "fwd_bwd": lambda: fwd_bwd(params),
        "update": update_only,
        "stream": stream,
    }, steps, rounds))
    grad_flops, update_flops = grad_step.cost_analysis()["flops"], apply_step.cost_analysis()["flops"]
    flops = grad_flops + update_flops
    gemm_rate, bandwidth = 2 * gemm_size**3 / times["gemm"], triad_bytes / times["stream"]
    update_bytes = compiled_bytes(apply_step)
    # The update reads and writes the train state at least once: its floor is memory traffic, not FLOPs.
    update_floor = (update_bytes["arguments"] + update_bytes["outputs"]) / bandwidth
    acc_bs = config.accumulate_bs
    batch_s = times["step"] - times["update"] + times["update"] / acc_bs  # a training batch's share
    row = {
        "model": model, "alg": alg, "dtype": dtype, "overrides": list(overrides),
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
        "step_s": times["step"], "gflop": flops / 1e9, "gflops_per_s": flops / times["step"] / 1e9,
        "gemm_size": gemm_size, "gemm_gflops_per_s": gemm_rate / 1e9,
        "step_over_floor": times["step"] / (flops / gemm_rate),
        "update_s": times["update"], "stream_gb_per_s": bandwidth / 1e9,
        "update_over_byte_floor": times["update"] / update_floor,
        "step_over_roofline": times["step"] / (grad_flops / gemm_rate + update_floor),
        "accumulate_bs": acc_bs, "batch_s": batch_s,
        "batch_over_floor": batch_s / ((grad_flops + update_flops / acc_bs) / gemm_rate),
        "edit_s": times["edit"], "fwd_bwd_s": times["fwd_bwd"], "edit_over_fwd_bwd": times["edit"] / times["fwd_bwd"],
        "peak_rss_mib": training_rss, "peak_rss_with_edit_mib": peak_rss_mib(),
        "libraries_rss_mib": libraries_rss, "torch_loaded": "torch" in sys.modules,
        "step_bytes": compiled_bytes(grad_step),
    }
    row.update(utilisation(flops / times["step"], dtype, peak_tflops))
    if training_device_peak is not None:
        row["device_peak_mib"] = training_device_peak
    if profile:
        row["profile"] = step_profile(grad_step, apply_step, state, base, batch)
    return row


def utilisation(flops_per_s: float, dtype: str, peak_tflops: float = None) -> dict:
    """The step's FLOP utilisation: its FLOP rate over the device's datasheet peak in the mode its
    products run in (device_peaks.py), or over `peak_tflops` when given; None where neither is known."""
    mode, datasheet = device_peaks.device_peak(dtype)
    peak = peak_tflops or datasheet
    source = "given" if peak_tflops else ("datasheet" if datasheet else None)
    return {"matmul_mode": mode, "peak_tflops": peak, "peak_source": source,
            "mfu": flops_per_s / (peak * 1e12) if peak else None}


def step_profile(grad_step, apply_step, state, base, batch) -> dict:
    """{"kinds": {kind: ms per step}, "slowest": [(ms, kind, shape, source)]} over both compiled steps."""
    holder = {"state": state}

    def run_grad():
        holder["state"], _ = grad_step(holder["state"], base, batch)
        return holder["state"].grad_acc

    def run_apply():
        holder["state"] = apply_step(holder["state"])
        return holder["state"].params

    kinds, products, slowest = {}, {}, []
    for fn, compiled in ((run_grad, grad_step), (run_apply, apply_step)):
        by_kind, ops = hlo_profile.profile(fn, compiled.as_text())
        for kind, seconds in by_kind.items():
            kinds[kind] = kinds.get(kind, 0.0) + seconds * 1e3
        for t, _, op in ops:
            if op.kind == "matmul":
                ms_flops = products.setdefault(product_group(op), [0.0, 0.0])
                ms_flops[0] += t * 1e3
                ms_flops[1] += op.flops
        slowest += [(t * 1e3, op.kind, op.shape, op.source) for t, _, op in ops]
    return {"kinds": kinds, "products": products, "slowest": sorted(slowest, reverse=True)[:12]}


def product_group(op) -> str:
    """A matmul's operand layout, and whether it has at most 32 rows (qa's and fc's batches
    have 8 and 32 tokens; a GEMM library runs such products below its large-matrix rate)."""
    rows = hlo_profile.dims(op.shape)[:1]
    small = op.form in ("NN", "NT") and rows and rows[0] <= 32
    return f"{op.form or '?'}{', <= 32 rows' if small else ''}"


def print_table(rows) -> None:
    """The rows as one Markdown table, then each profiled row's breakdown. A FLOP utilisation
    column is added when some row's device has a peak, and a device memory one when some row's
    device reports its peak bytes (accelerators)."""
    with_mfu = any(r.get("mfu") is not None for r in rows)
    with_device_memory = any("device_peak_mib" in r for r in rows)
    print(f"Device: {rows[0]['device']}; 1 edit + 1 locality example; medians")
    header = ("| model | alg | dtype | step (ms) | GFLOP | GFLOP/s | GEMM GFLOP/s | step / floor | update (ms) "
              "| triad GB/s | update / byte floor | step / roofline | batch / floor | edit (ms) "
              "| fwd+bwd (ms) | edit / fwd+bwd | peak RSS (MiB) | of which libraries | compiled step (MiB: args / temps / total) |")
    header += " MFU (mode, peak TFLOP/s) |" * with_mfu + " device peak (MiB) |" * with_device_memory
    print(header)
    print("|---" * header.count(" |") + "|")
    mib = lambda b: f"{b / 2**20:.0f}"
    for r in rows:
        b = r["step_bytes"]
        alg = r["alg"] + "".join(f" {o}" for o in r["overrides"])
        if r.get("host_memory", "trim") != "trim":
            alg += f", host memory {r['host_memory']}"
        if not r.get("huge_pages", True):
            alg += ", no huge pages"
        line = (f"| {r['model']} | {alg} | {r['dtype']} | {r['step_s'] * 1e3:.0f} | {r['gflop']:.1f} "
                f"| {r['gflops_per_s']:.0f} | {r['gemm_gflops_per_s']:.0f} | {r['step_over_floor']:.2f}x "
                f"| {r['update_s'] * 1e3:.0f} | {r['stream_gb_per_s']:.1f} | {r['update_over_byte_floor']:.2f}x "
                f"| {r['step_over_roofline']:.2f}x | {r['batch_over_floor']:.2f}x "
                f"| {r['edit_s'] * 1e3:.1f} | {r['fwd_bwd_s'] * 1e3:.1f} | {r['edit_over_fwd_bwd']:.2f}x "
                f"| {r['peak_rss_mib']:.0f} | {r['libraries_rss_mib']:.0f}{' (torch)' if r['torch_loaded'] else ''} "
                f"| {mib(b['arguments'])} / {mib(b['temporaries'])} / {mib(b['total'])} |")
        if with_mfu:
            mfu = r.get("mfu")
            line += f" {mfu:.1%} ({r['matmul_mode']}, {r['peak_tflops']:g}) |" if mfu is not None else " - |"
        if with_device_memory:
            line += f" {r['device_peak_mib']:.0f} |" if "device_peak_mib" in r else " - |"
        print(line)
    for r in rows:
        if "profile" not in r:
            continue
        total = sum(r["profile"]["kinds"].values())
        print(f"\nWhere {r['model']} {r['alg']}'s step goes (op time per step, {total:.0f} ms in all; "
              f"the step's wall time is {r['step_s'] * 1e3:.0f} ms):")
        print("| op kind | ms per step | share |\n|---|---|---|")
        for kind, ms in sorted(r["profile"]["kinds"].items(), key=lambda kv: -kv[1]):
            print(f"| {kind} | {ms:.1f} | {ms / total:.0%} |")
        print("\nIts matmuls by operand layout (NT: y = x Wᵀ, as a backward pass's dx = dy Wᵀ; TN: a weight "
              "gradient xᵀ dy), at the GEMM's rate above:")
        print("| matmul | ms per step | GFLOP | GFLOP/s | time / FLOP floor |\n|---|---|---|---|---|")
        for group, (ms, flops) in sorted(r["profile"]["products"].items(), key=lambda kv: -kv[1][0]):
            floor_ms = flops / (r["gemm_gflops_per_s"] * 1e9) * 1e3
            print(f"| {group} | {ms:.1f} | {flops / 1e9:.2f} | {flops / ms / 1e6:.0f} | {ms / floor_ms:.2f}x |")
        print("\nslowest ops: ms, kind, shape, source")
        for ms, kind, shape, source in r["profile"]["slowest"]:
            print(f"  {ms:7.1f}  {kind:14s} {shape[:40]:40s} {source[-90:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="distilgpt2",
                    help=f"comma-separated, of {', '.join(MODELS)}, or paths of local checkpoints")
    ap.add_argument("--algs", default="mend", help=f"comma-separated, of {', '.join(ALGS)}")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every row, e.g. --set opt_moments_dtype=bfloat16")
    ap.add_argument("--profile", action="store_true", help="also trace the step and group its ops by kind")
    ap.add_argument("--host_memory", default="trim", choices=host_memory.MODES,
                    help="the host allocator's mode, as train.py's flag (mend_jax/host_memory.py)")
    ap.add_argument("--huge_pages", default="on", choices=("on", "off"),
                    help="transparent huge pages for XLA's buffers, as train.py's --huge_pages")
    ap.add_argument("--json", action="store_true", help="print each row as JSON (one process per row)")
    ap.add_argument("--peak_tflops", type=float, default=None,
                    help="the device's peak TFLOP/s for the MFU column (default: benchmarks/device_peaks.py's datasheet value)")
    args = ap.parse_args()
    huge_pages = args.huge_pages == "on" and host_memory.use_huge_pages()  # may run this script again
    if not host_memory.configure(args.host_memory) and args.host_memory == "lean":
        ap.error("--host_memory lean needs glibc's malloc (Linux)")
    combos = [(m, a) for m in args.models.split(",") for a in args.algs.split(",")]
    for model, alg in combos:
        if not (model in ARCHITECTURES or is_checkpoint(model)) or alg not in ALGS:
            ap.error(f"unknown model {model!r} (neither an architecture nor a local checkpoint) or alg {alg!r}")
    if len(combos) == 1:
        row = measure(*combos[0], args.dtype, args.steps, args.rounds, args.set, args.profile, args.peak_tflops)
        row["host_memory"], row["huge_pages"] = args.host_memory, huge_pages
        if args.json:
            print(json.dumps(row))
        else:
            print_table([row])
        return
    rows = []
    for model, alg in combos:  # one process each: ru_maxrss is a process's high-water mark
        command = [sys.executable, os.path.abspath(__file__), "--models", model, "--algs", alg, "--json",
                   "--steps", str(args.steps), "--rounds", str(args.rounds), "--dtype", args.dtype,
                   "--host_memory", args.host_memory, "--huge_pages", args.huge_pages]
        command += [f"--set={s}" for s in args.set] + (["--profile"] if args.profile else [])
        command += ["--peak_tflops", str(args.peak_tflops)] if args.peak_tflops else []
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"measured {model} {alg}", file=sys.stderr, flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
