"""Defaults shared by the experiment configs in `configs/`.

Names and values follow the reference's hydra configs (config/*.yaml,
config/alg/mend.yaml), so a run here can be compared with one there.
"""
import ml_collections


def mend_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            combine=True,
            one_sided=False,
            x_only=False,
            delta_only=False,
            shared=True,
            n_hidden=1,
            rank=1920,
            init="id",
            norm=True,
        )
    )


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.alg = "mend"
    c.task = ""
    c.seed = 0
    c.eval_only = False

    c.model = ml_collections.ConfigDict(
        dict(name="", tokenizer="", inner_params=[], dtype="float32", pad_token_fix=False)
    )
    c.data = ml_collections.ConfigDict(
        dict(
            source="files",  # "files" (the reference's published data) or "world" (embedded)
            path="",
            loc_path="",
            n_edits=1,
            max_length=200,
            loc_max_length=200,
            loc_pct=10.0,
            loc_pool="reference",
        )
    )
    c.mend = mend_defaults()

    # Optimisation (reference: alg/mend.yaml, config.yaml).
    c.lr = 1e-6
    c.edit_lr = 1e-4
    c.lr_lr = 1e-4
    c.edit_lrs_use_lr_lr = False  # the reference's lr_opt never steps; True applies lr_lr to the α's
    c.c_edit = 0.1
    c.c_loc = 1.0
    c.c_base = 1.0
    c.accumulate_bs = 10
    c.grad_clip = 100.0
    c.batch_size = 2  # n_edits edits + (batch_size - n_edits) locality examples
    c.val_batch_size = 5

    # Schedule.
    c.max_iters = 1_000_000
    c.log_interval = 100
    c.val_interval = 5000
    c.val_steps = 500
    c.early_stop_patience = 20000
    c.final_eval_steps = -1  # -1: the whole validation set
    c.eval_chunk = 50  # edits per vmapped validation call
    c.checkpoint_interval = 5000
    c.async_checkpointing = True
    return c


def world_gen(c: ml_collections.ConfigDict) -> None:
    """The embedded offline default: a tiny GPT-2 that knows a generated world of facts.

    The algorithm is the reference's; only the schedule and learning rate are
    scaled to a tiny model and a run of minutes on a CPU.
    """
    c.data.source = "world"
    c.model.name = "world"
    c.model.inner_params = [f"transformer.h.{i}.mlp.{m}.weight" for i in (1, 2, 3) for m in ("c_fc", "c_proj")]
    c.data.max_length = 24
    c.data.loc_max_length = 96
    c.data.loc_pool = "all"
    c.lr = 1e-4
    c.accumulate_bs = 10
    c.max_iters = 3000
    c.log_interval = 50
    c.val_interval = 500
    c.val_steps = 100
    c.early_stop_patience = 2000
    c.checkpoint_interval = 500
