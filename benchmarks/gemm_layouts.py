"""The rate of one jitted matrix product by its row count and operand layout.

  python benchmarks/gemm_layouts.py                 # the products of MEND's qa, fc and gen steps
  python benchmarks/gemm_layouts.py --cold          # each product with a weight out of the caches
  python benchmarks/gemm_layouts.py --swap          # x Wᵀ against (W xᵀ)ᵀ, as mend_jax/models/products.py computes it;
                                                    # x W against (Wᵀ xᵀ)ᵀ
  python benchmarks/gemm_layouts.py --libraries --cold   # the same products by numpy's BLAS and torch
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python benchmarks/gemm_layouts.py   # without YNNPACK

A meta-training step's forward passes compute y = x W (NN); its backward passes dx = dy Wᵀ
(NT: W contracted on its last axis). qa's and fc's batches give these products 8 or 32 rows.
`bench_mend.py --profile` reports the same split inside the step; this prints what the GEMM
library does with each shape alone, with a 2048-row product for reference.

With `--cold` each product multiplies a different weight, from a set of COLD_BYTES: a weight
is out of the caches when it is used, as in a meta-training step, where the model's other
matrices pass through between two uses of one. The weight's bytes over the product's time
are printed too: a product far below the triad's bandwidth (bench_mend.py) and the GEMM's
FLOP rate is limited by neither.

With `--swap` each NT product y = x Wᵀ is timed as written and as (W xᵀ)ᵀ, the weight-first
form that `mend_jax/models/products.py` uses for the backward products of at most
WEIGHT_FIRST_MAX_ROWS rows (x padded to a multiple of ROW_MULTIPLE rows); ratios above 1 favour
the weight-first form. It prints 30 rows too, which that form needs padded. A second table does
the same for the forward's NN product y = x W against (Wᵀ xᵀ)ᵀ, which contracts the weight on
its first axis: the form the library does not use.

With `--libraries` the NN and NT products are also computed by numpy (its BLAS) and torch (if
installed), from the same weights: whether another GEMM library does better with a short
operand on this machine than the one under XLA:CPU.
"""
import argparse
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mend_jax.models import products as library_products

# (K, N): t5-small's MLP and attention, its LM head, distilgpt2's LM head, MEND's 1536-wide net.
SHAPES = ((1024, 512), (512, 384), (32128, 512), (50257, 768), (1536, 1536))
ROWS = (8, 32, 200, 2048)
COLD_BYTES = 256 * 2**20  # 8 times this machine's 32 MiB L3


def seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def transposed_weight_first(x: jax.Array, w: jax.Array) -> jax.Array:
    """x (M, K) times w (K, N) computed as (wᵀ xᵀ)ᵀ: w contracted on its first axis, x padded as
    `swapped_product` pads it, the barrier keeping XLA from folding the transpose back."""
    rows = x.shape[0]
    flat = jnp.pad(x, ((0, -rows % library_products.ROW_MULTIPLE), (0, 0)))
    swapped = lax.dot_general(w, flat, (((0,), (1,)), ((), ())))  # (N, padded rows)
    return lax.optimization_barrier(swapped).T[:rows]


def weight_count(k: int, n: int, cold: bool) -> int:
    """How many (K, N) float32 weights a table cycles through: one warm, COLD_BYTES of them cold."""
    return max(1, COLD_BYTES // (4 * k * n)) if cold else 1


# Each multiplies x by every weight of a list: NN by weights (K, N), NT by weights (N, K).
_nn = jax.jit(lambda x, ws: [x @ w for w in ws])
_nt = jax.jit(lambda x, ws: [lax.dot_general(x, w, (((1,), (1,)), ((), ()))) for w in ws])


def products(k: int, n: int, cold: bool):
    """(NN, NT, NT weight first, NN weight first, the weights each call reads): NN multiplies
    x (M, K) by each weight (K, N), NT contracts each weight (N, K) on its last axis; one weight
    warm, COLD_BYTES of them cold."""
    count = weight_count(k, n, cold)
    key = jax.random.PRNGKey(0)
    w = [jax.random.normal(jax.random.fold_in(key, i), (k, n)) for i in range(count)]
    w_t = [jax.random.normal(jax.random.fold_in(key, i), (n, k)) for i in range(count)]
    wf = jax.jit(lambda x, ws: [library_products.swapped_product(x, w) for w in ws])
    nn_wf = jax.jit(lambda x, ws: [transposed_weight_first(x, w) for w in ws])
    return (lambda x: _nn(x, w)), (lambda x: _nt(x, w_t)), (lambda x: wf(x, w_t)), (lambda x: nn_wf(x, w)), count


def library_products_of(k: int, n: int, cold: bool):
    """{library: (x's conversion, NN, NT)} over the same weights (COLD_BYTES of them if cold), and
    their count: XLA, numpy and, if installed, torch."""
    count = weight_count(k, n, cold)
    rng = np.random.default_rng(0)
    w = [rng.standard_normal((k, n), dtype=np.float32) for _ in range(count)]
    w_t = [rng.standard_normal((n, k), dtype=np.float32) for _ in range(count)]
    jw, jw_t = [jnp.asarray(a) for a in w], [jnp.asarray(a) for a in w_t]
    forms = {
        "XLA": (jnp.asarray, lambda x: _nn(x, jw), lambda x: _nt(x, jw_t)),
        "numpy": (np.asarray, lambda x: [x @ a for a in w], lambda x: [x @ a.T for a in w_t]),
    }
    try:
        import torch
    except ImportError:
        return forms, count
    tw, tw_t = [torch.from_numpy(a) for a in w], [torch.from_numpy(a) for a in w_t]
    forms["torch"] = (torch.from_numpy, lambda x: [x @ a for a in tw], lambda x: [x @ a.T for a in tw_t])
    return forms, count


def library_names(libraries) -> str:
    """The libraries with the BLAS each runs on, for a table's title."""
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    names = {"XLA": f"XLA:CPU (jax {jax.__version__})", "numpy": f"numpy {np.__version__} ({blas['name']} {blas['version']})"}
    if "torch" in libraries:
        import torch

        blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
        names["torch"] = f"torch {torch.__version__} ({blas.group(1) if blas else 'its BLAS'}, {torch.get_num_threads()} threads)"
    return " / ".join(names[name] for name in libraries)


def print_library_tables(cold: bool, where: str, repeats: int):
    """GFLOP/s of the NN and then the NT products by each library, from the same weights."""
    layouts = (("y = x W (NN)", 1), ("y = x Wᵀ (NT)", 2))
    lines, libraries = [[] for _ in layouts], ()
    for k, n in SHAPES:
        forms, count = library_products_of(k, n, cold)
        libraries = tuple(forms)
        for (_, form), table in zip(layouts, lines):
            cells = []
            for m in ROWS:
                x = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
                gflop = 2 * m * k * n * count / 1e9
                rates = [gflop / seconds(f[form], f[0](x), repeats=repeats) for f in forms.values()]
                cells.append(" / ".join(f"{r:.0f}" for r in rates))
            table.append(f"| {k} × {n} | " + " | ".join(cells) + " |")
    titles = [f"GFLOP/s of {title}, x of M rows, {where}, by {library_names(libraries)}" for title, _ in layouts]
    print_tables(titles, lines, ROWS)


def print_swap_tables(rows, cold: bool, where: str, repeats: int):
    """Two tables of time ratios, as written over weight first: the NT products, then the NN.
    Each shape's weights are made once for both tables."""
    tables = (("y = x Wᵀ over time of (W xᵀ)ᵀ", (1, 2)), ("y = x W over time of (Wᵀ xᵀ)ᵀ", (0, 3)))
    lines = [[] for _ in tables]
    for k, n in SHAPES:
        forms = products(k, n, cold)
        for (_, (written, swapped)), table in zip(tables, lines):
            cells = []
            for m in rows:
                x = jax.random.normal(jax.random.PRNGKey(0), (m, k))
                cells.append(f"{seconds(forms[written], x, repeats=repeats) / seconds(forms[swapped], x, repeats=repeats):.2f}")
            table.append(f"| {k} × {n} | " + " | ".join(cells) + " |")
    device = jax.devices()[0].device_kind
    print_tables([f"Device: {device}; time of {title}, x of M rows, {where}" for title, _ in tables], lines, rows)


def print_tables(titles, tables, rows):
    """Each title over its table: one line per shape, one column per row count."""
    for title, table in zip(titles, tables):
        print(title)
        print("| K × N | " + " | ".join(f"M={m}" for m in rows) + " |")
        print("|---" * (len(rows) + 1) + "|")
        print("\n".join(table) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--cold", action="store_true", help="each product with a weight out of the caches")
    ap.add_argument("--swap", action="store_true", help="x Wᵀ against (W xᵀ)ᵀ and x W against (Wᵀ xᵀ)ᵀ: time ratios")
    ap.add_argument("--libraries", action="store_true", help="the NN and NT products by XLA, numpy's BLAS and torch")
    args = ap.parse_args()
    where = f"each weight cold (one of {COLD_BYTES >> 20} MiB of them)" if args.cold else "one warm weight"
    if args.swap:
        print_swap_tables(tuple(sorted(ROWS + (30,))), args.cold, where, args.repeats)
        return
    if args.libraries:
        print_library_tables(args.cold, where, args.repeats)
        return
    print(f"Device: {jax.devices()[0].device_kind}; GFLOP/s of y = x W (NN) and y = x Wᵀ (NT), x of M rows, {where}"
          + ("; then the weight's GB/s" if args.cold else ""))
    print("| K × N | " + " | ".join(f"M={m}: NN / NT" for m in ROWS) + " |")
    print("|---" * (len(ROWS) + 1) + "|")
    key = jax.random.PRNGKey(0)
    for k, n in SHAPES:
        nn, nt, _, _, count = products(k, n, args.cold)
        cells = []
        for m in ROWS:
            x = jax.random.normal(key, (m, k))
            gflop, gbyte = 2 * m * k * n * count / 1e9, 4 * k * n * count / 1e9
            t_nn, t_nt = seconds(nn, x, repeats=args.repeats), seconds(nt, x, repeats=args.repeats)
            cell = f"{gflop / t_nn:.0f} / {gflop / t_nt:.0f}"
            if args.cold:
                cell += f" ({gbyte / t_nn:.0f} / {gbyte / t_nt:.0f} GB/s)"
            cells.append(cell)
        print(f"| {k} × {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
