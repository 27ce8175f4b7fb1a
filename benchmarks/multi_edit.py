"""Edit success when k facts are edited at once, on the embedded qa world (MEND and ENN).

  python benchmarks/multi_edit.py                          # k = 1, 5, 25; 4,000 meta-training steps each
  python benchmarks/multi_edit.py --ks 1,5 --algs mend --max_iters 1000

For each editor and k, an editor is meta-trained with configs/qa.py's world
settings on batches of k edits and one locality question (batch_size = k + 1,
as in the paper; validation batches k + 4), then evaluated on the whole dev
split, k edits per batch. Prints a markdown table: edit success (every edited
answer right on its rephrased question), accuracy drawdown on the locality
questions, the number of k-edit batches evaluated, the step early stopping
kept and the wall time of the run.
"""
import argparse
import json
import os
import shutil
import time

import common

LABELS = {"mend": "MEND", "enn": "ENN", "efk": "EFK (KE)", "ft": "FT"}


def run_one(alg: str, k: int, args) -> dict:
    from mend_jax import experiments
    from mend_jax.trainer import Trainer

    config = common.load_config("qa")
    common.override(config, {"alg": alg, "data.n_edits": k, "batch_size": k + 1, "val_batch_size": k + 4,
                             "async_checkpointing": False})
    common.shorten(config, args.max_iters)
    workdir = os.path.join(args.workdir, f"{alg}_{k}")
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    results = Trainer(config, experiments.build(config), workdir).run()
    r = results["results"]
    return {
        "alg": alg, "k": k, "edit_success": r["edit/acc_val"], "acc_drawdown": r["drawdown_val"],
        "acc_pre": r["acc/pre_val"], "batches": int(r["n_batches_evaluated_val"]),
        "kept_step": results["kept_step"], "wall_s": time.perf_counter() - start,
    }


def table(rows) -> str:
    lines = ["| editor | k | edit success | accuracy drawdown | k-edit batches evaluated | step kept | wall time |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(
            f"| {LABELS[row['alg']]} | {row['k']} | {row['edit_success']:.3f} | {row['acc_drawdown']:+.3f} "
            f"| {row['batches']} | {row['kept_step']} | {row['wall_s']:.0f} s |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algs", default="mend,enn", help=f"comma-separated subset of {','.join(LABELS)}")
    ap.add_argument("--ks", default="1,5,25", help="edits per batch, comma-separated")
    ap.add_argument("--max_iters", type=int, default=4000, help="meta-training steps per run")
    ap.add_argument("--workdir", default=os.path.join("runs", "multi_edit"))
    args = ap.parse_args()
    algs = [a.strip() for a in args.algs.split(",") if a.strip()]
    unknown = [a for a in algs if a not in LABELS]
    if unknown:
        ap.error(f"unknown editors {unknown}; choose from {list(LABELS)}")
    rows = []
    for alg in algs:
        for k in (int(x) for x in args.ks.split(",")):
            print(f"=== {alg}, k={k}", flush=True)
            rows.append(run_one(alg, k, args))
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "summary.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(f"\nqa on the embedded world, {args.max_iters} meta-training steps per run")
    print(table(rows))


if __name__ == "__main__":
    main()
