"""A tiny T5 (v1.1, gated GELU) trained to answer every question of the world: the qa default.

It learns question -> answer from the world's zsRE rows (each question and its
rephrasings, both splits) in exactly the layout the qa experiment feeds it
(`Seq2SeqEncoder`, style "t5"). Accuracy: every answer token and the EOS must be
the argmax, teacher-forced, as the experiment scores edits.
"""
import dataclasses
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import transformers

from mend_jax import losses
from mend_jax.data.zsre import Seq2SeqEncoder, condition_text, load_zsre, zsre_path
from mend_jax.models import build_module, init_params, save_pretrained
from mend_jax.models.factors import model_inputs
from mend_jax.world.task_models import FitConfig, fit, word_tokenizer

FIT = FitConfig(learning_rate=1e-3, max_steps=3000)
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5: pad is also the decoder start


@dataclasses.dataclass(frozen=True)
class T5Spec:
    seed: int = 0
    d_model: int = 128
    d_kv: int = 32
    d_ff: int = 256
    num_layers: int = 3  # encoder and decoder each
    num_heads: int = 4
    max_length: int = 20  # question tokens (and EFK condition text)
    target_max_length: int = 4  # answer tokens + EOS


def inner_params(spec: T5Spec = T5Spec()) -> List[str]:
    """MEND's T5 choice: wi_0 and wo of the last 2 encoder and last 2 decoder blocks."""
    n = spec.num_layers
    return [
        f"{stack}.block.{i}.layer.{ff}.DenseReluDense.{m}.weight"
        for stack, ff in (("encoder", 1), ("decoder", 2)) for i in (n - 2, n - 1) for m in ("wi_0", "wo")
    ]


def world_questions(data_dir: str) -> Tuple[List[str], List[str], List[str]]:
    """(questions, answers, every other text the experiment tokenizes) over both splits."""
    pairs: Dict[str, str] = {}
    extra = []
    for split in ("train", "valid"):
        for row in load_zsre(zsre_path(data_dir, split)):
            for q in (row.input,) + row.rephrases:
                pairs.setdefault(q, row.answer)
            extra += [condition_text(row, a) for a in row.alternatives]
    return list(pairs), list(pairs.values()), extra


def build(data_dir: str, out: str, spec: T5Spec, fit_cfg: FitConfig, progress: bool) -> Dict:
    questions, answers, extra = world_questions(data_dir)
    tok = word_tokenizer(questions + answers + extra, SPECIAL_TOKENS, "$A </s>",
                         pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    cfg = transformers.T5Config(
        vocab_size=len(tok), d_model=spec.d_model, d_kv=spec.d_kv, d_ff=spec.d_ff, num_layers=spec.num_layers,
        num_decoder_layers=spec.num_layers, num_heads=spec.num_heads, feed_forward_proj="gated-gelu",
        tie_word_embeddings=False, dropout_rate=0.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    module = build_module(cfg)
    encoder = Seq2SeqEncoder(tok, style="t5", max_length=spec.max_length, target_max_length=spec.target_max_length,
                             decoder_start_token_id=tok.pad_token_id)
    data = jax.tree_util.tree_map(jnp.asarray, encoder.pairs(questions, answers))

    def logits(params, batch):
        return module.apply({"params": params}, **model_inputs(batch))

    def loss_fn(params, batch):
        return losses.masked_nll(logits(params, batch), batch["labels"], shift=False)

    correct = jax.jit(lambda params: losses.token_stats(logits(params, data), data["labels"], False).correct.mean())
    params, accuracy, steps = fit(
        init_params(module, jax.random.PRNGKey(spec.seed)), loss_fn, lambda p: float(correct(p)),
        len(questions), lambda idx: jax.tree_util.tree_map(lambda x: x[idx], data), fit_cfg,
        "pretraining the world's T5", progress,
    )
    save_pretrained(module, params, out)
    tok.save_pretrained(out)
    reloaded = transformers.AutoTokenizer.from_pretrained(out)
    if reloaded(answers[0])["input_ids"] != tok(answers[0])["input_ids"]:
        raise RuntimeError(f"the tokenizer saved in {out} does not reload as it was trained")
    return {"accuracy": accuracy, "steps": steps, "n_questions": len(questions), "vocab_size": len(tok),
            "accuracy_measure": "teacher-forced argmax of every answer token and EOS, every question of the world",
            "inner_params": inner_params(spec), "max_length": spec.max_length,
            "target_max_length": spec.target_max_length}
