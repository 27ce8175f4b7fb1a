"""MEND: gradient decomposition editors (Mitchell et al. 2022).

One edit: the factors (x, δ) of each inner matrix come from one `jax.grad` of
the edit NLL; rows that are all zero on either side are masked out; each side
is normalised with running statistics; an IDMLP maps them to (ũ, δ̃); the
pseudo-gradient Σ_rows ũ ⊗ δ̃ is scaled by a learnable per-matrix α and added
to the weight.
"""
from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mend_jax.editors.base import EditTarget, Params, add_to_inner, edit_lrs_init
from mend_jax.editors.idmlp import GradientTransform
from mend_jax.editors.running_stats import RunningStats, batch_moments
from mend_jax.models.factors import inner_factors


class MEND:
    def __init__(self, target: EditTarget, base_params: Params, cfg: ml_collections.ConfigDict, edit_lr: float):
        self.target = target
        self.cfg = cfg
        self.edit_lr = edit_lr
        shapes = target.inner_shapes(base_params)
        # Each inner matrix -> (editor key, mode). Shared editors serve every matrix of one shape.
        self.assignment: List[Tuple[str, Any]] = []
        self.editor_shapes: Dict[str, Tuple[int, int]] = {}
        modes_per_key: Dict[str, int] = {}
        for name, shape in zip(target.inner_names, shapes):
            key = f"{shape[0]}x{shape[1]}" if cfg.shared else name.replace(".", "#")
            mode = modes_per_key.get(key, 0)
            modes_per_key[key] = mode + 1
            self.editor_shapes[key] = (shape[0], shape[1])
            self.assignment.append((key, mode if cfg.shared else None))
        self.nets = {
            key: GradientTransform(
                x_dim=d_in, delta_dim=d_out, combine=cfg.combine, one_sided=cfg.one_sided,
                x_only=cfg.x_only, delta_only=cfg.delta_only, n_hidden=cfg.n_hidden,
                rank=cfg.rank, init_kind=cfg.init, n_modes=modes_per_key[key] if cfg.shared else None,
            )
            for key, (d_in, d_out) in self.editor_shapes.items()
        }

    def init(self, rng: jax.Array, base_params: Params):
        params = {"nets": {}, "edit_lrs": edit_lrs_init(len(self.assignment), self.edit_lr)}
        for i, (key, (d_in, d_out)) in enumerate(sorted(self.editor_shapes.items())):
            mode = 0 if self.cfg.shared else None
            params["nets"][key] = self.nets[key].init(
                jax.random.fold_in(rng, i), jnp.zeros((1, d_in)), jnp.zeros((1, d_out)), mode
            )["params"]
        stats = {
            key: {"x": RunningStats.zeros(d_in), "delta": RunningStats.zeros(d_out)}
            for key, (d_in, d_out) in self.editor_shapes.items()
        }
        return params, stats

    def param_labels(self, params: Params):
        return {"nets": jax.tree_util.tree_map(lambda _: "editor", params["nets"]), "edit_lrs": "edit_lrs"}

    def _rows(self, factors, path):
        """(x rows, δ rows, the rows that are non-zero on both sides) of one inner matrix."""
        x, delta = factors[path]
        x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
        delta = delta.reshape(-1, delta.shape[-1]).astype(jnp.float32)
        return x, delta, jnp.any(x != 0, -1) & jnp.any(delta != 0, -1)

    def pseudo_gradients(self, params: Params, stats, factors, train: bool):
        """{inner path: Σ_rows ũ ⊗ δ̃} and the updated statistics."""
        stats = dict(stats)
        normalized = []
        # Sequential over matrices, in config order, as the reference updates shared statistics.
        for path, (key, _) in zip(self.target.inner_paths, self.assignment):
            x, delta, rows = self._rows(factors, path)
            if train:
                stats[key] = {"x": stats[key]["x"].update(x, rows), "delta": stats[key]["delta"].update(delta, rows)}
            if self.cfg.norm:
                x, delta = stats[key]["x"].normalize(x), stats[key]["delta"].normalize(delta)
            normalized.append((x, delta, rows))
        grads = {}
        # One call of each network for all the matrices it serves: their rows are independent, and
        # a shared network's weights are then read once per edit instead of once per matrix.
        for key in self.nets:
            served = [i for i, (k, _) in enumerate(self.assignment) if k == key]
            x = jnp.concatenate([normalized[i][0] for i in served])
            delta = jnp.concatenate([normalized[i][1] for i in served])
            modes = None
            if self.cfg.shared:
                modes = jnp.concatenate([jnp.full(len(normalized[i][0]), self.assignment[i][1]) for i in served])
            u, d = self.nets[key].apply({"params": params["nets"][key]}, x, delta, modes)
            starts = np.cumsum([0] + [len(normalized[i][0]) for i in served])
            for i, lo, hi in zip(served, starts[:-1], starts[1:]):
                rows = normalized[i][2]
                grads[self.target.inner_paths[i]] = jnp.einsum("ri,ro->io", u[lo:hi] * rows[:, None].astype(u.dtype), d[lo:hi])
        return grads, stats

    # Data-parallel training (data_parallel.py) needs the statistics each batch of a window starts
    # from before any batch is edited: the moments of every batch first, merged in order after.
    def stats_moments(self, params: Params, base_params: Params, edit_batch):
        """The moments that `edit(train=True)` merges into the statistics, one per inner matrix in
        config order; they depend on the batch and the base model only."""
        del params
        _, _, factors = inner_factors(
            self.target.module, base_params, self.target.inner_paths, self.target.nll, edit_batch
        )
        moments = []
        for path in self.target.inner_paths:
            x, delta, rows = self._rows(factors, path)
            moments.append({"x": batch_moments(x, rows), "delta": batch_moments(delta, rows)})
        return tuple(moments)

    def merge_moments(self, stats, moments):
        """The statistics after `edit(train=True)` on the batch whose `stats_moments` these are."""
        stats = dict(stats)
        for (key, _), m in zip(self.assignment, moments):
            stats[key] = {"x": stats[key]["x"].merge(m["x"]), "delta": stats[key]["delta"].merge(m["delta"])}
        return stats

    def edit(self, params: Params, stats, base_params: Params, edit_batch, train: bool):
        loss, logits, factors = inner_factors(
            self.target.module, base_params, self.target.inner_paths, self.target.nll, edit_batch
        )
        grads, stats = self.pseudo_gradients(params, stats, factors, train)
        updates = {
            path: params["edit_lrs"][i] * grads[path] for i, path in enumerate(self.target.inner_paths)
        }
        info = {"loss/pre_edit": loss}
        return add_to_inner(base_params, updates), stats, info
