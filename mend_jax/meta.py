"""One meta-training example: edit on `edit_inner`, score on `edit_outer` and `loc`.

Returns the reference's losses and per-example sums, so that metrics can be
pooled over many batches with token-count weights (perplexity) and compared by
name with the original code.
"""
from typing import Any, Dict, NamedTuple

import jax

from mend_jax import losses
from mend_jax.editors.base import EditTarget

LOC_MASK_KEYS = ("decoder_attention_mask", "attention_mask")


class Coefficients(NamedTuple):
    edit: float
    loc: float
    base: float = 0.0  # c_base, for editors that train the base model (train_base)
    # The reference back-propagates the base-drift loss with weight 1 and uses c_base only in the
    # logged loss/total; True differentiates c_base * l_base instead, as the paper describes.
    base_in_gradient: bool = False


def loc_mask(loc_batch: Dict[str, jax.Array]) -> jax.Array:
    """Positions that count for the KL: decoder positions for seq2seq, as the reference."""
    return next(loc_batch[k] for k in LOC_MASK_KEYS if k in loc_batch)


def edit_inputs(batch: Dict[str, Any]) -> Dict[str, Any]:
    """What an editor sees: `edit_inner`, plus the condition text under "cond" when the batch has one."""
    if "cond" not in batch:
        return batch["edit_inner"]
    return {**batch["edit_inner"], "cond": batch["cond"]}


def edit_and_score(editor, target: EditTarget, coef: Coefficients, params, stats, base_params, batch, train: bool):
    """(objective, (new_stats, sums)) for one batch; differentiable in `params`.

    The objective is what meta-training differentiates: c_edit·L_edit + c_loc·L_loc.
    `base_params` is the original model. An editor that trains the base model
    edits (and is judged against) its current base, and pays for drifting with
    L_base = KL(p_original(loc) ‖ p_base(loc)). As in the reference, L_base enters
    the objective with weight 1 and c_base only weighs it in the logged
    `loss/total` (`coef.base_in_gradient` puts c_base in the objective too).
    """
    trains_base = hasattr(editor, "current_base")
    base = editor.current_base(params, base_params) if trains_base else base_params
    base_loc = target.logits(base, batch["loc"])
    pre_loc = jax.lax.stop_gradient(base_loc)
    edited, stats, info = editor.edit(params, stats, base_params, edit_inputs(batch), train)
    post_outer = target.logits(edited, batch["edit_outer"])
    post_loc = target.logits(edited, batch["loc"])

    l_edit = target.nll(post_outer, batch["edit_outer"])
    l_loc = losses.kl_loc(pre_loc, post_loc, loc_mask(batch["loc"]))
    l_total_edit = coef.edit * l_edit + coef.loc * l_loc
    l_total = objective = l_total_edit
    if trains_base:
        original_loc = jax.lax.stop_gradient(target.logits(base_params, batch["loc"]))
        l_base = losses.kl_loc(original_loc, base_loc, loc_mask(batch["loc"]))
        info = {**info, "loss/base": l_base}
        l_total = l_total_edit + coef.base * l_base
        objective = l_total_edit + (coef.base if coef.base_in_gradient else 1.0) * l_base

    edit = losses.summarize(losses.token_stats(post_outer, batch["edit_outer"]["labels"], target.shift_labels))
    pre = losses.token_stats(pre_loc, batch["loc"]["labels"], target.shift_labels)
    post = losses.token_stats(post_loc, batch["loc"]["labels"], target.shift_labels)
    sums = {
        "loss/edit": l_edit,
        "loss/loc": l_loc,
        "loss/total": l_total,
        "loss/total_edit": l_total_edit,
        "edit/acc": edit["acc"],
        "edit/log_prob": edit["log_prob"],
        "edit/prob": edit["prob"],
        "acc/pre": pre.correct.mean(),
        "acc/post": post.correct.mean(),
        "nll_sum/pre": pre.nll.sum(),
        "nll_sum/post": post.nll.sum(),
        "n_tokens/loc": pre.n_tokens.sum(),
        **info,
    }
    return objective, (stats, sums)


def finalize(sums: Dict[str, Any]) -> Dict[str, float]:
    """Means of per-batch values -> the reference's metric names.

    `sums` holds arrays with a leading batch axis (or scalars). Perplexity pools
    NLL over all tokens of all batches before the exp, as the reference does.
    """
    import numpy as np

    out = {}
    for k, v in sums.items():
        if not k.startswith(("nll_sum/", "n_tokens/")):
            out[k] = float(np.mean(v))
    n = max(float(np.sum(sums["n_tokens/loc"])), 1.0)
    for side in ("pre", "post"):
        nll = float(np.sum(sums[f"nll_sum/{side}"])) / n
        out[f"nll/{side}"] = nll
        out[f"perplexity/{side}"] = float(np.exp(nll))
    return out
