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

CHUNK = 64  # prompts per scoring call; the last chunk is padded, so one compilation serves all


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
            p, t = p + [p[-1]] * (CHUNK - n), t + [t[-1]] * (CHUNK - n)
            batch = self.codec.edit_batch(p, t)
            mean_logp, pred, labels = (np.asarray(x)[:n] for x in self._run(params, batch))
            outs.append((np.exp(mean_logp), pred, labels != losses.IGNORE, labels))
        width = max(o[1].shape[1] for o in outs)
        pad = lambda x, fill: np.pad(x, [(0, 0), (0, width - x.shape[1])], constant_values=fill)
        return (np.concatenate([o[0] for o in outs]), np.concatenate([pad(o[1], 0) for o in outs]),
                np.concatenate([pad(o[2], False) for o in outs]), np.concatenate([pad(o[3], losses.IGNORE) for o in outs]))


def _flatten(cases: Sequence[CounterFactCase], field: str) -> Tuple[List[int], List[str]]:
    owners, prompts = [], []
    for i, case in enumerate(cases):
        for prompt in getattr(case, field):
            owners.append(i)
            prompts.append(prompt)
    return owners, prompts


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


def case_scores(scorer: Scorer, params, cases: Sequence[CounterFactCase], original_params) -> Dict[str, np.ndarray]:
    """Every measure of the module docstring, per case (NaN where a case has no such prompt)."""
    n = len(cases)
    rewrite = [c.rewrite_prompt for c in cases]
    new, true = [c.target_new for c in cases], [c.target_true for c in cases]
    p_new, pred, mask, labels = scorer(params, rewrite, new)
    p_true = scorer(params, rewrite, true)[0]
    out = {"efficacy_score": (p_new > p_true).astype(float), "efficacy_magnitude": p_new - p_true,
           "rewrite_token_acc": _token_accuracy(pred, mask, labels)}
    nan = np.full(n, np.nan)
    for key in ("paraphrase_score", "paraphrase_magnitude", "paraphrase_token_acc", "neighborhood_score",
                "neighborhood_magnitude", "neighborhood_token_agreement"):
        out[key] = nan.copy()

    owners, prompts = _flatten(cases, "paraphrase_prompts")
    if prompts:
        q_new, pred, mask, labels = scorer(params, prompts, [new[i] for i in owners])
        q_true = scorer(params, prompts, [true[i] for i in owners])[0]
        out["paraphrase_score"] = _per_case((q_new > q_true).astype(float), owners, n)
        out["paraphrase_magnitude"] = _per_case(q_new - q_true, owners, n)
        out["paraphrase_token_acc"] = _per_case(_token_accuracy(pred, mask, labels), owners, n)

    owners, prompts = _flatten(cases, "neighborhood_prompts")
    if prompts:
        r_true, pred, mask, _ = scorer(params, prompts, [true[i] for i in owners])
        r_new = scorer(params, prompts, [new[i] for i in owners])[0]
        reference = scorer(original_params, prompts, [true[i] for i in owners])[1]
        agreement = _token_accuracy(pred, mask, reference)  # the original model's argmax as the labels
        out["neighborhood_score"] = _per_case((r_true > r_new).astype(float), owners, n)
        out["neighborhood_magnitude"] = _per_case(r_true - r_new, owners, n)
        out["neighborhood_token_agreement"] = _per_case(agreement, owners, n)
    return out


def concat_case_scores(parts: Sequence[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def summarize_case_scores(per_case: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Means over the cases that have each measure, and the harmonic mean S of the three scores."""
    out = {k: float(np.nanmean(v)) for k, v in per_case.items() if not np.all(np.isnan(v))}
    scores = [out.get(k) for k in SCORES]
    if all(s is not None for s in scores):
        out["score"] = 0.0 if min(scores) == 0 else float(len(scores) / sum(1.0 / s for s in scores))
    return out
