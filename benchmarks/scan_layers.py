"""Layers unrolled (the models' NumberedLayers) against layers under nn.scan: compile time and memory.

  python benchmarks/scan_layers.py [--model gpt2-xl] [--dtype float32] [--remat none] [--batch 1 --length 200]
  python benchmarks/scan_layers.py --topology v5e-8 ...   # one TPU v5e chip's compiler (needs libtpu)

The question of issue #12: does scanning over layers cut compile time or memory enough to
replace the unrolled loop? For a GPT-2-shaped decoder of `--model`'s size this compiles the
gradient of the LM loss on the reference's gen locality batch (1 passage of 200 tokens; or
--batch x --length) twice, from abstract shapes: with the project's GPT2LMHeadModel, and with the same blocks
under `nn.scan` (parameters stacked on a leading layer axis, as MaxText does). It prints the
lowering + compile time and `memory_analysis()` of each, and the run time of one gradient
(only with --run, which allocates random weights).
"""
import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import memory_plan
from mend_jax import losses, models
from mend_jax.models import attention
from mend_jax.models.architectures import ARCHITECTURES
from mend_jax.models.gpt2 import GPT2Block
from mend_jax.models.layers import DTYPES, REMAT_POLICIES, Embed, ModelPart

LENGTH = 200


class _CarriedBlock(ModelPart):
    """GPT2Block in nn.scan's (carry, x) -> (carry, y) form."""

    @nn.compact
    def __call__(self, h, mask):
        return GPT2Block(self.config, self.dtype, self.param_dtype, name="block")(h, mask, True), None


class ScannedGPT2(ModelPart):
    """GPT-2 with its blocks under nn.scan: one block's program, run n_layer times."""

    @nn.compact
    def __call__(self, input_ids):
        cfg = self.config
        wte = Embed(cfg.vocab_size, cfg.n_embd, self.dtype, self.param_dtype, name="wte")
        wpe = Embed(cfg.n_positions, cfg.n_embd, self.dtype, self.param_dtype, name="wpe")
        h = wte(input_ids) + wpe(jnp.arange(input_ids.shape[1])[None])
        block = _CarriedBlock
        if self.remat != "none":
            block = nn.remat(block, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                          in_axes=nn.broadcast, length=cfg.n_layer)
        h, _ = scanned(cfg, self.dtype, self.param_dtype, name="h")(h, attention.causal(input_ids.shape[1]))
        h = nn.LayerNorm(cfg.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name="ln_f")(h)
        return wte.attend(h)


def measure(module, ids, device, run: bool, steps: int = 3) -> dict:
    def loss(params, ids):
        return losses.masked_nll(module.apply({"params": params}, input_ids=ids), ids, True)

    on_device = jax.sharding.SingleDeviceSharding(device)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), input_ids=ids)["params"])
    shapes, ids_shape = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=on_device), (shapes, ids))
    t0 = time.perf_counter()
    compiled = jax.jit(jax.grad(loss)).lower(shapes, ids_shape).compile()
    compile_s = time.perf_counter() - t0
    m = compiled.memory_analysis()
    result = {"compile": compile_s, "arguments": m.argument_size_in_bytes, "temporaries": m.temp_size_in_bytes}
    if run:
        params = jax.jit(lambda: module.init(jax.random.PRNGKey(0), input_ids=ids)["params"])()
        jax.block_until_ready(compiled(params, ids))
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(params, ids))
            times.append(time.perf_counter() - t0)
        result["run"] = statistics.median(times)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    gpt2_shaped = [name for name, a in ARCHITECTURES.items() if a.make_config().model_type == "gpt2"]
    ap.add_argument("--model", default="gpt2-xl", choices=gpt2_shaped)
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--remat", default="none", choices=sorted(REMAT_POLICIES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--length", type=int, default=LENGTH)
    ap.add_argument("--topology", choices=sorted(memory_plan.TPU_TOPOLOGIES), help="compile for one chip of this slice")
    ap.add_argument("--run", action="store_true", help="also time one gradient (allocates the weights)")
    args = ap.parse_args()
    cfg = ARCHITECTURES[args.model].make_config()
    dtype = DTYPES[args.dtype]
    device = memory_plan.topology_devices(args.topology)[0] if args.topology else jax.devices()[0]
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.length)), jnp.int32)
    variants = {
        "unrolled (NumberedLayers)": models.build_module(cfg, dtype=dtype, remat=args.remat),
        "nn.scan": ScannedGPT2(cfg, dtype, dtype, remat=args.remat),
    }
    print(f"gradient of the LM loss, {args.model} shape ({cfg.n_layer} layers), {args.dtype}, remat={args.remat}, "
          f"{args.batch} x {args.length} tokens, {args.topology or device.platform}")
    print("| layers | lower + compile (s) | arguments (MiB) | temporaries (MiB) |" + (" run (ms) |" if args.run else ""))
    print("|---|---|---|---|" + ("---|" if args.run else ""))
    for name, module in variants.items():
        try:
            r = measure(module, ids, device, args.run and not args.topology)
        except jax.errors.JaxRuntimeError as e:  # a TPU compiler refuses what does not fit the chip
            print(f"| {name} | refused: {memory_plan._hbm_message(str(e))} |", flush=True)
            continue
        run = f" {r['run'] * 1e3:.0f} |" if args.run else ""
        print(f"| {name} | {r['compile']:.1f} | {r['arguments'] / 2**20:.0f} | {r['temporaries'] / 2**20:.0f} |{run}",
              flush=True)


if __name__ == "__main__":
    main()
