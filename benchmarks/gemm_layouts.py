"""The rate of one jitted matrix product by its row count and operand layout.

  python benchmarks/gemm_layouts.py                 # the products of MEND's qa, fc and gen steps
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python benchmarks/gemm_layouts.py   # without YNNPACK

A meta-training step's forward passes compute y = x W (NN); its backward passes dx = dy Wᵀ
(NT: W contracted on its last axis). qa's and fc's batches give these products 8 or 32 rows.
`bench_mend.py --profile` reports the same split inside the step; this prints what the GEMM
library does with each shape alone, with a 2048-row product for reference.
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

# (K, N): t5-small's MLP and attention, its LM head, distilgpt2's LM head, MEND's 1536-wide net.
SHAPES = ((1024, 512), (512, 384), (32128, 512), (50257, 768), (1536, 1536))
ROWS = (8, 32, 200, 2048)


def seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    nn = jax.jit(lambda x, w: x @ w)
    nt = jax.jit(lambda x, w_t: lax.dot_general(x, w_t, (((1,), (1,)), ((), ()))))
    print(f"Device: {jax.devices()[0].device_kind}; GFLOP/s of y = x W (NN) and y = x Wᵀ (NT), x of M rows")
    print("| K × N | " + " | ".join(f"M={m}: NN / NT" for m in ROWS) + " |")
    print("|---" * (len(ROWS) + 1) + "|")
    key = jax.random.PRNGKey(0)
    for k, n in SHAPES:
        w, w_t = jax.random.normal(key, (k, n)), jax.random.normal(key, (n, k))
        cells = []
        for m in ROWS:
            x = jax.random.normal(key, (m, k))
            gflop = 2 * m * k * n / 1e9
            cells.append(f"{gflop / seconds(nn, x, w, repeats=args.repeats):.0f} / "
                         f"{gflop / seconds(nt, x, w_t, repeats=args.repeats):.0f}")
        print(f"| {k} × {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
