"""`train_base=True`: meta-train (part of) the base model alongside any editor.

The reference's ENN optimises every parameter of the base model together with
its edit learning rates, or, with `no_grad_layers=k`, only blocks k.. of each
block list (`nn.ModuleList`). Here the trainable part of the base lives in the
editor's parameters under "base", so the optimiser state, accumulation,
checkpoints and resume cover it with no special case; the frozen part stays in
the experiment's `base_params`, which also serve as the original model for the
c_base · KL(p_original ‖ p_base) term (meta.py).
"""
from typing import Optional

import jax
import jax.numpy as jnp
from flax import traverse_util

from mend_jax.editors.base import Params, Path


def block_index(path: Path, block_lists) -> Optional[int]:
    """Index of the block `path` lies in, or None if it lies in no block list."""
    for i in range(1, len(path)):
        if path[:i] in block_lists:
            return int(path[i])
    return None


def block_lists(flat_params) -> set:
    """Paths of the outermost subtrees keyed 0, 1, 2, ... (GPT-2's h, T5's encoder/block, ...).

    Nested ones (T5's per-block `layer` list) are not block lists of the model.
    """
    children = {}
    for path in flat_params:
        for i in range(1, len(path)):
            children.setdefault(path[:i], set()).add(path[i])
    numbered = {p for p, keys in children.items() if all(k.isdigit() for k in keys)}
    return {p for p in numbered if not any(p[:i] in numbered for i in range(1, len(p)))}


def trainable_paths(base_params: Params, no_grad_layers: Optional[int]):
    flat = traverse_util.flatten_dict(base_params)
    if no_grad_layers is None:
        return list(flat)
    lists = block_lists(flat)
    if not lists:
        raise ValueError("no_grad_layers is set but the model has no numbered block list to freeze")
    keep = lambda i: i is not None and i >= no_grad_layers
    return [p for p in flat if keep(block_index(p, lists))]


class TrainableBase:
    """Wraps an editor: params are {"editor": editor params, "base": the trainable base leaves}."""

    def __init__(self, editor, no_grad_layers: Optional[int] = None):
        if not getattr(editor, "needs_training", True):
            raise ValueError(f"{type(editor).__name__} has nothing to meta-train, so train_base cannot apply")
        self.editor = editor
        self.no_grad_layers = no_grad_layers

    def __getattr__(self, name):  # target, bind_data, ... of the wrapped editor
        return getattr(self.__dict__["editor"], name)

    def init(self, rng: jax.Array, base_params: Params):
        params, stats = self.editor.init(rng, base_params)
        flat = traverse_util.flatten_dict(base_params)
        # Copies: the trainer donates these, and the original model must survive as base_params.
        base = {p: jnp.copy(flat[p]) for p in trainable_paths(base_params, self.no_grad_layers)}
        return {"editor": params, "base": traverse_util.unflatten_dict(base)}, stats

    def param_labels(self, params: Params):
        return {
            "editor": self.editor.param_labels(params["editor"]),
            "base": jax.tree_util.tree_map(lambda _: "base", params["base"]),
        }

    def current_base(self, params: Params, base_params: Params) -> Params:
        flat = traverse_util.flatten_dict(base_params)
        flat.update(traverse_util.flatten_dict(params["base"]))
        return traverse_util.unflatten_dict(flat)

    def edit(self, params: Params, stats, base_params: Params, edit_batch, train: bool):
        return self.editor.edit(params["editor"], stats, self.current_base(params, base_params), edit_batch, train)

    def stats_moments(self, params: Params, base_params: Params, edit_batch):
        """The wrapped editor's, taken on the current base. data_parallel.py calls it only when
        the wrapped editor has merge_moments (which __getattr__ passes through)."""
        return self.editor.stats_moments(params["editor"], self.current_base(params, base_params), edit_batch)
