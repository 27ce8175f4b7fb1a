"""Editing algorithms behind one interface (see base.py)."""
import ml_collections

from mend_jax.editors.base import EditTarget
from mend_jax.editors.mend import MEND

ALGORITHMS = {"mend": MEND}


def make_editor(config: ml_collections.ConfigDict, target: EditTarget, base_params):
    if config.alg not in ALGORITHMS:
        raise ValueError(f"alg {config.alg!r} is not implemented; available: {sorted(ALGORITHMS)}")
    return MEND(target, base_params, config.mend, edit_lr=config.edit_lr)


__all__ = ["ALGORITHMS", "EditTarget", "MEND", "make_editor"]
