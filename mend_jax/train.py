"""Meta-train (or evaluate) an editor.

  python -m mend_jax.train --config=configs/gen.py[:ARG] [--config.KEY=VALUE ...] [--workdir=DIR]

A run writes checkpoints, TensorBoard events and results.json under --workdir
and resumes from its latest checkpoint when started again with the same one.
"""
import os
import re

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/gen.py:distilgpt2.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard events and results.json go.")
flags.mark_flags_as_required(["config"])


def default_workdir(config) -> str:
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(config.model.name.rstrip("/")) or "model")
    return os.path.join("runs", f"{config.task}_{config.alg}_{model}")


def run(config, workdir: str):
    from mend_jax import config_lib, experiments
    from mend_jax.trainer import Trainer

    config_lib.apply_alg_defaults(config)  # an unknown alg fails here, before any model is built
    experiment = experiments.build(config)
    return Trainer(config, experiment, workdir).run()


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
    lines.append(f"results: {results['results_path']}")
    return lines


def main(argv):
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    workdir = _WORKDIR.value or default_workdir(config)
    os.makedirs(workdir, exist_ok=True)
    print(f"workdir: {os.path.abspath(workdir)}")
    results = run(config, workdir)
    print("\n".join(summary_lines(results, config.task)))


if __name__ == "__main__":
    app.run(main)
