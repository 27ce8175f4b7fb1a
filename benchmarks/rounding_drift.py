"""How far two one-device runs drift apart when they start one fp32 rounding apart.

  python benchmarks/rounding_drift.py [--config configs/gen.py] [--max_iters 3000]

Runs the same meta-training twice on one device: as configured, and with the gradient
accumulator's non-zero entries moved to the next float32 away from 0 after every batch (a
relative change of about 6e-8 per batch, the size of one rounding). Prints both validation curves and their relative
differences, and the final metrics. This is the yardstick for a sharded run, whose
per-step results differ from the one-device step's by rounding alone (README,
"The main command on a (2, 4) mesh").
"""
import argparse
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

import common
from mend_jax import config_lib, experiments
from mend_jax.metric_log import read_metrics
from mend_jax.trainer import Trainer

METRICS = ("loss/total_edit_val", "edit/acc_val", "loss/loc_val", "drawdown_val")


def one_ulp_up(x):
    """Every non-zero entry moved to the next float32 away from 0 (zeros stay: U = 0 at the
    identity init, and the next float after 0 is a denormal that CPUs flush)."""
    return jnp.where(x == 0, x, jnp.nextafter(x, jnp.copysign(jnp.float32(np.inf), x)))


class OneUlpTrainer(Trainer):
    """A Trainer whose gradient accumulator is moved one float32 step away from 0 after every
    batch: the accumulated sum rounded once more, in one direction, as a sum taken in
    another order is rounded differently."""

    def _build_functions(self):
        super()._build_functions()
        grad_step = self._grad_step

        @jax.jit
        def bump(state):
            return state.replace(grad_acc=jax.tree_util.tree_map(one_ulp_up, state.grad_acc))

        def bumped_grad_step(state, base_params, batch):
            state, sums = grad_step(state, base_params, batch)
            return bump(state), sums

        self._grad_step = bumped_grad_step


def run(trainer_class, config_path: str, max_iters, workdir: str):
    shutil.rmtree(workdir, ignore_errors=True)
    config = config_lib.config_module(config_path).get_config(None)
    if max_iters is not None:
        config.max_iters = max_iters
    config_lib.apply_alg_defaults(config)
    results = trainer_class(config, experiments.build(config), workdir).run()
    return read_metrics(workdir, "_val"), results


def relative(a, b):
    return abs(a - b) / max(abs(a), 1e-12)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=os.path.join(common.REPO, "configs", "gen.py"))
    ap.add_argument("--max_iters", type=int, default=None)
    ap.add_argument("--workdir", default="/tmp/rounding_drift")
    args = ap.parse_args()
    assert jax.device_count() == 1, "run on one device (no --xla_force_host_platform_device_count)"
    curves, finals = {}, {}
    for name, cls in (("as configured", Trainer), ("accumulator + 1 ulp", OneUlpTrainer)):
        curves[name], finals[name] = run(cls, args.config, args.max_iters, os.path.join(args.workdir, name[:2]))
    a, b = curves.values()
    print("| step | " + " | ".join(f"{m} (a / b, rel. diff)" for m in METRICS[:2]) + " |")
    print("|---|---|---|")
    for ra, rb in zip(a, b):
        if METRICS[0] not in ra or "/final" in " ".join(ra):
            continue
        cells = [f"{ra[m]:.5f} / {rb[m]:.5f} ({relative(ra[m], rb[m]):.1e})" for m in METRICS[:2]]
        print(f"| {ra['step']} | " + " | ".join(cells) + " |")
    fa, fb = (finals[k]["results"] for k in finals)
    print("\nfinal (kept editor): " + ", ".join(f"{m} {fa[m]:.4f} / {fb[m]:.4f}" for m in METRICS))
    print("kept steps: " + " / ".join(str(finals[k]["kept_step"]) for k in finals))


if __name__ == "__main__":
    main()
