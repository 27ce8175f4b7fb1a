"""What zsRE (qa) and FEVER (fc) share: KILT-style JSONL rows and edit/locality sampling.

Both data sets come from De Cao et al. as JSONL files whose rows hold `input`,
`prediction`, `alternatives`, `filtered_rephrases` and `output[0].answer`.
Batches are pure functions of (seed, step) or of the eval index, as for gen.
"""
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mend_jax.data.batching import pad_right
from mend_jax.data.io import DataFormatError, DataNotFoundError, decode_utf8, require_file


# Our split names -> the names in De Cao et al.'s files.
KILT_SPLITS = {"train": "train", "valid": "dev", "dev": "dev"}


def split_path(data_dir: str, split: str, file_template: str, subdir: str, hint: str) -> str:
    """`data_dir`/FILE or `data_dir`/`subdir`/FILE, where FILE is `file_template` with the split's name."""
    if split not in KILT_SPLITS:
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    name = file_template.format(KILT_SPLITS[split])
    candidates = [os.path.join(data_dir, name), os.path.join(data_dir, subdir, name)]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise DataNotFoundError(f"{candidates[0]} does not exist (also looked for {candidates[1]}). {hint}")


def load_rows(path: str, parse: Callable[[Dict, str], Optional[Any]], hint: str) -> List[Any]:
    """`parse(obj, where)` of every row it does not drop (returns None for); an error if it drops all."""
    lines = read_jsonl(path, hint)
    rows = [parse(obj, f"{path}, line {lineno}") for lineno, obj in lines]
    rows = [r for r in rows if r is not None]
    if not rows:
        raise DataFormatError(
            f"{path}: empty split: none of its {len(lines)} rows has both 'alternatives' and 'filtered_rephrases'"
        )
    return rows


def read_jsonl(path: str, hint: str) -> List[Tuple[int, Dict[str, Any]]]:
    """(line number, object) for every non-blank line; errors name the file and the line."""
    require_file(path, hint)
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = decode_utf8(raw, f"{path}, line {lineno}")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}, line {lineno}: invalid JSON at column {e.colno}: {e.msg}") from e
            if not isinstance(obj, dict):
                raise DataFormatError(f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append((lineno, obj))
    return rows


def get_field(obj: Dict[str, Any], name: str, kind, where: str):
    """obj[name], checked to be an instance of `kind` (a type or a tuple of types)."""
    if name not in obj:
        raise DataFormatError(f"{where}: missing field '{name}'")
    value = obj[name]
    if not isinstance(value, kind):
        expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataFormatError(f"{where}: field '{name}' must be a {expected}, got {type(value).__name__}")
    return value


def get_strings(obj: Dict[str, Any], name: str, where: str) -> List[str]:
    values = get_field(obj, name, list, where)
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise DataFormatError(f"{where}: '{name}'[{bad}] is {type(values[bad]).__name__}, not a string")
    return values


def get_answer(obj: Dict[str, Any], where: str) -> str:
    """`output[0].answer`, the gold answer (zsRE) or label (FEVER)."""
    output = get_field(obj, "output", list, where)
    if not output or not isinstance(output[0], dict) or "answer" not in output[0]:
        raise DataFormatError(f"{where}: missing field 'output[0].answer'")
    if not isinstance(output[0]["answer"], str):
        raise DataFormatError(f"{where}: 'output[0].answer' must be a string, got {type(output[0]['answer']).__name__}")
    return output[0]["answer"]


def condition_text(row, target: str) -> str:
    """What EFK's conditioner reads for a zsRE row or FEVER claim edited to `target`
    (the reference's `cond` strings)."""
    return condition_string(row.prediction, target, row.input)


def condition_string(prediction: str, target: str, prompt: str) -> str:
    """The reference's `cond` string: the model's answer, the new one, and the question or claim."""
    return f"{prediction} >> {target} || {prompt}"


def check_tokenizer(tokenizer, model: str) -> None:
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no pad token, which {model} batches need for their "
            "static shapes; use the model's own tokenizer (T5, BART and BERT tokenizers define one) or set "
            "tokenizer.pad_token"
        )
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise ValueError(f"tokenizer pads on the {tokenizer.padding_side}; set tokenizer.padding_side = 'right'")


def encode(tokenizer, texts: Sequence[str], max_length: int) -> Dict[str, np.ndarray]:
    """Right-padded to exactly `max_length` tokens (truncating longer texts)."""
    seqs = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    ids, mask = pad_right(seqs, max_length, tokenizer.pad_token_id)
    return {"input_ids": ids, "attention_mask": mask}


def draw_excluding(rng: np.random.Generator, n: int, size: int, exclude: Sequence[int]) -> np.ndarray:
    """`size` indices in [0, n), with replacement, none of them in `exclude`.

    The reference redraws until the locality indices miss the edits; drawing
    from the complement directly gives the same distribution without the loop.
    """
    excluded = np.unique(np.asarray(exclude, np.int64))
    if n - len(excluded) < 1:
        raise ValueError(f"no locality example left: all {n} rows are edits of this batch")
    idx = rng.integers(0, n - len(excluded), size=size)
    for e in excluded:  # ascending: shift past each excluded index in turn
        idx = idx + (idx >= e)
    return idx
