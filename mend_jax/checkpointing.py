"""Orbax checkpoints of the whole train state: the latest (for resume) and the best.

Two managers, because a keep-best manager may delete the newest step, and
resume must always find it. The latest two steps are kept, so that a corrupt
newest one falls back to the one before; a full disk is checked before each
save and reported in one line, and the last good checkpoint survives it.
"""
import errno
import os
import shutil
import warnings
from typing import Any, Dict, Optional

import jax
import orbax.checkpoint as ocp

BEST_METRIC = "loss/total_edit_val"
LATEST_KEPT = 2


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read back; the message says what to do."""


def state_bytes(state: Any) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state) if hasattr(x, "dtype"))


def check_free_space(path: str, needed: int) -> None:
    """Raises CheckpointError before a save that would not fit (with a 2x margin for Orbax's temporaries)."""
    free = shutil.disk_usage(path).free
    if free < 2 * needed:
        raise CheckpointError(
            f"not enough disk space for a checkpoint in {path}: {free / 2**20:.0f} MiB free, "
            f"{2 * needed / 2**20:.0f} MiB needed. Free some space and rerun the same command: it resumes "
            "from the last good checkpoint"
        )


class Checkpointer:
    def __init__(self, workdir: str, async_save: bool = True):
        root = os.path.abspath(workdir)
        opts = dict(enable_async_checkpointing=async_save, create=True)
        self.root = os.path.join(root, "checkpoints")
        self.latest = ocp.CheckpointManager(
            os.path.join(self.root, "latest"), options=ocp.CheckpointManagerOptions(max_to_keep=LATEST_KEPT, **opts)
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
        self._save(self.latest, step, state)

    def _save(self, manager, step: int, state: Any, **kwargs) -> None:
        check_free_space(self.root, state_bytes(state))
        try:
            manager.save(step, args=ocp.args.StandardSave(state), force=True, **kwargs)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise CheckpointError(
                f"no space left on device while saving step {step} in {self.root}; the last good checkpoint "
                "is kept. Free some space and rerun the same command to resume"
            ) from None

    def save_best(self, step: int, state: Any, metrics: Dict[str, float]) -> None:
        if step in self.best.all_steps():
            # Left by a run killed after this save but before its next `latest`
            # checkpoint: the resumed run recomputes the same step.
            self.best.delete(step)
        self._save(self.best, step, state, metrics={BEST_METRIC: metrics[BEST_METRIC]})

    def restore(self, abstract_state: Any, which: str = "latest") -> Optional[Any]:
        """The newest readable `which` checkpoint (None if there is none). A corrupt latest
        step falls back to the one before it, with a warning naming it."""
        manager = self.latest if which == "latest" else self.best
        steps = [manager.best_step()] if which == "best" else sorted(manager.all_steps(), reverse=True)
        steps = [s for s in steps if s is not None]
        failures = []
        for step in steps:
            try:
                restored = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
            except Exception as e:  # Orbax raises many kinds (ValueError, KeyError, OSError, ...)
                failures.append((step, e))
                continue
            for bad, error in failures:
                warnings.warn(f"checkpoint {manager.directory}/{bad} is unreadable ({_first_line(error)}); "
                              f"resumed from step {step} instead")
            return restored
        if failures:
            step, error = failures[0]
            raise CheckpointError(
                f"no checkpoint in {manager.directory} can be restored (step {step}: {_first_line(error)}). "
                "Either it is corrupt, or this workdir holds a run of another config (task, model, "
                "inner params or editor shapes such as mend.rank): start this config in a new --workdir"
            )
        return None

    def close(self) -> None:
        for manager in (self.latest, self.best):
            manager.wait_until_finished()
            manager.close()


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
