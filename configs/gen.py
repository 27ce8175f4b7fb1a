"""The gen experiment: edit GPT-2 so it generates a given continuation.

  python -m mend_jax.train --config=configs/gen.py               # embedded fact world (offline)
  python -m mend_jax.train --config=configs/gen.py:distilgpt2    # the paper's setting
  python -m mend_jax.train --config=configs/gen.py:gpt2-xl
  python -m mend_jax.train --config=configs/gen.py:distilgpt2 --config.data.loc_source=tfds:wiki40b/en

  python -m mend_jax.train --config=configs/gen.py:world_small  # a smaller world, built in ~2 min

Arguments: world (default), world_small, distilgpt2, gpt2, gpt2-medium, gpt2-large, gpt2-xl.
"""
from mend_jax import config_lib

GPT2_LAYERS = {"gpt2": 12, "gpt2-medium": 24, "gpt2-large": 36, "gpt2-xl": 48}


def last_mlp_blocks(n_layer: int, n_blocks: int = 3):
    return [
        f"transformer.h.{i}.mlp.{m}.weight" for i in range(n_layer - n_blocks, n_layer) for m in ("c_fc", "c_proj")
    ]


def get_config(arg: str = None):
    arg = arg or "world"
    c = config_lib.base_config()
    c.task = "gen"
    c.c_base = 10.0
    c.model.pad_token_fix = True
    c.data.path = "data/10token/data/self_sample"
    c.data.loc_path = "data/wikitext-103-raw"
    if arg in ("world", "world_small"):
        config_lib.world_gen(c)
        if arg == "world_small":
            config_lib.use_small_world(c, val_steps=54)
    elif arg == "distilgpt2":
        c.model.name = "MYX4567/distilgpt2-finetuned-wikitext2"
        c.model.tokenizer = "distilgpt2"
        c.model.inner_params = last_mlp_blocks(6)
    elif arg in GPT2_LAYERS:
        c.model.name = arg
        c.model.tokenizer = arg
        c.model.inner_params = last_mlp_blocks(GPT2_LAYERS[arg])
    else:
        raise ValueError(f"configs/gen.py: unknown argument {arg!r}; use world, world_small, distilgpt2 or one of {sorted(GPT2_LAYERS)}")
    return c
