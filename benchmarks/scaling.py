"""MEND meta-training over 1, 2, 4 and 8 devices: step time, per-device memory, collectives.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/scaling.py [--model distilgpt2]

Random weights of the model's shape and bench_mend.py's batches (1 edit + 1 locality
example). For each mesh, the jitted step the trainer runs (`grad_step` with data=1,
`group_step` over D batches otherwise) is compiled once; the table gives the median
time of a step plus the optimizer update, the per-device bytes that the compiled
step's `memory_analysis()` reports for arguments, outputs and temporaries (the total
counts the donated state, which outputs reuse, once), and the
bytes that its HLO's collectives (all-gather, all-reduce, reduce-scatter, ...) produce,
and the FLOPs per device from its `cost_analysis()`; the same for one vmapped validation call
of EVAL_CHUNK batches (the trainer's `evaluate`, each data-parallel device scoring its rows).
On simulated CPU devices the step times say nothing about speed-ups (the "devices"
share this machine's cores); the memory column is the point: it falls as fsdp grows.
"""
import argparse
import re
import statistics
import time

import jax
import numpy as np

import bench_mend
from mend_jax import config_lib
from mend_jax.data.batching import stack_batches

MESHES = [(1, 1), (1, 2), (1, 4), (1, 8), (2, 1), (8, 1), (2, 4)]
EVAL_CHUNK = 8  # validation batches per call: a multiple of every data axis above
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1, "f64": 8, "s64": 8}


def collective_bytes(hlo: str) -> dict:
    """{collective: bytes of its outputs} over the compiled HLO's instructions."""
    instruction = re.compile(r"=\s(.*?)\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
    totals = dict.fromkeys(COLLECTIVES, 0)
    for line in hlo.splitlines():
        match = instruction.search(line)
        if not match:
            continue
        for dtype, dims in re.findall(r"([a-z0-9]+)\[([0-9,]*)\]", match.group(1)):  # tuples hold several
            size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            totals[match.group(2)] += size * DTYPE_BYTES.get(dtype, 4)
    return totals


def measure(target, params, batch, data: int, fsdp: int, steps: int) -> dict:
    config = config_lib.apply_alg_defaults(config_lib.base_config())
    config.accumulate_bs = config.log_interval = config.val_interval = 8  # multiples of every data axis here
    config.mesh.data, config.mesh.fsdp = data, fsdp
    trainer = bench_mend.one_batch_trainer(config, target, params, batch, "/tmp/bench_scaling",
                                           devices=jax.devices()[: data * fsdp])
    state = trainer.init_state()
    if data == 1:
        step_fn, args = trainer._grad_step, (trainer.base_params, batch)
    else:
        step_fn, args = trainer._group_step, trainer._train_inputs(list(range(1, data + 1)))
        args = (trainer.base_params,) + args
    compiled = step_fn.lower(state, *args).compile()
    memory = compiled.memory_analysis()
    collectives = collective_bytes(compiled.as_text())
    flops = compiled.cost_analysis()["flops"]  # per device: an SPMD program is one device's share
    chunk = trainer._eval_input(stack_batches([batch] * EVAL_CHUNK))
    evaluate = trainer._evaluate.lower(state.params, state.stats, trainer.base_params, chunk).compile()

    def one_step():
        nonlocal state
        state, _ = step_fn(state, *args)
        state = trainer._apply_step(state)
        return state.params

    jax.block_until_ready(one_step())
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(one_step())
        times.append(time.perf_counter() - t0)
    return {
        "time": statistics.median(times),
        "arguments": memory.argument_size_in_bytes,
        "outputs": memory.output_size_in_bytes,
        "temporaries": memory.temp_size_in_bytes,
        "aliased": memory.alias_size_in_bytes,  # donated state: arguments that the outputs reuse
        "collectives": sum(collectives.values()),
        "gflops": flops / 1e9,
        "eval_gflops": evaluate.cost_analysis()["flops"] / 1e9,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="distilgpt2", choices=bench_mend.MODELS)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--meshes", default=",".join(f"{d}x{f}" for d, f in MESHES), help="DATAxFSDP,...")
    args = ap.parse_args()
    meshes = [tuple(int(v) for v in m.split("x")) for m in args.meshes.split(",")]
    if max(d * f for d, f in meshes) > jax.device_count():
        raise SystemExit(f"{jax.device_count()} devices; run with XLA_FLAGS=--xla_force_host_platform_device_count=8")
    target, params, batch = bench_mend.build(args.model)
    mib = lambda b: f"{b / 2**20:.0f}"
    print(f"MEND meta-train step on {args.model} shapes, fp32, {jax.devices()[0].platform} devices "
          f"({jax.devices()[0].device_kind}); batches per step = data; bytes per device")
    print("| devices | data x fsdp | step + update (ms) | arguments (MiB) | outputs (MiB) | temporaries (MiB) "
          f"| total (MiB) | collectives (MiB) | GFLOP per device | validation of {EVAL_CHUNK} batches: GFLOP per device |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for data, fsdp in meshes:
        r = measure(target, params, batch, data, fsdp, args.steps)
        total = r["arguments"] + r["outputs"] - r["aliased"] + r["temporaries"]
        print(f"| {data * fsdp} | {data} x {fsdp} | {r['time'] * 1e3:.0f} | {mib(r['arguments'])} | "
              f"{mib(r['outputs'])} | {mib(r['temporaries'])} | {mib(total)} | {mib(r['collectives'])} | {r['gflops']:.0f} | "
              f"{r['eval_gflops']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
