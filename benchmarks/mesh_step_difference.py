"""How far one sharded meta-training window is from the same window on one device.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/mesh_step_difference.py \
      [--config configs/gen.py] [--mesh 2,4] [--windows 3]

For each of the first `--windows` accumulation windows, starts the one-device trainer and the
sharded one from the same state (the one-device run's), takes the window's batches on each
(one at a time, and in groups of `data` as the sharded run does) and prints the norm-relative
difference ||a - b|| / ||a|| of the accumulated gradient, of MEND's running statistics, and of
the optimizer's update. This is the size of perturbation that `rounding_drift.py --perturb REL`
gives a one-device run (README, "The main command on a (2, 4) mesh").
"""
import argparse
import os
import shutil

import jax
import numpy as np

import common
from mend_jax import config_lib, data_parallel, experiments
from mend_jax.trainer import Trainer


def norm_relative(a, b) -> float:
    """||a - b|| / ||a|| over every leaf of two trees (0 when both are empty)."""
    a = [np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(jax.device_get(a))]
    b = [np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(jax.device_get(b))]
    if not a:
        return 0.0
    a, b = np.concatenate(a), np.concatenate(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def window_on(trainer, state, first: int, last: int):
    """`state` after batches first..last, grouped as `trainer` groups them on its mesh."""
    step = first
    while step <= last:
        indices = data_parallel.group(step, trainer.n_data, last + 1)
        state, _ = trainer._train_group(state, indices)
        step = indices[-1] + 1
    return state


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=os.path.join(common.REPO, "configs", "gen.py"))
    ap.add_argument("--mesh", default="2,4", help="data,fsdp")
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/mesh_step_difference")
    args = ap.parse_args()
    data, fsdp = (int(s) for s in args.mesh.split(","))
    assert jax.device_count() >= data * fsdp, "simulate devices: XLA_FLAGS=--xla_force_host_platform_device_count=8"
    shutil.rmtree(args.workdir, ignore_errors=True)
    config = config_lib.apply_alg_defaults(config_lib.config_module(args.config).get_config(None))
    experiment = experiments.build(config)
    single = Trainer(config, experiment, os.path.join(args.workdir, "1x1"), devices=jax.devices()[:1])
    meshed = config.copy_and_resolve_references()
    meshed.mesh.data, meshed.mesh.fsdp = data, fsdp
    sharded = Trainer(meshed, experiment, os.path.join(args.workdir, args.mesh), devices=jax.devices()[:data * fsdp])
    state = single.init_state()
    acc = config.accumulate_bs
    print(f"| window (batches) | accumulated gradient | statistics | update |\n|---|---|---|---|")
    first = 0
    for w in range(args.windows):
        last = acc if w == 0 else first + acc - 1  # the reference's first window holds one batch more
        start = jax.device_get(state)  # the steps donate their input state
        want = jax.device_get(window_on(single, jax.device_put(start, single.state_shardings), first, last))
        got = jax.device_get(window_on(sharded, jax.device_put(start, sharded.state_shardings), first, last))
        want_next = jax.device_get(single._apply_step(jax.device_put(want, single.state_shardings)))
        got_next = jax.device_get(sharded._apply_step(jax.device_put(got, sharded.state_shardings)))
        update = lambda nxt: jax.tree_util.tree_map(lambda n, o: n - o, nxt.params, start.params)
        print(f"| {w} ({first}-{last}) | {norm_relative(want.grad_acc, got.grad_acc):.1e} "
              f"| {norm_relative(want.stats, got.stats):.1e} | {norm_relative(update(want_next), update(got_next)):.1e} |",
              flush=True)
        state, first = jax.device_put(want_next, single.state_shardings), last + 1


if __name__ == "__main__":
    main()
