"""KnowledgeEditor (De Cao et al. 2021), called EFK in the MEND reference.

A bidirectional-LSTM conditioner reads the condition text (the batch's "cond";
the edit text itself where an experiment has none). For each inner matrix a
weight-normalised head turns the condition into a rank-1 mask a, a rank-1
offset b and a scale, and the update is

    ΔW = max_scale · sigmoid(s) · (∇W ⊙ a + b),

with ∇W the true gradient of the edit NLL, a constant. W' = W + ΔW; the base
model is frozen.

The reference conditions on one edit at a time. Here every edit of the batch
gets its own gradient and condition (vmap), and the per-edit updates are
summed, as the gradient of a summed loss would be; with one edit this is the
reference exactly.

Layout: the formula is applied to the matrix as the PyTorch model stores it
((d_out, d_in) for nn.Linear, (d_in, d_out) for GPT-2's Conv1D), so that the
softmax runs over the same axis as in the reference; our kernels are always
(d_in, d_out), and for nn.Linear's layout the formula builds ΔWᵀ in kernel layout
(`conditioned_update(..., transposed=True)`) rather than transposing around it.
"""
from typing import Tuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from mend_jax.editors.base import EditTarget, Params, add_to_inner
from mend_jax.editors.conditioner import LSTMConditioner, MatrixConditioner, conditioned_update
from mend_jax.models.api import family_of
from mend_jax.models.factors import inner_factors

EMBEDDING_NAMES = ("wte", "word_embeddings", "shared", "embed_tokens")


def input_embedding(module, params: Params) -> jax.Array:
    """The token embedding matrix (vocab_size, d) of a model's parameters."""
    vocab = module.config.vocab_size
    flat = traverse_util.flatten_dict(params)
    found = [p for p, v in flat.items() if p[-1] == "embedding" and v.shape[0] == vocab]
    if len(found) > 1:
        found = [p for p in found if any(name in p for name in EMBEDDING_NAMES)]
    if len(found) != 1:
        raise ValueError(f"cannot tell the token embedding of {type(module).__name__} among {found}")
    return flat[found[0]]


class EFK:
    def __init__(self, target: EditTarget, base_params: Params, cfg: ml_collections.ConfigDict):
        self.target = target
        self.cfg = cfg
        embedding = input_embedding(target.module, base_params)
        self.conditioner = LSTMConditioner(
            vocab_size=embedding.shape[0], embed_dim=embedding.shape[1], hidden=cfg.lstm_hidden, out_dim=cfg.cond_dim
        )
        # Kernels are (d_in, d_out); PyTorch stores nn.Linear weights transposed.
        self.transposed = not family_of(target.module).conv1d_kernels
        self.keys = [name.replace(".", "#") for name in target.inner_names]
        self.heads = {}
        for key, shape in zip(self.keys, target.inner_shapes(base_params)):
            d0, d1 = torch_shape(shape, self.transposed)
            self.heads[key] = MatrixConditioner(d0=d0, d1=d1, hidden=cfg.hidden)

    def init(self, rng: jax.Array, base_params: Params):
        ids = jnp.zeros((1, 2), jnp.int32)
        cond_rng, rng = jax.random.split(rng)
        conditioner = self.conditioner.init(cond_rng, ids, jnp.ones_like(ids))["params"]
        # A copy: the trainer donates editor parameters, which must never alias the base model's.
        embedding = input_embedding(self.target.module, base_params)
        conditioner["embedding"]["embedding"] = jnp.array(embedding, jnp.float32, copy=True)
        heads = {
            key: head.init(jax.random.fold_in(rng, i), jnp.zeros((1, self.cfg.cond_dim)))["params"]
            for i, (key, head) in enumerate(sorted(self.heads.items()))
        }
        return {"conditioner": conditioner, "matrices": heads}, {}

    def param_labels(self, params: Params):
        return jax.tree_util.tree_map(lambda _: "editor", params)

    def condition(self, params: Params, cond) -> jax.Array:
        return self.conditioner.apply({"params": params["conditioner"]}, cond["input_ids"], cond["attention_mask"])

    def update(self, params: Params, key: str, condition: jax.Array, grad: jax.Array) -> jax.Array:
        """ΔW for one matrix and one edit, in kernel layout."""
        out = self.heads[key].apply({"params": params["matrices"][key]}, condition)
        grad = grad.astype(jnp.float32)
        return conditioned_update(out, grad, self.cfg.max_scale, transposed=self.transposed)

    def edit(self, params: Params, stats, base_params: Params, edit_batch, train: bool):
        edits = {k: v for k, v in edit_batch.items() if k != "cond"}
        cond = edit_batch.get("cond", edits)
        if cond["input_ids"].shape[0] != edits["input_ids"].shape[0]:
            raise ValueError(
                f"EFK needs one condition per edit: {cond['input_ids'].shape[0]} condition rows for "
                f"{edits['input_ids'].shape[0]} edits"
            )
        paths = self.target.inner_paths

        def one_edit(example, condition):
            example = jax.tree_util.tree_map(lambda x: x[None], example)
            # ∇W = Σ_rows x ⊗ δ from MEND's factors (constants): the same gradient, and XLA lays
            # it out as the kernel is. Differentiated with respect to the kernels, the gradient
            # came out transposed and the update formula read it across rows.
            loss, _, factors = inner_factors(self.target.module, base_params, paths, self.target.nll, example)
            grads = [jnp.einsum("...i,...o->io", *factors[path]) for path in paths]
            return loss, [self.update(params, key, condition, g) for key, g in zip(self.keys, grads)]

        losses, deltas = jax.vmap(one_edit)(edits, self.condition(params, cond))
        updates = {path: delta.sum(0) for path, delta in zip(paths, deltas)}
        return add_to_inner(base_params, updates), stats, {"loss/pre_edit": losses.mean()}


def torch_shape(kernel_shape: Tuple[int, int], transposed: bool) -> Tuple[int, int]:
    return (kernel_shape[1], kernel_shape[0]) if transposed else tuple(kernel_shape)
