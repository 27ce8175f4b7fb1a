"""The `fc` experiment's data: FEVER claims for a one-logit BERT classifier.

An edit sets a claim's label: with probability 0.5 to the alternative label,
otherwise to the model's prediction (as the reference does). `edit_outer` is a
rephrasing of the claim with the same label; locality examples are other claims
with their gold labels. Labels are 0/1 of shape (batch,): 1 is SUPPORTS.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mend_jax.data.batching import EditBatches, check_sizes
from mend_jax.data.io import DataFormatError
from mend_jax.data.kilt import (
    check_tokenizer,
    condition_text,
    draw_excluding,
    encode,
    get_answer,
    get_field,
    get_strings,
    load_rows,
    split_path,
)

FEVER_HINT = (
    "Download the reference's data (the Google Drive folder linked in the MEND README) and unzip fever/ into the "
    "data directory, or set --config.data.path. The embedded default needs no download: "
    "python -m mend_jax.train --config=configs/fc.py"
)
FEVER_FILE = "fever-{}-kilt.jsonl"
POSITIVE, NEGATIVE = "SUPPORTS", "REFUTES"


@dataclasses.dataclass(frozen=True)
class Claim:
    input: str
    label: str  # output[0].answer, the gold label
    prediction: str  # the unedited model's label
    alternative: str  # alternatives[0], the flipped label
    rephrases: Tuple[str, ...]


def _label(value: str, field: str, where: str) -> str:
    if value not in (POSITIVE, NEGATIVE):
        raise DataFormatError(f"{where}: '{field}' is {value!r}; FEVER labels are {POSITIVE!r} or {NEGATIVE!r}")
    return value


def parse_fever_row(obj: Dict, where: str) -> Optional[Claim]:
    """The claim, or None when it has no alternatives or no rephrases (the reference drops those)."""
    get_field(obj, "logit", (int, float), where)  # unused, but part of the published format
    claim = get_field(obj, "input", str, where)
    prediction = _label(get_field(obj, "prediction", str, where), "prediction", where)
    alternatives = get_strings(obj, "alternatives", where)
    rephrases = get_strings(obj, "filtered_rephrases", where)
    label = _label(get_answer(obj, where), "output[0].answer", where)
    if not alternatives or not rephrases:
        return None
    return Claim(claim, label, prediction, _label(alternatives[0], "alternatives[0]", where), tuple(rephrases))


def load_fever(path: str) -> List[Claim]:
    return load_rows(path, parse_fever_row, FEVER_HINT)


def fever_path(data_dir: str, split: str) -> str:
    return split_path(data_dir, split, FEVER_FILE, "fever", FEVER_HINT)


def _ids(labels: Sequence[str]) -> np.ndarray:
    return np.array([label == POSITIVE for label in labels], np.int32)


class FeverDataset(EditBatches):
    """fc batches: `n_edits` edited claims and `n_loc` other claims, static shapes."""

    def __init__(self, claims: Sequence[Claim], tokenizer, *, max_length: int = 32, n_edits: int = 1,
                 n_loc: int = 1, seed: int = 0, flip_prob: float = 0.5, source: str = "FEVER"):
        check_tokenizer(tokenizer, "classifier")
        check_sizes(len(claims), n_edits, n_loc, source)
        if len(claims) <= n_edits:
            raise ValueError(f"{source} has {len(claims)} claims: none left for locality next to {n_edits} edits")
        self.claims, self.tokenizer, self.max_length = list(claims), tokenizer, max_length
        self.n_edits, self.n_loc, self.seed, self.flip_prob = n_edits, n_loc, seed, flip_prob

    @classmethod
    def from_files(cls, path: str, tokenizer, **kwargs):
        return cls(load_fever(path), tokenizer, source=path, **kwargs)

    def __len__(self) -> int:
        return len(self.claims)

    def _encode(self, texts: Sequence[str], labels: Sequence[str] = None) -> Dict[str, np.ndarray]:
        batch = encode(self.tokenizer, texts, self.max_length)
        if labels is not None:
            batch["labels"] = _ids(labels)
        return batch

    def _batch(self, edit_idx: np.ndarray, rng: np.random.Generator) -> Dict:
        loc_idx = draw_excluding(rng, len(self), self.n_loc, edit_idx)
        claims = [self.claims[i] for i in edit_idx]
        flips = rng.uniform(size=len(claims)) < self.flip_prob
        targets = [c.alternative if flip else c.prediction for c, flip in zip(claims, flips)]
        rephrases = [c.rephrases[rng.integers(len(c.rephrases))] for c in claims]
        loc = [self.claims[i] for i in loc_idx]
        return {
            "edit_inner": self._encode([c.input for c in claims], targets),
            "edit_outer": self._encode(rephrases, targets),
            "loc": self._encode([c.input for c in loc], [c.label for c in loc]),
            "cond": self._encode([condition_text(c, t) for c, t in zip(claims, targets)]),
        }
