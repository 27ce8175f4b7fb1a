"""A tiny BERT classifier (one logit) trained to tell the world's true claims from false ones: the fc default.

It learns every FEVER claim of the world (each claim and its rephrasings, both
splits) with its gold label, in the layout the fc experiment feeds it.
Accuracy: sigmoid > 0.5 on the correct side.
"""
import dataclasses
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import transformers

from mend_jax import losses
from mend_jax.data.fever import POSITIVE, condition_text, fever_path, load_fever
from mend_jax.data.kilt import encode
from mend_jax.models import build_module, init_params, save_pretrained
from mend_jax.models.factors import model_inputs
from mend_jax.world.task_models import FitConfig, fit, word_tokenizer

FIT = FitConfig(learning_rate=5e-4, max_steps=3000)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True)
class BertSpec:
    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256
    max_length: int = 20  # claim tokens (and EFK condition text)


def inner_params(spec: BertSpec = BertSpec()) -> List[str]:
    """MEND's BERT choice: intermediate.dense and output.dense of the last 3 layers."""
    n = spec.num_layers
    return [f"bert.encoder.layer.{i}.{m}.dense.weight" for i in range(n - 3, n) for m in ("intermediate", "output")]


def world_claims(data_dir: str) -> Tuple[List[str], List[int], List[str]]:
    """(claims, 0/1 labels, every other text the experiment tokenizes) over both splits."""
    labelled: Dict[str, int] = {}
    extra = []
    for split in ("train", "valid"):
        for c in load_fever(fever_path(data_dir, split)):
            for text in (c.input,) + c.rephrases:
                labelled.setdefault(text, int(c.label == POSITIVE))
            extra += [condition_text(c, c.alternative), condition_text(c, c.prediction)]
    return list(labelled), list(labelled.values()), extra


def build(data_dir: str, out: str, spec: BertSpec, fit_cfg: FitConfig, progress: bool) -> Dict:
    claims, labels, extra = world_claims(data_dir)
    tok = word_tokenizer(claims + extra, SPECIAL_TOKENS, "[CLS] $A [SEP]", pad_token="[PAD]", unk_token="[UNK]",
                         cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    cfg = transformers.BertConfig(
        vocab_size=len(tok), hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, intermediate_size=spec.intermediate_size,
        max_position_embeddings=max(64, spec.max_length), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        num_labels=1, architectures=["BertForSequenceClassification"], pad_token_id=tok.pad_token_id,
    )
    module = build_module(cfg)
    data = {**encode(tok, claims, spec.max_length), "labels": np.asarray(labels, np.int32)}
    data = jax.tree_util.tree_map(jnp.asarray, data)

    def logits(params, batch):
        return module.apply({"params": params}, **model_inputs(batch))

    def loss_fn(params, batch):
        return losses.masked_nll(logits(params, batch), batch["labels"], shift=False)

    correct = jax.jit(lambda params: losses.token_stats(logits(params, data), data["labels"], False).correct.mean())
    # A fact has 3 true claims but 9 false ones (3 templates x 3 alternatives), so
    # training draws from a pool where each true claim appears as often as needed to
    # balance them; without that a small BERT settles on always answering "false".
    labels_np = np.asarray(labels)
    repeats = np.where(labels_np == 1, max(1, round((labels_np == 0).sum() / max((labels_np == 1).sum(), 1))), 1)
    pool = np.repeat(np.arange(len(claims)), repeats)
    params, accuracy, steps = fit(
        init_params(module, jax.random.PRNGKey(spec.seed)), loss_fn, lambda p: float(correct(p)),
        len(pool), lambda idx: jax.tree_util.tree_map(lambda x: x[pool[idx]], data), fit_cfg,
        "pretraining the world's BERT classifier", progress,
    )
    save_pretrained(module, params, out)
    tok.save_pretrained(out)
    return {"accuracy": accuracy, "steps": steps, "n_claims": len(claims), "vocab_size": len(tok),
            "accuracy_measure": "sigmoid > 0.5 on the gold side, every claim of the world",
            "inner_params": inner_params(spec), "max_length": spec.max_length}
