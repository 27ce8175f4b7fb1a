"""What a user asks to edit: prompts and new targets, from Python lists or a JSONL file.

A JSONL line is one edit: {"prompt": ..., "target": ...} and, optionally,
"rephrase" (a paraphrase of the prompt, scored for generalization), "locality"
(a prompt whose completion must not change), "portability_prompt" and
"portability_answer" (a consequence of the new fact). Every line is checked
before anything is edited, and an error names the file and line.
"""
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Dict, List, Optional

from mend_jax.data.io import DataFormatError, DataNotFoundError
from mend_jax.data.kilt import read_jsonl as read_objects

FIELDS = ("prompt", "target", "rephrase", "locality", "portability_prompt", "portability_answer")


class EditInputError(ValueError):
    """An edit request that cannot be carried out; the message names where it came from."""


@dataclasses.dataclass(frozen=True)
class EditRequests:
    """Parallel lists: edit i changes `prompts[i]` to continue with `targets[i]`."""

    prompts: List[str]
    targets: List[str]
    rephrases: List[str]  # empty, or one per edit
    locality_prompts: List[str]  # any number, shared by all edits
    portability_prompts: List[str]
    portability_answers: List[str]
    # Where each text came from, by field ("prompts", "rephrases", "locality_prompts",
    # "portability_prompts"): "edits.jsonl, line 3", for errors found after reading.
    origins: Dict[str, List[str]] = dataclasses.field(default_factory=dict, compare=False)

    def __len__(self) -> int:
        return len(self.prompts)

    def origin(self, field: str, i: int) -> str:
        given = self.origins.get(field)
        return given[i] if given and i < len(given) else f"{field}[{i}]"

    def with_locality(self, prompts: Sequence[str], origin: str) -> "EditRequests":
        """These requests with more locality prompts, each from `origin` (e.g. a command-line flag)."""
        extra = _strings(prompts, "locality_prompts", origin)
        origins = {**self.origins, "locality_prompts": [self.origin("locality_prompts", i)
                                                        for i in range(len(self.locality_prompts))] +
                   [origin] * len(extra)}
        return dataclasses.replace(self, locality_prompts=self.locality_prompts + extra, origins=origins)


def check_positive_int(name: str, value) -> None:
    """Raises EditInputError unless `value` is an int >= 1 (the CLI and the API check their
    numeric arguments with this one function)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EditInputError(f"{name} must be a positive integer, got {value!r}")


def _strings(values, name: str, where: str) -> List[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    if hasattr(values, "tolist") and not isinstance(values, Mapping):  # a numpy array of strings
        values = values.tolist()
    if not isinstance(values, Sequence):  # a dict or a set would give its keys in some order
        raise EditInputError(f"{where}: {name} must be a string or a list of strings, got {type(values).__name__}")
    values = list(values)
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise EditInputError(f"{where}: {name}[{bad}] is {type(values[bad]).__name__}, not a string")
    return values


def make_requests(prompts, targets, rephrases=None, locality_prompts=None, portability_prompts=None,
                  portability_answers=None, where: str = "edit()", origins=None) -> EditRequests:
    """Checks and packs the lists `Editor.edit` takes. `origins`: EditRequests.origins (default:
    each text named by `where` and its list and index)."""
    prompts, targets = _strings(prompts, "prompts", where), _strings(targets, "target_new", where)
    if not prompts:
        raise EditInputError(f"{where}: no edits (prompts is empty)")
    if len(prompts) != len(targets):
        raise EditInputError(f"{where}: {len(prompts)} prompts but {len(targets)} targets")
    rephrases = _strings(rephrases, "rephrase_prompts", where)
    if rephrases and len(rephrases) != len(prompts):
        raise EditInputError(f"{where}: {len(rephrases)} rephrase prompts for {len(prompts)} edits (give one per edit)")
    locality_prompts = _strings(locality_prompts, "locality_prompts", where)
    portability_prompts = _strings(portability_prompts, "portability_prompts", where)
    portability_answers = _strings(portability_answers, "portability_answers", where)
    if len(portability_prompts) != len(portability_answers):
        raise EditInputError(f"{where}: {len(portability_prompts)} portability prompts but "
                             f"{len(portability_answers)} portability answers")
    for name, values in (("prompts", prompts), ("target_new", targets), ("rephrase_prompts", rephrases),
                         ("locality_prompts", locality_prompts),
                         ("portability_prompts", portability_prompts), ("portability_answers", portability_answers)):
        empty = next((i for i, v in enumerate(values) if not v.strip()), None)
        if empty is not None:
            raise EditInputError(f"{where}: {name}[{empty}] is empty")
    fields = {"prompts": prompts, "rephrases": rephrases, "locality_prompts": locality_prompts,
              "portability_prompts": portability_prompts}
    origins = origins or {name: [f"{where}: {name}[{i}]" for i in range(len(values))]
                          for name, values in fields.items()}
    return EditRequests(prompts, targets, rephrases, locality_prompts, portability_prompts, portability_answers,
                        origins)


def _line_field(obj, field: str, where: str, required: bool) -> Optional[str]:
    if field not in obj:
        if required:
            raise EditInputError(f"{where}: missing field '{field}' (each line needs 'prompt' and 'target')")
        return None
    value = obj[field]
    if not isinstance(value, str):
        raise EditInputError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise EditInputError(f"{where}: field '{field}' is empty")
    return value


def read_jsonl(path: str) -> EditRequests:
    """The edits of a JSONL file (one object per line, blank lines skipped)."""
    try:
        objects = read_objects(path, "Write one JSON object per line, with 'prompt' and 'target'.")
    except (DataFormatError, DataNotFoundError) as e:
        raise EditInputError(str(e)) from None
    rows = []
    for number, obj in objects:
        where = f"{path}, line {number}"
        unknown = sorted(set(obj) - set(FIELDS))
        if unknown:
            raise EditInputError(f"{where}: unknown field(s) {unknown}; allowed: {', '.join(FIELDS)}")
        values = {f: _line_field(obj, f, where, required=f in ("prompt", "target")) for f in FIELDS}
        if (values["portability_prompt"] is None) != (values["portability_answer"] is None):
            raise EditInputError(f"{where}: 'portability_prompt' and 'portability_answer' come together")
        rows.append((where, values))
    if not rows:
        raise EditInputError(f"{path}: no edits (the file has no non-blank line)")
    with_rephrase = [w for w, v in rows if v["rephrase"] is not None]
    if with_rephrase and len(with_rephrase) != len(rows):
        missing = next(w for w, v in rows if v["rephrase"] is None)
        raise EditInputError(f"{missing}: no 'rephrase', while other lines have one (give all or none)")
    column = lambda f: [v[f] for _, v in rows if v[f] is not None]
    lines = lambda f: [w for w, v in rows if v[f] is not None]
    origins = {"prompts": lines("prompt"), "rephrases": lines("rephrase"), "locality_prompts": lines("locality"),
               "portability_prompts": lines("portability_prompt")}
    return make_requests(column("prompt"), column("target"), column("rephrase"), column("locality"),
                         column("portability_prompt"), column("portability_answer"), where=path, origins=origins)
