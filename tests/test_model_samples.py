"""data/model_samples.py: the gen experiment's edits and locality passages from the model's own
samples, in the published layout, built once per model and settings."""
import json
import os

import pytest

from mend_jax import experiments
from mend_jax.config_checks import ConfigError
from mend_jax.data import gen, model_samples
from tests import tiny

SETTINGS = dict(n_train=12, n_valid=6, n_loc_train=6, n_loc_valid=4, context_tokens=4, n_tokens=2,
                passage_tokens=60, top_k=5)


def fake_generate(calls):
    """Deterministic word samples: every third passage non-ASCII, every fourth edit end one word short."""

    def generate(prompts, n_new, seed):
        calls.append((len(prompts), n_new, seed))
        out = []
        for i, _ in enumerate(prompts):
            n = n_new - 1 if (n_new == SETTINGS["n_tokens"] and i % 4 == 3) else n_new
            words = [f"w{(7 * i + seed + j) % 40}" for j in range(n)]
            if n_new == SETTINGS["passage_tokens"] and i % 3 == 2:
                words[0] = "caf\u00e9"
            out.append(" " + " ".join(words))
        return out

    return generate


def test_edits_and_passages_follow_the_reference_format_and_split_by_seed_prompt():
    tok = tiny.word_tokenizer([f"w{i}" for i in range(40)])
    edits, passages = model_samples.build(fake_generate([]), tok, SETTINGS)
    train_seeds, valid_seeds = model_samples.seed_prompts("train"), model_samples.seed_prompts("valid")
    assert not set(train_seeds) & set(valid_seeds) and len(train_seeds) + len(valid_seeds) == len(
        model_samples.SEED_PROMPTS)
    for split, seeds in (("train", train_seeds), ("valid", valid_seeds)):
        obj = edits[split]
        gen.parse_self_sample(obj, split)  # the reader's own checks
        assert len(obj["completions"]) == SETTINGS[f"n_{split}"] - SETTINGS[f"n_{split}"] // 4  # short ends dropped
        for original, completion in zip(obj["original"], obj["completions"]):
            assert any(original.startswith(s) for s in seeds)
            assert completion.startswith(original) and len(tok(completion[len(original):])["input_ids"]) == 2
        n = SETTINGS[f"n_loc_{split}"]
        assert len(passages[split]) == n - n // 3  # the non-ASCII ones dropped
        assert all(model_samples.is_passage(p) and "\n" not in p for p in passages[split])


def test_the_gen_experiment_trains_on_samples_built_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MEND_JAX_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(model_samples, "sampler", lambda *a: fake_generate(calls))
    c = tiny.write_gen_experiment(str(tmp_path / "exp"), model_type="llama")
    c.data.source, c.data.path, c.data.loc_path = "model_samples", "", ""
    c.data.samples.update(SETTINGS)
    c.data.max_length, c.data.loc_max_length = 16, 24  # passages are cut at 24 tokens
    exp = experiments.build(c)
    assert len(calls) == 6  # contexts, ends and passages for each split
    batch = exp.train_data.train_batch(0)
    assert {"edit_inner", "edit_outer", "loc"} <= set(batch)
    (root,) = os.listdir(tmp_path / "cache" / "model_samples")
    spec = json.load(open(tmp_path / "cache" / "model_samples" / root / "spec.json"))
    assert spec["counts"]["train"] == {"edits": 9, "passages": 4} and spec["settings"]["top_k"] == 5
    experiments.build(c)  # the cache serves it: nothing sampled again
    assert len(calls) == 6
    c.data.samples.n_train = 16  # other settings: another directory
    experiments.build(c)
    assert len(calls) == 12 and len(os.listdir(tmp_path / "cache" / "model_samples")) == 2


def test_model_samples_go_with_the_gen_experiment_only():
    c = tiny.repo_config("counterfact").get_config("world_small")
    c.data.source = "model_samples"
    with pytest.raises(ConfigError, match="goes with --config.task=gen"):
        experiments.check_config(c)
