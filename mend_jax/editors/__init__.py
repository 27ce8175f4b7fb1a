"""Editing algorithms behind one interface (see base.py)."""
import ml_collections

from mend_jax import config_lib
from mend_jax.editors.base import EditTarget
from mend_jax.editors.efk import EFK
from mend_jax.editors.enn import ENN
from mend_jax.editors.ft import FT
from mend_jax.editors.mend import MEND
from mend_jax.editors.train_base import TrainableBase

ALGORITHMS = {
    "mend": lambda c, target, params: MEND(target, params, c.mend, edit_lr=c.edit_lr),
    "efk": lambda c, target, params: EFK(target, params, c.efk),
    "enn": lambda c, target, params: ENN(target, params, c.enn, edit_lr=c.edit_lr),
    "ft": lambda c, target, params: FT(target, params, c.ft, edit_lr=c.edit_lr, grad_clip=c.grad_clip),
}


def make_editor(config: ml_collections.ConfigDict, target: EditTarget, base_params):
    """The editor `config.alg` names, with its defaults filled into `config` (in place)."""
    if config.alg not in ALGORITHMS:
        raise ValueError(f"alg {config.alg!r} is not implemented; available: {sorted(ALGORITHMS)}")
    config_lib.apply_alg_defaults(config)
    editor = ALGORITHMS[config.alg](config, target, base_params)
    if config.train_base:
        editor = TrainableBase(editor, config.no_grad_layers)
    return editor


__all__ = ["ALGORITHMS", "EFK", "ENN", "EditTarget", "FT", "MEND", "TrainableBase", "make_editor"]
