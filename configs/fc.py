"""The fc experiment: edit a BERT classifier's verdict on a FEVER claim.

  python -m mend_jax.train --config=configs/fc.py                  # embedded world, tiny BERT (offline)
  python -m mend_jax.convert_lightning data/fever/FC_model.ckpt models/bert-base-fever --model-type bert --base bert-base-uncased
  python -m mend_jax.train --config=configs/fc.py:bert-base --config.model.name=models/bert-base-fever

Arguments: world (default), bert-base. Edits and locality claims come from
data.path (fever-{train,dev}-kilt.jsonl). k edits at once: --config.data.n_edits=k
--config.batch_size=k+1 --config.val_batch_size=k+4.
"""
from mend_jax import config_lib


def bert_inner_params(n_layers: int = 12, n_blocks: int = 3):
    return [
        f"bert.encoder.layer.{i}.{m}.dense.weight"
        for i in range(n_layers - n_blocks, n_layers) for m in ("intermediate", "output")
    ]


def world_fc(c) -> None:
    """The embedded offline default: a tiny BERT classifier that knows which claims are true.

    The algorithm is the reference's; the schedule and learning rates (alg_defaults="world")
    are scaled to a tiny model and a run of minutes on a CPU.
    """
    from mend_jax.world import pretrain_classifier

    spec = pretrain_classifier.BertSpec()
    config_lib.use_world_model(c, pretrain_classifier.inner_params(spec))
    c.data.max_length = spec.max_length
    # val_steps is the reference's count; the world's dev split is smaller, so all of it.
    config_lib.world_schedule(c, max_iters=8000, log_interval=100, val_interval=1000, val_steps=500,
                              early_stop_patience=8000)


def get_config(arg: str = None):
    arg = arg or "world"
    c = config_lib.base_config()
    c.task = "fc"
    c.data.path = "data/fever"
    c.data.max_length = 32
    if arg == "world":
        world_fc(c)
    elif arg == "bert-base":
        # The reference starts from De Cao et al.'s BERT-base fine-tuned on FEVER (FC_model.ckpt):
        # convert it (see above) and pass the directory as --config.model.name.
        c.model.name = "bert-base-uncased"
        c.model.inner_params = bert_inner_params()
    else:
        raise ValueError(f"configs/fc.py: unknown argument {arg!r}; use world or bert-base")
    return c
