"""Meta-train (or evaluate) an editor.

  python -m mend_jax.train --config=configs/gen.py[:ARG] [--config.KEY=VALUE ...] [--workdir=DIR]

A run writes checkpoints, TensorBoard events and results.json under --workdir
and resumes from its latest checkpoint when started again with the same one.
"""
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mend_jax import config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/gen.py:distilgpt2.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard events and results.json go.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed.initialize() for a multi-process job: auto (in an srun step of several tasks, on a "
    "GKE TPU slice, or with --coordinator_address), on (e.g. on TPU VMs), or off.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (default: detected).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (default: detected).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (default: detected).")
_HOST_MEMORY = flags.DEFINE_enum(
    "host_memory", "trim", ["trim", "lean", "keep"],
    "CPU host memory (glibc; mend_jax/host_memory.py): trim gives the compiler's freed heap back after each "
    "compilation, at no measurable cost; lean also keeps every large buffer in a mapping of its own, for a "
    "lower peak RSS at 5-25% more step time; keep leaves the allocator alone (README, \"Running "
    "experiments\"). No number changes.")
_HUGE_PAGES = flags.DEFINE_bool(
    "huge_pages", True,
    "Back XLA's host buffers with transparent huge pages where the kernel gives them on request "
    "(glibc 2.35+; the process restarts itself once with GLIBC_TUNABLES=glibc.malloc.hugetlb=1): 3-12% "
    "shorter MEND steps on a 2-core CPU, no number changes. --nohuge_pages leaves the pages alone.")
flags.mark_flags_as_required(["config"])


def default_workdir(config) -> str:
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(config.model.name.rstrip("/")) or "model")
    if config.data.source == "world" and config_lib.world_name(config) != "default":
        model += f"_{config.data.world}"  # runs/gen_mend_world_small beside the default world's run
    return os.path.join("runs", f"{config.task}_{config.alg}_{model}")


def fail(message: str, code: int = 2):
    """One line on stderr instead of a traceback, for errors in what the user passed."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_flags(argv):
    """absl's flag parsing, with a bad --config.KEY as one line (ml_collections raises
    AttributeError, KeyError or TypeError from deep inside the parser)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        name = str(e).strip("\"'")
        culprit = next((a for a in argv[1:] if a.startswith("--config.") and name in a), None)
        fail(f"{culprit or 'a --config override'}: {'unknown config key ' + repr(name) if culprit else e}")


def make_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        fail(f"--workdir {workdir!r} is not writable: {e.strerror}")


def remove_if_unused(workdir: str, created: bool) -> None:
    """Removes a workdir this command created if the failed run left nothing of use in it: no
    checkpoint, no logged metric, no results (only its config and an empty log), so that a
    failed first attempt leaves no empty run behind."""
    if not created or not os.path.isdir(workdir):
        return
    from mend_jax.config_checks import config_path
    from mend_jax.metric_log import METRICS_JSONL

    def unused(path: str) -> bool:
        rel = os.path.relpath(path, workdir)
        return (path == config_path(workdir) or rel.startswith("tb" + os.sep)
                or (rel == METRICS_JSONL and os.path.getsize(path) == 0))

    if all(unused(os.path.join(root, name)) for root, _, names in os.walk(workdir) for name in names):
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def run(config, workdir: str):
    from mend_jax import config_checks, config_lib, experiments
    from mend_jax.trainer import Trainer

    config_lib.apply_alg_defaults(config)  # an unknown alg fails here, before any model is built
    config_checks.validate(config, trains=config.alg != "ft")  # before any model is built
    check_mesh(config)
    experiment = experiments.build(config)
    return Trainer(config, experiment, workdir).run()


def check_mesh(config) -> None:
    """The mesh keys against the job's devices, before any model is built."""
    import jax

    from mend_jax import config_checks, sharding

    n_data, _ = sharding.mesh_shape(config.mesh, jax.device_count())
    sharding.check_rules(config.sharding.rules)
    if config.alg != "ft":
        config_checks.check_data_parallel(config, n_data)


def summary_lines(results, task: str) -> list:
    r = results["results"]
    lines = [
        f"validation edits: {int(r['n_edits_evaluated_val'])}",
        f"edit success (edit/acc_val): {r['edit/acc_val']:.3f}",
    ]
    # gen's drawdown is a perplexity increase; qa's and fc's an accuracy drop.
    measure, name = ("perplexity", "perplexity") if task == "gen" else ("acc", "accuracy")
    if f"{measure}/pre_val" in r:
        lines.append(
            f"locality {name} pre/post: "
            f"{r[f'{measure}/pre_val']:.3f} / {r[f'{measure}/post_val']:.3f} (drawdown {r['drawdown_val']:+.3f})"
        )
    if results.get("steps_trained"):
        lines.append(
            f"batches skipped as non-finite: {results['n_skipped_batches']} of {results['steps_trained']}; "
            f"editor kept from step {results['kept_step']}"
        )
    lines.append(f"results: {results['results_path']}")
    return lines


def main(argv):
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from mend_jax import distributed

    from mend_jax import host_memory

    if _HUGE_PAGES.value:
        host_memory.use_huge_pages()  # may run this command again (same process id), before any output
    # Before the first buffer is allocated. Trimming is best-effort (a no-op without glibc); lean is asked for.
    if not host_memory.configure(_HOST_MEMORY.value) and _HOST_MEMORY.value == "lean":
        raise app.UsageError("--host_memory=lean needs glibc's malloc (Linux); this process has another allocator")
    # Before anything touches a device: every process of the job must join first.
    distributed.initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    config = _CONFIG.value
    workdir = _WORKDIR.value or default_workdir(config)
    created = not os.path.exists(workdir)
    make_workdir(workdir)
    print(f"workdir: {os.path.abspath(workdir)}")
    from mend_jax.checkpointing import CheckpointError
    from mend_jax.config_checks import ConfigError
    from mend_jax.data.io import DataFormatError, DataNotFoundError
    from mend_jax.sharding import MeshError
    from mend_jax.trainer import TrainingDiverged

    try:
        results = run(config, workdir)
    except (ConfigError, DataFormatError, DataNotFoundError, MeshError) as e:
        remove_if_unused(workdir, created)
        fail(str(e))
    except (TrainingDiverged, CheckpointError) as e:
        remove_if_unused(workdir, created)
        fail(str(e), code=1)
    if distributed.is_main():
        print("\n".join(summary_lines(results, config.task)))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
