"""CounterFact (Meng et al. 2022, the ROME/MEMIT release): counterfactual rewrites with
paraphrases and neighbourhood prompts.

The file is one JSON list of cases:

  {"case_id": 0,
   "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                         "target_new": {"str": "English"}, "target_true": {"str": "French"}, ...},
   "paraphrase_prompts": [...], "neighborhood_prompts": [...], "generation_prompts": [...], ...}

`prompt` holds `{}` where the subject goes. Neighbourhood prompts are about other
subjects whose true object is `target_true`; fields this reader does not use
(attribute_prompts, relation ids, ...) are kept out.
"""
import dataclasses
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from mend_jax.data.batching import (
    EditBatches, check_sizes, check_tokenizer, prompt_target_batch, prompt_target_tokens,
)
from mend_jax.data.io import DataFormatError, read_json
from mend_jax.data.kilt import draw_excluding

COUNTERFACT_HINT = (
    "Download counterfact.json from the ROME release (rome.baulab.info/data/dsets/counterfact.json), or use the "
    "embedded world's: mend_jax.world.ensure_counterfact()"
)


@dataclasses.dataclass(frozen=True)
class CounterFactCase:
    case_id: int
    prompt: str  # with "{}" for the subject
    subject: str
    target_new: str
    target_true: str
    paraphrase_prompts: Tuple[str, ...]
    neighborhood_prompts: Tuple[str, ...]
    generation_prompts: Tuple[str, ...]

    @property
    def rewrite_prompt(self) -> str:
        return self.prompt.format(self.subject)


def _field(obj, key: str, kind, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise DataFormatError(f"{where}: missing field '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataFormatError(f"{where}: field '{key}' must be {kind.__name__}, got {type(value).__name__}")
    return value


def _string(obj, key: str, where: str) -> str:
    value = _field(obj, key, str, where)
    if not value.strip():
        raise DataFormatError(f"{where}: field '{key}' is empty")
    return value


def _prompts(obj, key: str, where: str, required: bool = True) -> Tuple[str, ...]:
    if key not in obj and not required:
        return ()
    values = _field(obj, key, list, where)
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()), None)
    if bad is not None:
        raise DataFormatError(f"{where}: '{key}'[{bad}] must be a non-empty string")
    return tuple(values)


def parse_case(obj, where: str) -> CounterFactCase:
    rewrite = _field(obj, "requested_rewrite", dict, where)
    at = f"{where}, requested_rewrite"
    prompt = _string(rewrite, "prompt", at)
    if prompt.count("{}") != 1:
        raise DataFormatError(f"{at}: 'prompt' must hold '{{}}' once, where the subject goes; got {prompt!r}")
    return CounterFactCase(
        case_id=_field(obj, "case_id", int, where),
        prompt=prompt,
        subject=_string(rewrite, "subject", at),
        target_new=_string(_field(rewrite, "target_new", dict, at), "str", f"{at}.target_new"),
        target_true=_string(_field(rewrite, "target_true", dict, at), "str", f"{at}.target_true"),
        paraphrase_prompts=_prompts(obj, "paraphrase_prompts", where),
        neighborhood_prompts=_prompts(obj, "neighborhood_prompts", where),
        generation_prompts=_prompts(obj, "generation_prompts", where, required=False),
    )


def load_counterfact(path: str) -> List[CounterFactCase]:
    data = read_json(path, COUNTERFACT_HINT)
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of cases, got {type(data).__name__}")
    if not data:
        raise DataFormatError(f"{path}: no cases")
    return [parse_case(obj, f"{path}, case {i}") for i, obj in enumerate(data)]


def to_json(case: CounterFactCase) -> dict:
    """The case in the release's layout (what load_counterfact reads back)."""
    return {
        "case_id": case.case_id,
        "requested_rewrite": {"prompt": case.prompt, "subject": case.subject,
                              "target_new": {"str": case.target_new}, "target_true": {"str": case.target_true}},
        "paraphrase_prompts": list(case.paraphrase_prompts),
        "neighborhood_prompts": list(case.neighborhood_prompts),
        "generation_prompts": list(case.generation_prompts),
    }


class CounterFactDataset(EditBatches):
    """counterfact batches for a decoder-only LM, static shapes, pure functions of the index.

    edit_inner: the rewrite prompt followed by target_new, only the target labelled;
    edit_outer: one of the case's paraphrase prompts (drawn) with target_new; loc: other
    cases' rewrite prompts with their target_true (the model's own knowledge, which the edit
    must keep), the first `loc_neighbors` of them instead drawn from the edited cases' own
    neighbourhood prompts (the nearest facts an edit can break); cond (EFK): the edit text. Rows are padded to `max_length` tokens, or, with
    `length_buckets`, all of a batch's rows to the smallest bucket that holds its longest (a
    few static shapes instead of every batch at the longest case's length).
    """

    def __init__(self, cases: Sequence[CounterFactCase], tokenizer, *, max_length: int, n_edits: int = 1,
                 n_loc: int = 1, seed: int = 0, source: str = "CounterFact", length_buckets: Sequence[int] = (),
                 loc_neighbors: int = 0):
        check_tokenizer(tokenizer)
        check_sizes(len(cases), n_edits, n_loc, source)
        if len(cases) <= n_edits:
            raise ValueError(f"{source} has {len(cases)} cases: none left for locality next to {n_edits} edits")
        missing = next((c.case_id for c in cases if not c.paraphrase_prompts), None)
        if missing is not None:
            raise DataFormatError(f"{source}: case {missing} has no paraphrase prompt, which edit_outer needs")
        self.cases, self.tokenizer, self.max_length = list(cases), tokenizer, max_length
        self.widths = sorted({w for w in length_buckets if w < max_length} | {max_length})
        if not 0 <= loc_neighbors <= n_loc:
            raise ValueError(f"loc_neighbors={loc_neighbors} must be between 0 and the {n_loc} locality rows")
        self.n_edits, self.n_loc, self.seed, self.loc_neighbors = n_edits, n_loc, seed, loc_neighbors

    def __len__(self) -> int:
        return len(self.cases)

    def _tokens(self, prompts: Sequence[str], targets: Sequence[str]):
        prompt_ids, target_ids = prompt_target_tokens(self.tokenizer, prompts, targets)
        longest = max(len(p) + len(t) for p, t in zip(prompt_ids, target_ids))
        if longest > self.max_length:
            raise DataFormatError(f"a CounterFact prompt with its target has {longest} tokens, more than "
                                  f"data.max_length={self.max_length}; raise it")
        return prompt_ids, target_ids, longest

    def _neighbor_rows(self, cases: Sequence[CounterFactCase], rng: np.random.Generator) -> List[Tuple[str, str]]:
        """`loc_neighbors` (prompt, target_true) rows from the edited cases' own neighbourhood prompts,
        drawn across the edits; a case without neighbours gives none."""
        pool = [(p, c.target_true) for c in cases for p in c.neighborhood_prompts]
        if not pool:
            return []
        return [pool[i] for i in rng.choice(len(pool), self.loc_neighbors, replace=len(pool) < self.loc_neighbors)]

    def _batch(self, edit_idx: np.ndarray, rng: np.random.Generator) -> Dict:
        cases = [self.cases[i] for i in edit_idx]
        paraphrases = [c.paraphrase_prompts[rng.integers(len(c.paraphrase_prompts))] for c in cases]
        loc = self._neighbor_rows(cases, rng) if self.loc_neighbors else []
        loc_idx = draw_excluding(rng, len(self), self.n_loc - len(loc), edit_idx)
        loc += [(self.cases[i].rewrite_prompt, self.cases[i].target_true) for i in loc_idx]
        parts = {
            "edit_inner": self._tokens([c.rewrite_prompt for c in cases], [c.target_new for c in cases]),
            "edit_outer": self._tokens(paraphrases, [c.target_new for c in cases]),
            "loc": self._tokens([p for p, _ in loc], [t for _, t in loc]),
        }
        width = next(w for w in self.widths if w >= max(longest for _, _, longest in parts.values()))
        batch = {name: prompt_target_batch(p, t, width, self.tokenizer.pad_token_id) for name, (p, t, _) in parts.items()}
        inner = batch["edit_inner"]
        batch["cond"] = {"input_ids": inner["input_ids"].copy(), "attention_mask": inner["attention_mask"].copy()}
        return batch


def load_splits(path: str, n_valid: int) -> Tuple[List[CounterFactCase], List[CounterFactCase]]:
    """(train, valid) cases: a directory's train.json and valid.json, or one release file
    (counterfact.json) whose first `n_valid` cases validate and the rest train."""
    if os.path.isdir(path):
        return tuple(load_counterfact(os.path.join(path, f"{split}.json")) for split in ("train", "valid"))
    cases = load_counterfact(path)
    if not 0 < n_valid < len(cases):
        raise DataFormatError(f"{path}: {len(cases)} cases cannot give {n_valid} validation cases and a training "
                              "split (--config.data.n_valid_cases)")
    return cases[n_valid:], cases[:n_valid]
