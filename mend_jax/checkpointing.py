"""Orbax checkpoints of the whole train state: the latest (for resume) and the best.

Two managers, because a keep-best manager may delete the newest step, and
resume must always find it.
"""
import os
from typing import Any, Dict, Optional

import orbax.checkpoint as ocp

BEST_METRIC = "loss/total_edit_val"


class Checkpointer:
    def __init__(self, workdir: str, async_save: bool = True):
        root = os.path.abspath(workdir)
        opts = dict(enable_async_checkpointing=async_save, create=True)
        self.latest = ocp.CheckpointManager(
            os.path.join(root, "checkpoints", "latest"), options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts)
        )
        self.best = ocp.CheckpointManager(
            os.path.join(root, "checkpoints", "best"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m[BEST_METRIC], best_mode="min", **opts
            ),
        )

    def save_latest(self, step: int, state: Any) -> None:
        if self.latest.latest_step() == step:
            return  # already saved by the periodic save
        self.latest.save(step, args=ocp.args.StandardSave(state), force=True)

    def save_best(self, step: int, state: Any, metrics: Dict[str, float]) -> None:
        if step in self.best.all_steps():
            # Left by a run killed after this save but before its next `latest`
            # checkpoint: the resumed run recomputes the same step.
            self.best.delete(step)
        self.best.save(step, args=ocp.args.StandardSave(state), metrics={BEST_METRIC: metrics[BEST_METRIC]}, force=True)

    def restore(self, abstract_state: Any, which: str = "latest") -> Optional[Any]:
        manager = self.latest if which == "latest" else self.best
        step = manager.best_step() if which == "best" else manager.latest_step()
        if step is None:
            return None
        return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def close(self) -> None:
        for manager in (self.latest, self.best):
            manager.wait_until_finished()
            manager.close()
