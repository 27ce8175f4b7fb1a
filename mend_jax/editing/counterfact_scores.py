"""CounterFact's metrics (Meng et al. 2022) and the token accuracies the editing libraries
report, for a model before or after its edits.

p(x | prompt) is exp of the mean log-probability of x's tokens after the prompt (the ROME
code compares mean token NLLs). Per case, on the rewrite prompt, its paraphrases and its
neighbourhood prompts:

* efficacy score: p(new) > p(true) on the rewrite prompt; magnitude: p(new) − p(true).
* paraphrase score: the same, averaged over the case's paraphrases.
* neighbourhood score: p(true) > p(new), averaged over the neighbourhood prompts; magnitude
  p(true) − p(new).
* score: the harmonic mean of the three scores, the paper's S.
* rewrite / paraphrase token accuracy: the share of target_new's tokens that are the
  teacher-forced argmax (EasyEdit's rewrite_acc and rephrase_acc).
* neighbourhood token agreement: the share of target_true's tokens, on the neighbourhood
  prompts, whose teacher-forced argmax is the original model's (EasyEdit's locality).

Every score is a mean over cases (cases without neighbours are left out of the neighbourhood
ones), between 0 and 1; magnitudes lie in [-1, 1].
"""
from typing import Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mend_jax import losses
from mend_jax.data.counterfact import CounterFactCase

CHUNK = 64  # prompts per scoring call at most
# A call's rows are padded to the smallest of these that holds them: one case's dozen prompts (an
# independent edit) is not scored as 64 rows, and a few compilations serve every count.
ROW_BUCKETS = (8, 16, 32, CHUNK)


def _aligned_predictions(target, params, batch):
    """(mean token log-prob, argmax per position, labels), positions aligned as the loss aligns them."""
    logits = target.logits(params, batch)
    stats = losses.token_stats(logits, batch["labels"], target.shift_labels)
    logits, labels = (logits[:, :-1], batch["labels"][:, 1:]) if target.shift_labels else (logits, batch["labels"])
    return -stats.nll / jnp.maximum(stats.n_tokens, 1.0), jnp.argmax(logits, -1), labels


class Scorer:
    def __init__(self, codec, target):
        self.codec = codec
        self._run = jax.jit(lambda params, batch: _aligned_predictions(target, params, batch))

    def __call__(self, params, prompts: Sequence[str], targets: Sequence[str]):
        """(p per prompt, argmax per prompt, labelled mask, labels) for `targets` after `prompts`."""
        outs = []
        for lo in range(0, len(prompts), CHUNK):
            p, t = list(prompts[lo:lo + CHUNK]), list(targets[lo:lo + CHUNK])
            n = len(p)
            rows = next(b for b in ROW_BUCKETS if b >= n)
            p, t = p + [p[-1]] * (rows - n), t + [t[-1]] * (rows - n)
            batch = self.codec.edit_batch(p, t)
            mean_logp, pred, labels = (np.asarray(x)[:n] for x in self._run(params, batch))
            outs.append((np.exp(mean_logp), pred, labels != losses.IGNORE, labels))
        width = max(o[1].shape[1] for o in outs)
        pad = lambda x, fill: np.pad(x, [(0, 0), (0, width - x.shape[1])], constant_values=fill)
        return (np.concatenate([o[0] for o in outs]), np.concatenate([pad(o[1], 0) for o in outs]),
                np.concatenate([pad(o[2], False) for o in outs]), np.concatenate([pad(o[3], losses.IGNORE) for o in outs]))


def _per_case(values: np.ndarray, owners: Sequence[int], n_cases: int) -> np.ndarray:
    """Mean of `values` per case (NaN for a case with none)."""
    sums, counts = np.zeros(n_cases), np.zeros(n_cases)
    np.add.at(sums, owners, values)
    np.add.at(counts, owners, 1)
    with np.errstate(invalid="ignore"):
        return sums / counts


def _token_accuracy(pred, mask, labels) -> np.ndarray:
    return ((pred == labels) & mask).sum(1) / np.maximum(mask.sum(1), 1)


SCORES = ("efficacy_score", "paraphrase_score", "neighborhood_score")


def _rows(cases: Sequence[CounterFactCase], field: str) -> Tuple[List[int], List[str]]:
    """(owner case, prompt) of every prompt of `field` ("rewrite" is the rewrite prompt itself)."""
    owners, prompts = [], []
    for i, case in enumerate(cases):
        for prompt in [case.rewrite_prompt] if field == "rewrite" else getattr(case, field):
            owners.append(i)
            prompts.append(prompt)
    return owners, prompts


FIELDS = ("rewrite", "paraphrase_prompts", "neighborhood_prompts")


def neighbor_reference(scorer: Scorer, original_params, cases: Sequence[CounterFactCase]) -> np.ndarray:
    """The original model's argmax over target_true on every neighbourhood prompt (the labels of
    neighbourhood token agreement), rows in case order."""
    owners, prompts = _rows(cases, "neighborhood_prompts")
    if not prompts:
        return np.zeros((0, 0), np.int32)
    return scorer(original_params, prompts, [cases[i].target_true for i in owners])[1]


def case_scores(scorer: Scorer, params, cases: Sequence[CounterFactCase], reference: np.ndarray) -> Dict[str, np.ndarray]:
    """Every measure of the module docstring, per case (NaN where a case has no such prompt).
    `reference`: neighbor_reference of the same cases. Every prompt is scored with both
    targets in one scorer call (one case's couple of dozen rows: one call, not seven)."""
    n = len(cases)
    rows = {field: _rows(cases, field) for field in FIELDS}
    prompts = [p for field in FIELDS for p in rows[field][1]]
    owner_of = [o for field in FIELDS for o in rows[field][0]]
    p, pred, mask, labels = scorer(params, prompts * 2, [cases[o].target_new for o in owner_of] +
                                   [cases[o].target_true for o in owner_of])
    half = len(prompts)
    out, lo = {}, 0
    for field in FIELDS:
        owners = rows[field][0]
        hi = lo + len(owners)
        new, true = slice(lo, hi), slice(half + lo, half + hi)
        lo = hi
        if field == "neighborhood_prompts":
            keep, gain = (p[true] > p[new]).astype(float), p[true] - p[new]
            agreement = _token_accuracy(pred[true], mask[true], _pad_to(reference, pred.shape[1]))
            out.update(neighborhood_score=_per_case(keep, owners, n), neighborhood_magnitude=_per_case(gain, owners, n),
                       neighborhood_token_agreement=_per_case(agreement, owners, n))
            continue
        name = "efficacy" if field == "rewrite" else "paraphrase"
        accuracy = _token_accuracy(pred[new], mask[new], labels[new])
        out.update({f"{name}_score": _per_case((p[new] > p[true]).astype(float), owners, n),
                    f"{name}_magnitude": _per_case(p[new] - p[true], owners, n),
                    f"{'rewrite' if field == 'rewrite' else 'paraphrase'}_token_acc": _per_case(accuracy, owners, n)})
    return out


def _pad_to(labels: np.ndarray, width: int) -> np.ndarray:
    if labels.size == 0:
        return labels.reshape(0, width)
    return np.pad(labels, [(0, 0), (0, max(0, width - labels.shape[1]))], constant_values=losses.IGNORE)[:, :width]


def concat_case_scores(parts: Sequence[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def summarize_case_scores(per_case: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Means over the cases that have each measure, and the harmonic mean S of the three scores."""
    out = {k: float(np.nanmean(v)) for k, v in per_case.items() if not np.all(np.isnan(v))}
    scores = [out.get(k) for k in SCORES]
    if all(s is not None for s in scores):
        out["score"] = 0.0 if min(scores) == 0 else float(len(scores) / sum(1.0 / s for s in scores))
    return out
