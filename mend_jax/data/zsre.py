"""The `qa` experiment's data: zsRE question edits for seq2seq models (T5, BART).

An edit asks the model to answer a zsRE question with one of its
`alternatives`; `edit_outer` asks a rephrasing of the question for the same
answer. Locality questions come from Natural Questions (when given) or from
other zsRE rows, never the batch's own edits.

Decoder targets follow the reference, per model family:

* "t5": labels are the answer tokens (with T5's EOS), decoder inputs are the
  labels shifted right after `decoder_start_token_id`; the loss does not shift.
* "bart": the tokenized answer `<s> a </s>` gets its first token replaced by
  EOS (for consistency with De Cao et al.) and serves as both decoder input and
  labels, `</s> a </s>`; the loss shifts, so `a </s>` is scored.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mend_jax.data.batching import EditBatches, check_sizes, lm_labels, pad_right
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
from mend_jax.data.nq import QaPairs

ZSRE_HINT = (
    "Download the reference's data (the Google Drive folder linked in the MEND README) and unzip zsre/ into the "
    "data directory, or set --config.data.path. The embedded default needs no download: "
    "python -m mend_jax.train --config=configs/qa.py"
)
ZSRE_FILE = "structured_zeroshot-{}-new_annotated_final.jsonl"
# Whether the loss shifts labels, per target layout (see the module docstring).
SHIFT_LABELS = {"t5": False, "bart": True}


@dataclasses.dataclass(frozen=True)
class QaRow:
    input: str
    prediction: str  # the unedited model's answer
    alternatives: Tuple[str, ...]  # new answers to edit in
    rephrases: Tuple[str, ...]
    answer: str  # output[0].answer, the gold answer (a locality target)


def parse_zsre_row(obj: Dict, where: str) -> Optional[QaRow]:
    """The row, or None when it has no alternatives or no rephrases (the reference drops those)."""
    question = get_field(obj, "input", str, where)
    prediction = get_field(obj, "prediction", str, where)
    alternatives = get_strings(obj, "alternatives", where)
    all_rephrases = get_strings(obj, "filtered_rephrases", where)
    rephrases = [r for r in all_rephrases if r != question]
    answer = get_answer(obj, where)
    empty = next((i for i, a in enumerate(alternatives) if not a.strip()), None)
    if empty is not None:
        raise DataFormatError(f"{where}: 'alternatives'[{empty}] is empty; an edit needs a non-empty new answer")
    # An empty question, rephrase or answer would train and score on a bare template.
    if not question.strip():
        raise DataFormatError(f"{where}: 'input' is empty; an edit needs a non-empty question")
    empty = next((i for i, r in enumerate(all_rephrases) if not r.strip()), None)
    if empty is not None:
        raise DataFormatError(f"{where}: 'filtered_rephrases'[{empty}] is empty; a rephrase must be a non-empty question")
    if not answer.strip():
        raise DataFormatError(f"{where}: 'output[0].answer' is empty; a locality answer must be non-empty")
    if not alternatives or not rephrases:
        return None
    return QaRow(question, prediction, tuple(alternatives), tuple(rephrases), answer)


def load_zsre(path: str) -> List[QaRow]:
    return load_rows(path, parse_zsre_row, ZSRE_HINT)


def zsre_path(data_dir: str, split: str) -> str:
    return split_path(data_dir, split, ZSRE_FILE, "zsre", ZSRE_HINT)


class Seq2SeqEncoder:
    """Questions -> encoder inputs, answers -> decoder inputs and labels, all of static width."""

    def __init__(self, tokenizer, *, style: str, max_length: int, target_max_length: int,
                 decoder_start_token_id: Optional[int] = None):
        check_tokenizer(tokenizer, "seq2seq")
        if style not in SHIFT_LABELS:
            raise ValueError(f"target style must be one of {sorted(SHIFT_LABELS)}, got {style!r}")
        if style == "bart" and (tokenizer.bos_token_id is None or tokenizer.eos_token_id is None):
            raise ValueError(f"the BART target layout needs BOS and EOS tokens; {type(tokenizer).__name__} lacks one")
        self.tokenizer, self.style = tokenizer, style
        self.max_length, self.target_max_length = max_length, target_max_length
        self.pad_id = tokenizer.pad_token_id
        self.start_id = self.pad_id if decoder_start_token_id is None else decoder_start_token_id

    def sources(self, texts: Sequence[str]) -> Dict[str, np.ndarray]:
        return encode(self.tokenizer, texts, self.max_length)

    def targets(self, texts: Sequence[str]) -> Dict[str, np.ndarray]:
        seqs = self.tokenizer(list(texts), truncation=True, max_length=self.target_max_length)["input_ids"]
        if self.style == "bart":
            bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
            bad = next((t for t, s in zip(texts, seqs) if not s or s[0] != bos), None)
            if bad is not None:
                raise ValueError(
                    f"the BART target layout replaces each answer's first token (BOS) with EOS, as the reference "
                    f"does, but {type(self.tokenizer).__name__} does not start {bad!r} with BOS"
                )
            ids, mask = pad_right([[eos] + list(s[1:]) for s in seqs], self.target_max_length, self.pad_id)
            return {"decoder_input_ids": ids, "decoder_attention_mask": mask, "labels": lm_labels(ids, mask)}
        ids, mask = pad_right(seqs, self.target_max_length, self.pad_id)
        decoder_ids = np.full_like(ids, self.pad_id)
        decoder_ids[:, 0] = self.start_id
        decoder_ids[:, 1:] = ids[:, :-1]
        return {"decoder_input_ids": decoder_ids, "decoder_attention_mask": mask, "labels": lm_labels(ids, mask)}

    def pairs(self, questions: Sequence[str], answers: Sequence[str]) -> Dict[str, np.ndarray]:
        return {**self.sources(questions), **self.targets(answers)}


class ZsreDataset(EditBatches):
    """qa batches: `n_edits` edits and `n_loc` locality questions, static shapes, pure functions of the index.

    loc_pool="reference" reproduces the released code's NQ sampling, which draws
    indices below the number of zsRE rows and takes them modulo the number of NQ
    pairs; "all" draws from every NQ pair. zsRE locality always draws from every
    other row.
    """

    def __init__(self, rows: Sequence[QaRow], encoder: Seq2SeqEncoder, *, nq: Optional[QaPairs] = None,
                 n_edits: int = 1, n_loc: int = 1, seed: int = 0, loc_pool: str = "reference", source: str = "zsRE"):
        check_sizes(len(rows), n_edits, n_loc, source)
        if loc_pool not in ("reference", "all"):
            raise ValueError(f"loc_pool must be 'reference' or 'all', got {loc_pool!r}")
        if nq is None and len(rows) <= n_edits:
            raise ValueError(f"{source} has {len(rows)} rows: none left for zsRE locality next to {n_edits} edits")
        self.rows, self.encoder, self.nq = list(rows), encoder, nq
        self.n_edits, self.n_loc, self.seed, self.loc_pool = n_edits, n_loc, seed, loc_pool

    @classmethod
    def from_files(cls, zsre_file: str, encoder: Seq2SeqEncoder, nq: Optional[QaPairs] = None, **kwargs):
        return cls(load_zsre(zsre_file), encoder, nq=nq, source=zsre_file, **kwargs)

    def __len__(self) -> int:
        return len(self.rows)

    def _batch(self, edit_idx: np.ndarray, rng: np.random.Generator) -> Dict:
        loc = self._loc(edit_idx, rng)
        rows = [self.rows[i] for i in edit_idx]
        alternatives = [r.alternatives[rng.integers(len(r.alternatives))] for r in rows]
        rephrases = [r.rephrases[rng.integers(len(r.rephrases))] for r in rows]
        targets = self.encoder.targets(alternatives)
        return {
            "edit_inner": {**self.encoder.sources([r.input for r in rows]), **targets},
            "edit_outer": {**self.encoder.sources(rephrases), **{k: v.copy() for k, v in targets.items()}},
            "loc": loc,
            "cond": self.encoder.sources([condition_text(r, a) for r, a in zip(rows, alternatives)]),
        }

    def _loc(self, edit_idx: np.ndarray, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        if self.nq is not None:
            pool = len(self) if self.loc_pool == "reference" else len(self.nq)
            idx = rng.integers(0, pool, size=self.n_loc) % len(self.nq)
            return self.encoder.pairs([self.nq.questions[i] for i in idx], [self.nq.answers[i] for i in idx])
        idx = draw_excluding(rng, len(self), self.n_loc, edit_idx)
        return self.encoder.pairs([self.rows[i].input for i in idx], [self.rows[i].answer for i in idx])
