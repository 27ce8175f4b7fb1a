"""MEND meta-training memory per device, from abstract shapes, compiled ahead of time.

  python benchmarks/memory_plan.py --model gpt-j-6b --mesh fsdp=8 --dtype bfloat16 --remat full
  python benchmarks/memory_plan.py --table            # the README's table (every model, 1 and 8 devices)

The base model's parameters are `jax.ShapeDtypeStruct`s: nothing is downloaded or allocated.
The trainer's real jitted step (one batch's meta-gradient: the edit, the post-edit losses and
their backward pass; `grad_step`, or `group_step` with a data axis) is lowered for them with
the mesh's shardings and compiled; `compiled.memory_analysis()` gives the bytes per device of
its arguments, outputs and temporaries. The total counts the donated train state, which the
outputs reuse, once. The optimizer update (a separate, smaller step) is compiled too, and the
plan's peak is the larger of the two. The batch is the reference's gen batch (1 edit of 30
tokens + 1 locality passage of 200) or qa batch (32 + 8 tokens).

Devices: the default backend's when it has enough of them, else this host's CPU, split into
8 simulated devices (XLA_FLAGS is set below, before JAX starts). CPU buffer assignment is a
proxy for an accelerator's: the argument and output bytes are exact, temporaries are XLA's
CPU figure. The "from shapes" columns need no compiler: base weights, editor state (editor
parameters, Adam's two moments and the gradient accumulator, fp32), per device.
"""
import argparse
import os
import re
import sys
from typing import Optional

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import bench_mend  # noqa: E402
import common  # noqa: E402
from mend_jax import config_lib  # noqa: E402
from mend_jax.models.layers import DTYPES, REMAT_POLICIES  # noqa: E402
from mend_jax.sharding import over_data  # noqa: E402

BUDGETS_GIB = {"v5e (16 GiB)": 16, "v4 (32 GiB)": 32, "A100/H100 (80 GiB)": 80}  # HBM per chip
TABLE_MODELS = ["distilgpt2", "gpt2-xl", "gpt-j-6b", "llama3-8b", "t5-xl", "t5-xxl"]
TABLE_SETTINGS = [("float32", "none"), ("bfloat16", "full")]
TABLE_MESHES = [(1, 1), (1, 8)]


# TPU slices by their usual names: (topology, chip config). v4 chips run as one "megacore"
# device each, so a v4-8 is 4 devices; a v5e-8 is 8.
TPU_TOPOLOGIES = {"v4-8": ("v4:2x2x1", "megacore"), "v5e-8": ("v5e:2x4", "default")}


def topology_devices(topology: str):
    """The devices of a TPU slice, which need no TPU: libtpu compiles for its topology ahead of
    time (`pip install -e ".[tpu]"` on any machine)."""
    from jax.experimental import topologies

    name, chip_config = TPU_TOPOLOGIES[topology]
    return topologies.get_topology_desc(name, "tpu", chip_config_name=chip_config).devices


def pick_devices(n: int, topology: Optional[str] = None):
    """`n` devices: of a TPU slice's topology, of the default backend, or of this host's CPU."""
    if topology:
        devices = topology_devices(topology)
        if n not in (1, len(devices)):
            raise SystemExit(f"{topology} has {len(devices)} devices; plan for 1 or all {len(devices)}")
        return devices[:n]
    if len(jax.devices()) >= n:
        return jax.devices()[:n]
    cpus = jax.devices("cpu")
    if len(cpus) < n:
        raise SystemExit(f"{n} devices needed, {len(cpus)} CPU devices here: set "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={n}")
    return cpus[:n]


def abstract(tree, sharding_of):
    """Shapes and dtypes of `tree`, laid out by `sharding_of(leaf)`: what a compile needs."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_of(x)), tree)


def tree_bytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


def plan(model: str, data: int, fsdp: int, dtype: str, remat: str, topology: Optional[str] = None) -> dict:
    """Per-device bytes of MEND's meta-training steps on `model`, with nothing allocated."""
    target, params, batch = bench_mend.build(model, DTYPES[dtype], abstract=True, remat=remat)
    config = config_lib.apply_alg_defaults(common.load_config(*_experiment(model)))
    config.accumulate_bs = config.log_interval = config.val_interval = 8  # multiples of any data axis here
    config.mesh.data, config.mesh.fsdp = data, fsdp
    config.model.dtype, config.model.remat = dtype, remat
    devices = pick_devices(data * fsdp, topology)
    trainer = bench_mend.one_batch_trainer(config, target, params, batch, "/tmp/memory_plan", devices=devices)
    state = trainer.abstract_state()
    if data == 1:
        step = trainer._grad_step.lower(state, trainer.base_params, abstract(batch, lambda _: trainer.replicated))
    else:  # one batch per data-parallel device, stacked
        batches = jax.tree_util.tree_map(lambda x: np.zeros((data,) + x.shape, x.dtype), batch)
        step = trainer._group_step.lower(state, trainer.base_params, abstract(batches, lambda _: over_data(trainer.mesh)),
                                         abstract(np.ones(data, bool), lambda _: trainer.replicated))
    try:
        grad_memory = _memory(step.compile())
        update_memory = _memory(trainer._apply_step.lower(state).compile())
    except jax.errors.JaxRuntimeError as e:  # TPU compilers refuse programs larger than the chip's HBM
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return {"devices": f"{topology or devices[0].platform} x{len(devices)}", "refused": _hbm_message(str(e)),
                "base": tree_bytes(params) / fsdp,
                "editor_state": tree_bytes((state.params, state.opt_state, state.grad_acc)) / fsdp}
    return {
        "devices": f"{topology or devices[0].platform} x{len(devices)}",
        "base": tree_bytes(params) / fsdp,  # fsdp shards every large leaf; tiny ones are replicated
        "editor_state": tree_bytes((state.params, state.opt_state, state.grad_acc)) / fsdp,
        **grad_memory,
        "peak": max(grad_memory["total"], update_memory["total"]),
    }


def _experiment(model: str):
    arch = bench_mend.ARCHITECTURES[model]
    return arch.experiment, arch.arg


def _hbm_message(error: str) -> str:
    """The compiler's own words on how much HBM the program needs."""
    match = re.search(r"Ran out of memory[^\n]*", error)
    return (match.group(0) if match else error.splitlines()[0])[:200].strip()


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
            "temporaries": m.temp_size_in_bytes, "total": total}


def gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


HEADER = ("| model | dtype, remat | devices (data x fsdp) | base weights (GiB) | editor state (GiB) | arguments (GiB) "
          "| outputs (GiB) | temporaries (GiB) | peak (GiB) | fits |")


def row(model, dtype, remat, data, fsdp, r) -> str:
    if "refused" in r:
        return (f"| {model} | {dtype}, {remat} | {r['devices']} ({data} x {fsdp}) | {gib(r['base'])} | "
                f"{gib(r['editor_state'])} | - | - | - | - | no: the compiler says \"{r['refused']}\" |")
    fits = ", ".join(name for name, gb in BUDGETS_GIB.items() if r["peak"] <= gb * 2**30) or "none of 16/32/80 GiB"
    return (f"| {model} | {dtype}, {remat} | {r['devices']} ({data} x {fsdp}) | {gib(r['base'])} | "
            f"{gib(r['editor_state'])} | {gib(r['arguments'])} | {gib(r['outputs'])} | {gib(r['temporaries'])} | "
            f"{gib(r['peak'])} | {fits} |")


def parse_mesh(text: str):
    sizes = {"data": 1, "fsdp": 1}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in sizes or not value.isdigit():
            raise SystemExit(f"--mesh {text!r}: expected e.g. fsdp=8 or data=2,fsdp=4")
        sizes[key] = int(value)
    return sizes["data"], sizes["fsdp"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt-j-6b", choices=bench_mend.MODELS)
    ap.add_argument("--mesh", default="fsdp=1", help="data=D,fsdp=F (default: one device)")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--remat", default="none", choices=sorted(REMAT_POLICIES))
    ap.add_argument("--topology", choices=sorted(TPU_TOPOLOGIES), help="compile for this TPU slice (needs libtpu)")
    ap.add_argument("--table", action="store_true",
                    help=f"{TABLE_MODELS} x {TABLE_SETTINGS} x (1 and 8 devices; with --topology the whole slice)")
    args = ap.parse_args()
    if args.table:
        # A TPU slice's table is the whole slice (one chip's question is the CPU table's 1-device row).
        meshes = [(1, len(topology_devices(args.topology)))] if args.topology else [(1, 1), (1, 8)]
        runs = [(m, d, f, dt, rm) for m in TABLE_MODELS for dt, rm in TABLE_SETTINGS for d, f in meshes]
    else:
        runs = [(args.model, *parse_mesh(args.mesh), args.dtype, args.remat)]
    print(f"MEND meta-training step, bytes per device from compiled.memory_analysis() (jax {jax.__version__})")
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    for model, data, fsdp, dtype, remat in runs:
        r = plan(model, data, fsdp, dtype, remat, args.topology)
        print(row(model, dtype, remat, data, fsdp, r), flush=True)


if __name__ == "__main__":
    sys.exit(main())
