"""Natural Questions pairs, the qa experiment's locality data.

The reference's `nq/{train,validation}.json` is one JSON object with parallel
lists `questions` and `answers` (one short answer each).
"""
import dataclasses
import os
from typing import List

from mend_jax.data.io import DataFormatError, DataNotFoundError, read_json

NQ_HINT = (
    "Download the reference's data (the Google Drive folder linked in the MEND README) and unzip nq/ into the "
    "data directory, set --config.data.nq_path, use --config.data.loc_source=tfds:natural_questions_open, or "
    "turn NQ locality off with --config.data.zsre_nq=False (locality then comes from other zsRE rows)."
)
NQ_FILES = {"train": "train.json", "valid": "validation.json"}


@dataclasses.dataclass(frozen=True)
class QaPairs:
    questions: List[str]
    answers: List[str]
    source: str  # file (or description) named in error messages

    def __len__(self) -> int:
        return len(self.questions)


def parse_nq(obj, source: str) -> QaPairs:
    if not isinstance(obj, dict):
        raise DataFormatError(f"{source}: expected one JSON object with 'questions' and 'answers'")
    for field in ("questions", "answers"):
        if field not in obj:
            raise DataFormatError(f"{source}: missing field '{field}'")
        if not isinstance(obj[field], list):
            raise DataFormatError(f"{source}: field '{field}' must be a list, got {type(obj[field]).__name__}")
        bad = next((i for i, v in enumerate(obj[field]) if not isinstance(v, str)), None)
        if bad is not None:
            raise DataFormatError(f"{source}: '{field}'[{bad}] is {type(obj[field][bad]).__name__}, not a string")
    questions, answers = obj["questions"], obj["answers"]
    if len(questions) != len(answers):
        raise DataFormatError(f"{source}: {len(questions)} questions but {len(answers)} answers")
    if not questions:
        raise DataFormatError(f"{source}: empty split, no questions")
    return QaPairs(list(questions), list(answers), source)


def load_nq(path: str) -> QaPairs:
    return parse_nq(read_json(path, NQ_HINT), path)


def nq_path(directory: str, split: str) -> str:
    """`directory`/{train,validation}.json, or the same under `directory`/nq."""
    if split not in NQ_FILES:
        raise ValueError(f"split must be one of {sorted(NQ_FILES)}, got {split!r}")
    candidates = [os.path.join(directory, NQ_FILES[split]), os.path.join(directory, "nq", NQ_FILES[split])]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise DataNotFoundError(f"{candidates[0]} does not exist (also looked for {candidates[1]}). {NQ_HINT}")
