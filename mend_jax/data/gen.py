"""The `gen` experiment's data: edits from self_sample, locality from wikitext.

An edit is a whole completion whose last `n_tokens` tokens are the target;
`edit_outer` is the same completion without a random prefix; locality passages
are wikitext-103 lines of at least 50 words, pure ASCII.
"""
import dataclasses
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from mend_jax.data.batching import (
    EditBatches, bucket_length, check_sizes, check_tokenizer, lm_labels, pad_right, shift_left,
)
from mend_jax.data.io import DataFormatError, DataNotFoundError, read_json, read_lines
from mend_jax.losses import IGNORE

SELF_SAMPLE_HINT = (
    "Download the reference's data from its Google Drive folder (linked in the MEND README) and unzip it "
    "into the data directory, so that it holds 10token/data/self_sample/{train,valid}.json. "
    "The embedded default needs no download: python -m mend_jax.train --config=configs/gen.py"
)
WIKITEXT_HINT = (
    "Download wikitext-103 raw (wikitext-103-raw-v1.zip, with wiki.train.raw and wiki.valid.raw) and unzip it "
    "into the data directory, or name any text file with one passage per line."
)
FIELDS = ("original", "completions", "n_tokens")
MIN_WORDS = 50
WIKITEXT_FILES = {"train": "wiki.train.raw", "valid": "wiki.valid.raw"}


@dataclasses.dataclass(frozen=True)
class Edits:
    completions: List[str]
    n_tokens: int
    source: str  # file (or description) named in error messages


def parse_self_sample(obj, source: str) -> Edits:
    """Checks one self_sample object: {"original": [...], "completions": [...], "n_tokens": int}."""
    if not isinstance(obj, dict):
        raise DataFormatError(f"{source}: expected one JSON object with fields {FIELDS}, got {type(obj).__name__}")
    for field in FIELDS:
        if field not in obj:
            raise DataFormatError(f"{source}: missing field '{field}'")
    original, completions, n_tokens = (obj[f] for f in FIELDS)
    for field in ("original", "completions"):
        if not isinstance(obj[field], list):
            raise DataFormatError(f"{source}: field '{field}' must be a list, got {type(obj[field]).__name__}")
    if len(original) != len(completions):
        raise DataFormatError(
            f"{source}: 'original' has {len(original)} entries but 'completions' has {len(completions)}"
        )
    if not completions:
        raise DataFormatError(f"{source}: empty split, 'completions' has no edits")
    bad = next((i for i, c in enumerate(completions) if not isinstance(c, str)), None)
    if bad is not None:
        raise DataFormatError(f"{source}: 'completions'[{bad}] is {type(completions[bad]).__name__}, not a string")
    if not isinstance(n_tokens, int) or isinstance(n_tokens, bool) or n_tokens < 1:
        raise DataFormatError(f"{source}: field 'n_tokens' must be a positive integer, got {n_tokens!r}")
    return Edits(list(completions), n_tokens, source)


def load_self_sample(path: str) -> Edits:
    return parse_self_sample(read_json(path, SELF_SAMPLE_HINT), path)


def self_sample_path(data_dir: str, split: str) -> str:
    """The split's file under `data_dir`, as unzipped from the reference's archive or flattened."""
    if split not in ("train", "valid", "validation"):
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    name = split[:5] + ".json"  # the reference's own mapping: "validation" -> valid.json
    candidates = [
        os.path.join(data_dir, *sub, name)
        for sub in (("10token", "data", "self_sample"), ("data", "self_sample"), ("self_sample",), ())
    ]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise DataNotFoundError(f"{candidates[0]} does not exist (also looked for {candidates[1:]}). {SELF_SAMPLE_HINT}")


def keep_passage(text: str) -> bool:
    """The reference's filter: at least 50 space-separated words, pure ASCII."""
    return len(text.split(" ")) >= MIN_WORDS and text.isascii()


def load_passages(path: str, pct: float = 100.0) -> List[str]:
    """Locality passages: the first `pct`% of the file's lines that pass `keep_passage`."""
    passages = [line for line in read_lines(path, WIKITEXT_HINT, pct) if keep_passage(line)]
    if not passages:
        raise DataFormatError(
            f"{path}: no passage survives the filter (>= {MIN_WORDS} space-separated words, pure ASCII) "
            f"in the first {pct}% of its lines"
        )
    return passages


def find_wikitext(directory: str) -> Dict[str, str]:
    """Paths of wiki.train.raw and wiki.valid.raw anywhere under `directory`."""
    found = {}
    for root, dirs, files in os.walk(directory):
        dirs.sort()  # deterministic choice if several copies exist
        for split, name in WIKITEXT_FILES.items():
            if name in files and split not in found:
                found[split] = os.path.join(root, name)
    missing = [name for split, name in WIKITEXT_FILES.items() if split not in found]
    if missing:
        raise DataNotFoundError(f"no {' or '.join(missing)} under {directory}. {WIKITEXT_HINT}")
    return found


class GenDataset(EditBatches):
    """Edit and locality batches of static shapes, each a pure function of its index.

    Shapes: edits (n_edits, max_length), int32. Locality passages are cut at
    `loc_max_length` tokens; a locality batch is (n_loc, L) with L the smallest of
    `loc_buckets` that holds its longest passage, else `loc_max_length`. With no
    buckets every batch is padded to `loc_max_length`; with buckets the reference's
    uncut passages keep a few static shapes (one compilation each).
    `train_batch(step)` depends on (seed, step) only; `eval_batch(i)` on i only.

    loc_pool="reference" reproduces the released code, which draws locality
    indices below the number of edits and takes them modulo the number of
    passages, so only the first len(edits) passages are ever used; "all" draws
    from every passage.
    """

    def __init__(
        self,
        edits: Edits,
        passages: Sequence[str],
        tokenizer,
        *,
        max_length: int = 200,
        loc_max_length: int = 200,
        loc_buckets: Sequence[int] = (),
        n_edits: int = 1,
        n_loc: int = 1,
        seed: int = 0,
        drop_prefix: bool = True,
        loc_pool: str = "reference",
    ):
        check_tokenizer(tokenizer)
        if max_length <= edits.n_tokens:
            raise ValueError(f"max_length {max_length} leaves no context before the {edits.n_tokens} edit tokens")
        check_sizes(len(edits.completions), n_edits, n_loc, edits.source)
        if not passages:
            raise ValueError("no locality passages")
        if loc_pool not in ("reference", "all"):
            raise ValueError(f"loc_pool must be 'reference' or 'all', got {loc_pool!r}")
        self.tokenizer, self.pad_id = tokenizer, tokenizer.pad_token_id
        if loc_max_length < 1:
            raise ValueError(f"loc_max_length must be a positive number of tokens, got {loc_max_length}")
        self.n_tokens, self.max_length, self.loc_max_length = edits.n_tokens, max_length, loc_max_length
        self.loc_buckets = tuple(sorted(loc_buckets))
        self.n_edits, self.n_loc, self.seed = n_edits, n_loc, seed
        self.drop_prefix, self.loc_pool = drop_prefix, loc_pool
        self.passages = list(passages)
        self.edit_tokens, self.n_truncated = self._tokenize_edits(edits)

    @classmethod
    def from_files(cls, edits_path: str, passages_path: str, tokenizer, *, pct: float = 100.0, **kwargs):
        return cls(load_self_sample(edits_path), load_passages(passages_path, pct), tokenizer, **kwargs)

    def _tokenize_edits(self, edits: Edits) -> Tuple[List[List[int]], int]:
        ids = self.tokenizer(edits.completions)["input_ids"]
        short = [i for i, seq in enumerate(ids) if len(seq) < self.n_tokens]
        if short:
            raise DataFormatError(
                f"{edits.source}: completion {short[0]} has {len(ids[short[0]])} tokens, fewer than "
                f"n_tokens={self.n_tokens} ({len(short)} such completions)"
            )
        n_truncated = sum(len(seq) > self.max_length for seq in ids)
        # An over-long edit keeps its end, where the labelled tokens are.
        return [list(seq[-self.max_length :]) for seq in ids], n_truncated

    def __len__(self) -> int:
        return len(self.edit_tokens)

    def _batch(self, edit_idx: np.ndarray, rng: np.random.Generator) -> Dict:
        loc = self._loc(rng)  # drawn first so drop_prefix does not change which passages come out
        seqs = [self.edit_tokens[i] for i in edit_idx]
        ids, mask = pad_right(seqs, self.max_length, self.pad_id)
        labels = np.full_like(ids, IGNORE)
        for row, seq in enumerate(seqs):
            labels[row, len(seq) - self.n_tokens : len(seq)] = seq[-self.n_tokens :]
        inner = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        return {
            "edit_inner": inner,
            "edit_outer": shift_left(inner, self._prefix_drop(seqs, rng), self.pad_id),
            "loc": loc,
            "cond": {"input_ids": ids.copy(), "attention_mask": mask.copy()},  # EFK conditions on the edit text
        }

    def _prefix_drop(self, seqs: List[List[int]], rng: np.random.Generator) -> int:
        """The reference's 'rephrase' of a text edit: one drop for the whole batch, at most half
        of the shortest edit's unlabelled part, so every labelled token survives."""
        if not self.drop_prefix:
            return 0
        return int(rng.integers(0, (min(map(len, seqs)) - self.n_tokens) // 2 + 1))

    def _loc(self, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        pool = len(self) if self.loc_pool == "reference" else len(self.passages)
        idx = rng.integers(0, pool, size=self.n_loc) % len(self.passages)
        texts = [self.passages[i] for i in idx]
        seqs = self.tokenizer(texts, truncation=True, max_length=self.loc_max_length)["input_ids"]
        length = bucket_length(max(map(len, seqs)), self.loc_buckets, self.loc_max_length)
        ids, mask = pad_right(seqs, length, self.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": lm_labels(ids, mask)}


def gen_datasets(
    data_dir: str,
    tokenizer,
    *,
    wikitext_dir: str = None,
    train_pct: float = 10.0,
    n_loc_train: int = 1,
    n_loc_eval: int = 4,
    **kwargs,
) -> Tuple[GenDataset, GenDataset]:
    """(train, valid) as the reference builds them: locality from the first 10% of
    wiki.train.raw and from wiki.valid.raw; batch sizes 1+1 (train) and 1+4 (valid)."""
    wiki = find_wikitext(wikitext_dir or data_dir)
    train = GenDataset.from_files(
        self_sample_path(data_dir, "train"), wiki["train"], tokenizer, pct=train_pct, n_loc=n_loc_train, **kwargs
    )
    valid = GenDataset.from_files(
        self_sample_path(data_dir, "valid"), wiki["valid"], tokenizer, n_loc=n_loc_eval, **kwargs
    )
    return train, valid
