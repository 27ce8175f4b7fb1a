"""The qa experiment: edit a seq2seq model's answer to a zsRE question.

  python -m mend_jax.train --config=configs/qa.py                  # embedded world, tiny T5 (offline)
  python -m mend_jax.train --config=configs/qa.py:t5-small         # google/t5-small-ssm-nq, NQ locality
  python -m mend_jax.train --config=configs/qa.py:t5-xl --config.model.dtype=bfloat16
  python -m mend_jax.convert_lightning data/zsre/QA_model.ckpt models/bart-base-zsre --model-type bart --base facebook/bart-base
  python -m mend_jax.train --config=configs/qa.py:bart-base --config.model.name=models/bart-base-zsre

Arguments: world (default), t5-small, t5-large, t5-xl, t5-xxl, bart-base.
Edits come from data.path (structured_zeroshot-{train,dev}-new_annotated_final.jsonl);
locality from Natural Questions (data.nq_path/{train,validation}.json, or
--config.data.loc_source=tfds:natural_questions_open) when data.zsre_nq, as the
reference for validation only (data.zsre_nq_train=True uses it in training too),
else from other zsRE rows. k edits at once: --config.data.n_edits=k
--config.batch_size=k+1 --config.val_batch_size=k+4.
"""
from mend_jax import config_lib

# T5 (all `ssm-nq` checkpoints are T5 v1.1, whose gated MLP's first matrix is wi_0): layers per stack.
T5_MODELS = {
    "t5-small": ("google/t5-small-ssm-nq", 8),
    "t5-large": ("google/t5-large-ssm-nq", 24),
    "t5-xl": ("google/t5-xl-ssm-nq", 24),
    "t5-xxl": ("google/t5-xxl-ssm-nq", 24),
}


def t5_inner_params(n_layers: int, gated: bool = True, n_blocks: int = 2):
    """wi_0 (v1.1; wi for v1.0) and wo of the last `n_blocks` encoder and decoder blocks."""
    wi = "wi_0" if gated else "wi"
    return [
        f"{stack}.block.{i}.layer.{ff}.DenseReluDense.{m}.weight"
        for stack, ff in (("encoder", 1), ("decoder", 2))
        for i in range(n_layers - n_blocks, n_layers)
        for m in (wi, "wo")
    ]


def bart_inner_params(n_layers: int = 6, n_blocks: int = 2):
    return [
        f"model.{stack}.layers.{i}.{m}.weight"
        for stack in ("encoder", "decoder") for i in range(n_layers - n_blocks, n_layers) for m in ("fc1", "fc2")
    ]


def world_qa(c) -> None:
    """The embedded offline default: a tiny T5 that knows the world's answers.

    The algorithm is the reference's; the schedule and learning rates (alg_defaults="world")
    are scaled to a tiny model and a run of minutes on a CPU.
    """
    from mend_jax.world import pretrain_seq2seq

    spec = pretrain_seq2seq.T5Spec()
    config_lib.use_world_model(c, pretrain_seq2seq.inner_params(spec))
    c.data.max_length = spec.max_length
    c.data.target_max_length = spec.target_max_length
    c.data.loc_pool = "all"
    # val_steps is the reference's count; the world's dev split is smaller, so all of it.
    config_lib.world_schedule(c, max_iters=8000, log_interval=100, val_interval=1000, val_steps=500,
                              early_stop_patience=8000)


def get_config(arg: str = None):
    arg = arg or "world"
    c = config_lib.base_config()
    c.task = "qa"
    c.data.path = "data/zsre"
    c.data.nq_path = "data/nq"
    c.data.zsre_nq = True  # NQ locality; the README turns it off for BART-base
    c.data.zsre_nq_train = False  # the reference uses NQ for validation only
    c.data.max_length = 32
    c.data.target_max_length = 32
    if arg == "world":
        world_qa(c)
    elif arg in T5_MODELS:
        name, n_layers = T5_MODELS[arg]
        c.model.name = name
        c.model.inner_params = t5_inner_params(n_layers)
    elif arg == "bart-base":
        # The reference starts from De Cao et al.'s BART-base fine-tuned on zsRE (QA_model.ckpt):
        # convert it (see above) and pass the directory as --config.model.name.
        c.model.name = "facebook/bart-base"
        c.model.inner_params = bart_inner_params()
        c.data.zsre_nq = False
    else:
        raise ValueError(
            f"configs/qa.py: unknown argument {arg!r}; use world, bart-base or one of {sorted(T5_MODELS)}"
        )
    return c
