"""How long a run's validation takes: Trainer.evaluate over N edits, as a run validates.

  python benchmarks/validation_time.py                       # counterfact:smollm2-135m, 500 edits
  python benchmarks/validation_time.py --config counterfact:smollm2-135m --edits 500 --eval_chunk 8,16

Validation's cost does not depend on what the editor has learned, so a freshly initialised
editor is timed (the config's alg, MEND by default). The edits are the training split's, scored
as validation scores its own: the same prompts, length buckets and batches (real facts hold 65
validation cases, fewer than 500). The first call (compilation) is timed
apart; the table gives, per eval_chunk, the wall time for N edits and the seconds per edit.
"""
import argparse
import dataclasses
import tempfile
import time

import common


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="counterfact:smollm2-135m", help="EXPERIMENT:ARG of configs/")
    ap.add_argument("--edits", type=int, default=500)
    ap.add_argument("--eval_chunk", default=None, help="comma-separated validation batches per call "
                                                       "(default: the config's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (JSON value)")
    args = ap.parse_args()

    from mend_jax import config_lib, experiments
    from mend_jax.trainer import Trainer

    experiment, _, arg = args.config.partition(":")
    config = common.load_config(experiment, arg or None)
    config = config_lib.apply_alg_defaults(common.override(config, common.parse_overrides(args.set)))
    exp = experiments.build(config)
    exp = dataclasses.replace(exp, val_data=exp.train_data)  # enough cases; the same kind of batches
    n = min(args.edits // config.data.n_edits, exp.val_data.n_eval_batches)
    chunks = [int(c) for c in args.eval_chunk.split(",")] if args.eval_chunk else [config.eval_chunk]
    rows = []
    for chunk in chunks:
        config.eval_chunk = chunk
        with tempfile.TemporaryDirectory() as workdir:
            trainer = Trainer(config, exp, workdir)
            state = trainer.init_state()
            start = time.perf_counter()
            trainer.evaluate(state, trainer.eval_chunk_size(n))  # compiles the call, and runs it once
            first = time.perf_counter() - start
            start = time.perf_counter()
            metrics = trainer.evaluate(state, n)
            wall = time.perf_counter() - start
        edits = metrics["n_edits_evaluated"]
        rows.append((chunk, first, edits, wall))
        print(f"eval_chunk {chunk}: {edits} edits in {wall:.1f} s", flush=True)
    print(f"\n{args.config}, alg {config.alg}, val_batch_size {config.val_batch_size}\n")
    print("| eval_chunk | first call (s, with compilation) | edits | wall (s) | s / edit | 500 edits (min) |")
    print("|---|---|---|---|---|---|")
    for chunk, first, edits, wall in rows:
        print(f"| {chunk} | {first:.1f} | {edits} | {wall:.1f} | {wall / edits:.3f} | {500 * wall / edits / 60:.2f} |")


if __name__ == "__main__":
    main()
