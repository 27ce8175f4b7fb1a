"""Registry of model families: how a Hugging Face `model_type` becomes a Flax module.

Each family module (gpt2.py, t5.py, ...) registers one `Family`. Everything
generic (file reading, name mapping, saving) lives elsewhere and only asks the
family the few questions that differ between architectures.
"""
import dataclasses
from typing import Any, Callable, Dict, Tuple

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


@dataclasses.dataclass(frozen=True)
class Family:
    """What the generic loader needs to know about one architecture.

    Attributes:
      model_type: the `model_type` in a Hugging Face `config.json`.
      build: (hf_config, dtype, param_dtype) -> Flax module.
      config_class: the `transformers` config class, used to read `config.json`.
      is_seq2seq: whether the module takes decoder inputs.
      conv1d_kernels: PyTorch stores the kernels as (d_in, d_out) (GPT-2's Conv1D)
        rather than nn.Linear's (d_out, d_in).
      base_prefix: prefix of the PyTorch task model's backbone ("transformer." for
        GPT2LMHeadModel). Checkpoints saved from the bare backbone omit it.
      aliases: canonical PyTorch name -> other names a checkpoint may use for the
        same tensor (tied embeddings saved under another name, old LayerNorm names).
      optional: canonical PyTorch names that may be missing from a checkpoint and
        are then freshly initialised (e.g. a new classifier head).
      embedding_path: the Flax path of a decoder's token `Embed`, which the pad-token fix
        grows by one row; empty for families whose tokenizers have a pad token.
    """

    model_type: str
    build: Callable[[Any, Dtype, Dtype], nn.Module]
    config_class: Callable[..., Any]
    is_seq2seq: bool = False
    conv1d_kernels: bool = False
    base_prefix: str = ""
    aliases: Callable[[str], Tuple[str, ...]] = lambda name: ()
    optional: Callable[[str], bool] = lambda name: False
    embedding_path: Tuple[str, ...] = ()


_FAMILIES: Dict[str, Family] = {}


def register(family: Family) -> Family:
    _FAMILIES[family.model_type] = family
    return family


def get_family(model_type: str) -> Family:
    _import_families()
    try:
        return _FAMILIES[model_type]
    except KeyError:
        raise ValueError(
            f"unsupported model_type {model_type!r}; mend-jax implements: {sorted(_FAMILIES)}"
        ) from None


def known_model_types():
    _import_families()
    return sorted(_FAMILIES)


def _import_families():
    # Imported lazily so that each family module can import this one.
    from mend_jax.models import bart, bert, gpt2, gpt_neo, gptj, llama, t5  # noqa: F401


def dummy_inputs(family: Family, batch: int = 1, length: int = 4) -> Dict[str, Any]:
    ids = jnp.zeros((batch, length), jnp.int32)
    inputs = {"input_ids": ids, "attention_mask": jnp.ones_like(ids)}
    if family.is_seq2seq:
        inputs.update(decoder_input_ids=ids, decoder_attention_mask=jnp.ones_like(ids))
    return inputs
