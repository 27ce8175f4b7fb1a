"""How far one-device runs drift apart when they start one fp32 rounding apart.

  python benchmarks/rounding_drift.py [--config configs/gen.py] [--max_iters 3000] [--perturb ulp,1e-5]

Runs the same meta-training on one device as configured and once per `--perturb` entry:
- `ulp`: the gradient accumulator's non-zero entries moved to the next float32 away from 0
  after every batch (a relative change of about 6e-8 per batch, the size of one rounding);
- a number REL: before every update, REL x the leaf's root-mean-square added to or taken from
  each accumulated gradient entry (random signs), a norm-relative change of REL per window:
  the size of the sharded window's difference that `mesh_step_difference.py` measures. Like
  a sum's rounding error the change is absolute, not relative to the entry, so it can flip the
  sign of an entry near 0, which Adam's first steps turn into a difference of about lr.
Prints the validation curves and their relative differences from the unperturbed run, and the
final metrics. This is the yardstick for a sharded run, whose per-step results differ from
the one-device step's by rounding alone (README, "The main command on a (2, 4) mesh").
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


def shake(grad_acc, step, relative: float):
    """`grad_acc` with +- `relative` x each leaf's root-mean-square added to every entry, the
    signs drawn from `step`: a norm-relative change of exactly `relative` per leaf."""
    leaves, treedef = jax.tree_util.tree_flatten(grad_acc)
    keys = jax.random.split(jax.random.PRNGKey(step), len(leaves))
    signs = [jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return treedef.unflatten([x + relative * jnp.sqrt(jnp.mean(x * x)) * s for x, s in zip(leaves, signs)])


class NoisyTrainer(Trainer):
    """A Trainer that `shake`s the accumulated gradient by `relative` before every update."""

    relative = 0.0

    def _build_functions(self):
        super()._build_functions()
        apply_step, relative = self._apply_step, self.relative
        shaken = jax.jit(lambda state: state.replace(grad_acc=shake(state.grad_acc, state.step, relative)))
        self._apply_step = lambda state: apply_step(shaken(state))


def perturbed(name: str):
    """(label, Trainer class) of one `--perturb` entry."""
    if name == "ulp":
        return "accumulator + 1 ulp per batch", OneUlpTrainer
    relative = float(name)
    return f"accumulator +- {relative:g} rms per update", type("Noisy", (NoisyTrainer,), {"relative": relative})


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
    ap.add_argument("--perturb", default="ulp", help="comma-separated: ulp, or a relative size per update")
    ap.add_argument("--workdir", default="/tmp/rounding_drift")
    args = ap.parse_args()
    assert jax.device_count() == 1, "run on one device (no --xla_force_host_platform_device_count)"
    runs = [("as configured", Trainer)] + [perturbed(p) for p in args.perturb.split(",")]
    curves, finals = {}, {}
    for i, (name, cls) in enumerate(runs):
        curves[name], finals[name] = run(cls, args.config, args.max_iters, os.path.join(args.workdir, str(i)))
    base = curves["as configured"]
    for name in list(curves)[1:]:
        print(f"\n{name} against as configured:")
        print("| step | " + " | ".join(f"{m} (a / b, rel. diff)" for m in METRICS[:2]) + " |")
        print("|---|---|---|")
        for ra, rb in zip(base, curves[name]):
            if METRICS[0] not in ra or "/final" in " ".join(ra):
                continue
            cells = [f"{ra[m]:.5f} / {rb[m]:.5f} ({relative(ra[m], rb[m]):.1e})" for m in METRICS[:2]]
            print(f"| {ra['step']} | " + " | ".join(cells) + " |")
    print("\nfinal (kept editor), per run:")
    for name, final in finals.items():
        r = final["results"]
        print(f"  {name}: " + ", ".join(f"{m} {r[m]:.4f}" for m in METRICS) + f", kept step {final['kept_step']}")


if __name__ == "__main__":
    main()
