"""One meta-training example: edit on `edit_inner`, score on `edit_outer` and `loc`.

Returns the reference's losses and per-example sums, so that metrics can be
pooled over many batches with token-count weights (perplexity) and compared by
name with the original code.
"""
from typing import Any, Dict, NamedTuple

import jax
import jax.numpy as jnp

from mend_jax import losses
from mend_jax.editors.base import EditTarget

LOC_MASK_KEYS = ("decoder_attention_mask", "attention_mask")


class Coefficients(NamedTuple):
    edit: float
    loc: float
    base: float = 0.0  # c_base, for editors that train the base model (train_base)


def loc_mask(loc_batch: Dict[str, jax.Array]) -> jax.Array:
    """Positions that count for the KL: decoder positions for seq2seq, as the reference."""
    return next(loc_batch[k] for k in LOC_MASK_KEYS if k in loc_batch)


def edit_inputs(batch: Dict[str, Any]) -> Dict[str, Any]:
    """What an editor sees: `edit_inner`, plus the condition text under "cond" when the batch has one."""
    if "cond" not in batch:
        return batch["edit_inner"]
    return {**batch["edit_inner"], "cond": batch["cond"]}


def edit_and_score(editor, target: EditTarget, coef: Coefficients, params, stats, base_params, batch, train: bool):
    """(l_total, (new_stats, sums)) for one batch; differentiable in `params`.

    `base_params` is the original model. An editor that trains the base model
    edits (and is judged against) its current base, and pays
    c_base · KL(p_original(loc) ‖ p_base(loc)) for drifting, as in the reference.
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
    l_total = l_total_edit
    if trains_base:
        original_loc = jax.lax.stop_gradient(target.logits(base_params, batch["loc"]))
        info = {**info, "loss/base": losses.kl_loc(original_loc, base_loc, loc_mask(batch["loc"]))}
        l_total = l_total_edit + coef.base * info["loss/base"]

    edit_stats = losses.token_stats(post_outer, batch["edit_outer"]["labels"], target.shift_labels)
    edit_log_prob = -edit_stats.nll.sum() / jnp.maximum(edit_stats.n_tokens.sum(), 1.0)
    pre = losses.token_stats(pre_loc, batch["loc"]["labels"], target.shift_labels)
    post = losses.token_stats(post_loc, batch["loc"]["labels"], target.shift_labels)
    sums = {
        "loss/edit": l_edit,
        "loss/loc": l_loc,
        "loss/total": l_total,
        "loss/total_edit": l_total_edit,
        "edit/acc": edit_stats.correct.mean(),
        "edit/log_prob": edit_log_prob,
        "edit/prob": jnp.exp(edit_log_prob),
        "acc/pre": pre.correct.mean(),
        "acc/post": post.correct.mean(),
        "nll_sum/pre": pre.nll.sum(),
        "nll_sum/post": post.nll.sum(),
        "n_tokens/loc": pre.n_tokens.sum(),
        **info,
    }
    return l_total, (stats, sums)


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
