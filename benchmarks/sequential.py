"""MEND, ENN and FT making T edits one after another on the embedded world's gen model.

  python benchmarks/sequential.py                       # T = 1, 10, 100, 300; plot in benchmarks/
  python benchmarks/sequential.py --algs mend,ft --ts 1,10,50

Each editor applies one chain of edits with `Editor.edit(..., sequential=True)`: edit t is
computed on the model already edited t - 1 times. The edits are the world's facts, one
counterfactual each, written as the gen data writes its edits (template 0 after its context
of other true sentences, then the counterfactual object and the period); the rephrase is
template 1 alone. The validation split's facts come first, then the training split's (whose
other counterfactuals the editors saw in meta-training); the last facts of the training
split are kept unedited, and their statements under every template are the locality prompts.
After T edits the table reports:
- edit success: the share of edits 1..T that succeeded right after they were made;
- retention: the share of edits 1..T-1 that still succeed after edit T;
- locality: the share of locality prompts whose greedy completion is still the original's.

MEND and ENN use the editors that the main command's runs kept (runs/gen_mend_world,
runs/gen_enn_world: `python -m mend_jax.train --config=configs/gen.py [--config.alg=enn]`);
a missing run is trained first. FT needs no training. Prints a markdown table, writes
summary.json into --out and the plot (matplotlib) to --plot (the README's figure).
"""
import argparse
import json
import os
import time

import common

LABELS = {"mend": "MEND", "enn": "ENN", "ft": "FT"}


def edit_requests(n_edits: int, n_locality_facts: int, world: str = "default"):
    """(prompts, targets, rephrases, locality prompts) from the world's facts."""
    from mend_jax.world import formats, generate_world, preset

    facts = generate_world(preset(world)[0])
    ordered = formats.gen_edit_prompts(facts, "valid") + formats.gen_edit_prompts(facts, "train")
    if n_edits + n_locality_facts > len(ordered):
        raise SystemExit(f"the {world} world has {len(ordered)} facts: at most {len(ordered) - n_locality_facts} "
                         f"edits with {n_locality_facts} facts kept for locality")
    edited, kept = ordered[:n_edits], [f for f, _ in ordered[len(ordered) - n_locality_facts:]]
    prompts = [prompt for _, prompt in edited]
    rephrases = [f.prefix(1) for f, _ in edited]
    targets = [f"{f.alternative(0)}." for f, _ in edited]
    locality = [f.prefix(t) for f in kept for t in range(len(f.relation_spec.statements))]
    return prompts, targets, rephrases, locality


def load_editor(alg: str, args):
    from mend_jax import Editor, experiments
    from mend_jax.trainer import Trainer

    if alg == "ft":
        return Editor.from_config(common.override(common.load_config("gen"), {"alg": "ft"}), max_new_tokens=2)
    run = os.path.join(args.runs, f"gen_{alg}_world")
    if not os.path.isdir(os.path.join(run, "editor")):
        print(f"=== training {alg} into {run}", flush=True)
        config = common.override(common.load_config("gen"), {"alg": alg, "async_checkpointing": False})
        Trainer(config, experiments.build(config), run).run()
    return Editor.from_run(run, max_new_tokens=2)


def curve(alg: str, requests, args) -> dict:
    prompts, targets, rephrases, locality = requests
    editor = load_editor(alg, args)
    start = time.perf_counter()
    result = editor.edit(prompts, targets, rephrase_prompts=rephrases, locality_prompts=locality, sequential=True)
    history = result.history
    return {
        "alg": alg,
        "edit_success": [h["success_of_this_batch"] for h in history],
        "retention": [h["success_of_earlier"] for h in history],
        "locality": [h["locality"] for h in history],
        "generalization_after_all": result.metrics["generalization"],
        "wall_s": time.perf_counter() - start,
    }


def running_success(row: dict):
    """Edit success after each t: the share of edits 1..t that succeeded right after they were made."""
    successes = row["edit_success"]
    return [sum(successes[:t]) / t for t in range(1, len(successes) + 1)]


def at(row: dict, t: int) -> dict:
    """The table's three measures after t edits."""
    return {"edit_success": running_success(row)[t - 1], "retention": row["retention"][t - 1],
            "locality": row["locality"][t - 1]}


def table(rows, ts) -> str:
    lines = ["| editor | T | edit success | retention of earlier edits | locality |",
             "| --- | --- | --- | --- | --- |"]
    for row in rows:
        for t in ts:
            m = at(row, t)
            retention = "–" if m["retention"] is None else f"{m['retention']:.3f}"
            lines.append(f"| {LABELS[row['alg']]} | {t} | {m['edit_success']:.3f} | {retention} "
                         f"| {m['locality']:.3f} |")
    return "\n".join(lines)


def plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    for row in rows:
        t = list(range(1, len(row["edit_success"]) + 1))
        axes[0].plot(t, running_success(row), label=LABELS[row["alg"]])
        axes[1].plot(t[1:], row["retention"][1:], label=LABELS[row["alg"]])
        axes[2].plot(t, row["locality"], label=LABELS[row["alg"]])
    for ax, title in zip(axes, ("edit success (edits 1..T, right after each)", "retention of edits 1..T-1",
                                "locality (unedited facts unchanged)")):
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("T (sequential edits)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algs", default="mend,enn,ft", help=f"comma-separated subset of {','.join(LABELS)}")
    ap.add_argument("--ts", default="1,10,100,300", help="numbers of sequential edits to report")
    ap.add_argument("--locality_facts", type=int, default=14, help="facts kept unedited for locality")
    ap.add_argument("--runs", default="runs", help="where gen_{alg}_world runs are found (or trained)")
    ap.add_argument("--out", default=os.path.join("runs", "sequential"), help="where summary.json goes")
    ap.add_argument("--plot", default=os.path.join(common.REPO, "benchmarks", "sequential.png"))
    args = ap.parse_args()
    algs = [a.strip() for a in args.algs.split(",") if a.strip()]
    unknown = [a for a in algs if a not in LABELS]
    if unknown:
        ap.error(f"unknown editors {unknown}; choose from {list(LABELS)}")
    ts = sorted(int(t) for t in args.ts.split(","))
    requests = edit_requests(ts[-1], args.locality_facts)
    rows = []
    for alg in algs:
        print(f"=== {alg}: {ts[-1]} sequential edits", flush=True)
        rows.append(curve(alg, requests, args))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"ts": ts, "n_locality_prompts": len(requests[3]), "rows": rows}, f, indent=1)
    plot(rows, args.plot)
    print(f"\ngen on the embedded world: {ts[-1]} sequential edits, {len(requests[3])} locality prompts")
    print(table(rows, ts))
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
