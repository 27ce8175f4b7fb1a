"""The fictional fact world: generator, data formats, tokenizer, pretraining and cache."""
import dataclasses
import json
import os
from importlib import metadata

import numpy as np
import pytest
import transformers

from mend_jax.models import add_pad_token, load_pretrained
from mend_jax.world import PretrainConfig, WorldConfig, cache, ensure_world, formats, generate_world, load_tokenizer
from mend_jax.world.facts import RELATIONS
from mend_jax.world.tokenizer import EOS, object_token_count, train_tokenizer

TINY = WorldConfig(seed=1, n_countries=2, cities_per_country=2, n_languages=2, n_people=4, n_companies=2)
TINY_PRETRAIN = PretrainConfig(
    n_embd=32, n_layer=2, n_head=2, learning_rate=1e-2, warmup_steps=20, sentence_batch=32,
    passage_batch=2, max_steps=800, eval_every=25,
)


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig())


@pytest.fixture(scope="module")
def written(world, tmp_path_factory):
    """The default world's data files and tokenizer, without pretraining."""
    root = str(tmp_path_factory.mktemp("world_files"))
    tok = train_tokenizer(formats.all_texts(world))
    n_tokens = object_token_count(tok, world.facts)
    formats.write_all(world, root, n_tokens)
    return root, tok


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A tiny world built end to end in a private cache, with a build counter."""
    calls = []
    real_pretrain = cache.pretrain

    def counting_pretrain(*args, **kwargs):
        calls.append(1)
        return real_pretrain(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEND_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(cache, "pretrain", counting_pretrain)
        artifacts = ensure_world(TINY, TINY_PRETRAIN, progress=False)
        yield artifacts, calls


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_same_seed_same_world_other_seed_differs(world):
    assert generate_world(WorldConfig()) == world
    other = generate_world(WorldConfig(seed=7))
    assert other.entities["person"] != world.entities["person"]
    assert [f.object for f in other.facts] != [f.object for f in world.facts]


def test_world_shape(world):
    assert len(RELATIONS) >= 5
    assert 200 <= len(world.facts) <= 500
    names = [n for kind, ns in world.entities.items() if kind != "field" for n in ns]
    assert len(names) == len(set(names)), "entity names must be unique"
    assert all(n.isascii() and n.isalpha() and n[0].isupper() for n in names)
    keys = [(f.subject, f.relation) for f in world.facts]
    assert len(keys) == len(set(keys)), "one object per subject and relation"


def test_templates_end_with_object_and_are_unambiguous():
    for r in RELATIONS:
        assert len(r.statements) >= 3 and len(r.questions) >= 3
        assert all(t.endswith(" {o}.") and t.count("{o}") == 1 for t in r.statements)
        assert all(t.endswith("?") and "{o}" not in t for t in r.questions)
    # No pre-object text may be a prefix of another for the same subject kind:
    # the word after the shorter one would be the object only half of the time.
    for kind in {r.subject_kind for r in RELATIONS}:
        prefixes = [t.split("{o}")[0] for r in RELATIONS if r.subject_kind == kind for t in r.statements]
        for i, a in enumerate(prefixes):
            for b in prefixes[i + 1:]:
                assert not a.startswith(b) and not b.startswith(a), (a, b)


def test_alternatives_differ_from_truth_and_share_the_relation(world):
    objects = {r.name: {f.object for f in world.facts if f.relation == r.name} for r in RELATIONS}
    for f in world.facts:
        assert len(f.alternatives) == world.config.n_alternatives
        assert len(set(f.alternatives)) == len(f.alternatives)
        assert f.object not in f.alternatives
        assert set(f.alternatives) <= objects[f.relation]
    capital = next(f for f in world.facts if f.relation == "capital")
    located = {f.subject: f.object for f in world.facts if f.relation == "located_in"}
    assert located[capital.object] == capital.subject, "a capital lies in its country"


def test_splits_are_disjoint_by_subject(world):
    train, valid = world.split("train"), world.split("valid")
    assert len(train) + len(valid) == len(world.facts)
    assert not {f.subject for f in train} & {f.subject for f in valid}
    assert {f.relation for f in train} == {f.relation for f in valid} == {r.name for r in RELATIONS}
    assert 0.1 < len(valid) / len(world.facts) < 0.3


def test_gen_self_sample_ends_with_the_counterfactual_object(world, written):
    root, tok = written
    for split in formats.SPLITS:
        with open(os.path.join(root, formats.GEN_SELF_SAMPLE.format(split))) as f:
            data = json.load(f)
        assert set(data) == {"original", "completions", "n_tokens"}
        n = data["n_tokens"]
        facts = world.split(split)
        n_templates, n_alternatives = 3, world.config.n_alternatives
        assert n == 2 and len(data["original"]) == len(data["completions"]) == n_templates * n_alternatives * len(facts)
        new_objects = []
        for original, completion in zip(data["original"], data["completions"]):
            o_ids, c_ids = tok.encode(original), tok.encode(completion)
            new_objects.append(completion[:-1].split(" ")[-1])
            assert tok.decode(c_ids[-n:]) == f" {new_objects[-1]}."
            assert o_ids[:-n] == c_ids[:-n] and o_ids[-n:] != c_ids[-n:], "only the object is edited"
        # Round r edits every fact and template once, with alternative t + r: the first round alone
        # covers every fact (what validation on the first val_steps edits sees).
        per_round = n_templates * len(facts)
        for r in range(n_alternatives):
            expect = [f.alternative(t + r) for f in facts for t in range(n_templates)]
            assert new_objects[r * per_round:(r + 1) * per_round] == expect


def test_loc_passages_are_long_ascii_and_about_the_other_split(world, written):
    root, _ = written
    for split in formats.SPLITS:
        with open(os.path.join(root, formats.GEN_LOC.format(split)), encoding="ascii") as f:
            passages = f.read().splitlines()
        assert len(passages) >= 10
        assert all(len(p.split(" ")) >= formats.MIN_LOC_WORDS and p.isascii() for p in passages)
        allowed = {s for f in world.split(formats.OTHER[split]) for s in f.statements()}
        sentences = {s if s.endswith(".") else s + "." for p in passages for s in p.split(". ")}
        assert sentences <= allowed, "loc text states only the other split's true facts"


def test_zsre_and_nq_rows(world, written):
    root, _ = written
    for split in formats.SPLITS:
        rows = _read_jsonl(os.path.join(root, formats.ZSRE.format(formats.DEV[split])))
        assert len(rows) == 3 * len(world.split(split))
        for r in rows:
            assert set(r) == {"input", "prediction", "alternatives", "filtered_rephrases", "output"}
            assert r["input"].endswith("?") and r["input"] not in r["filtered_rephrases"]
            assert len(r["filtered_rephrases"]) == 2 and r["alternatives"]
            assert r["prediction"] not in r["alternatives"] and r["output"] == [{"answer": r["prediction"]}]
        with open(os.path.join(root, formats.NQ.format(formats.NQ_SPLIT[split]))) as f:
            nq = json.load(f)
        assert len(nq["questions"]) == len(nq["answers"]) > 0
        assert all(isinstance(a, str) for a in nq["answers"])
        edited = {f.subject for f in world.split(split)}
        assert not any(set(q.rstrip("?").replace(",", "").split(" ")) & edited for q in nq["questions"])


def test_fever_rows(world, written):
    root, _ = written
    rows = _read_jsonl(os.path.join(root, formats.FEVER.format("dev")))
    assert len(rows) == 2 * 3 * len(world.split("valid"))
    truths = {s for f in world.facts for s in f.statements()}
    for r in rows:
        assert set(r) == {"logit", "input", "prediction", "alternatives", "filtered_rephrases", "output"}
        label = r["output"][0]["answer"]
        assert label == r["prediction"] in ("SUPPORTS", "REFUTES")
        assert r["alternatives"] == [{"SUPPORTS": "REFUTES", "REFUTES": "SUPPORTS"}[label]]
        assert (r["logit"] > 0) == (label == "SUPPORTS")
        assert (r["input"] in truths) == (label == "SUPPORTS")
        assert len(r["filtered_rephrases"]) == 2 and r["input"] not in r["filtered_rephrases"]
        assert all((p in truths) == (label == "SUPPORTS") for p in r["filtered_rephrases"])


def test_tokenizer_round_trip_and_whole_words(world, written):
    _, tok = written
    assert tok.eos_token == EOS and tok.pad_token is None
    texts = formats.all_texts(world)[:200] + ["Unknown words, digits 42 and bytes: caf\u00e9 \u2603!"]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    for kind, names in world.entities.items():
        assert all(len(tok.encode(" " + n)) == 1 for n in names), kind


def test_tiny_world_pretrains_to_known_facts(tiny_cache):
    artifacts, calls = tiny_cache
    assert calls == [1]
    assert artifacts.fact_accuracy >= 0.95 and artifacts.n_tokens == 2
    # Measure again from the saved files, the way the trainer will load them.
    module, params = load_pretrained(artifacts.model_dir)
    tok = transformers.AutoTokenizer.from_pretrained(artifacts.model_dir)
    assert len(tok) == module.config.vocab_size
    assert tok("Hi there.")["input_ids"] == load_tokenizer(artifacts.tokenizer_file)("Hi there.")["input_ids"]
    module, params = add_pad_token(module, params, tok)  # the reference's GPT-2 fix must fit
    with open(os.path.join(artifacts.gen_dir, "self_sample", "train.json")) as f:
        data = json.load(f)
    n = data["n_tokens"]

    def accuracy(texts):
        enc = tok(texts, padding=True, return_tensors="np")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        pred = np.asarray(module.apply({"params": params}, input_ids=ids, attention_mask=mask).argmax(-1))
        ends = mask.sum(1)
        return np.mean([(pred[i, e - n - 1 : e - 1] == ids[i, e - n : e]).all() for i, e in enumerate(ends)])

    assert accuracy(data["original"]) >= 0.95
    assert accuracy(data["completions"]) < 0.5, "the counterfactual edits are not already known"


def test_cache_is_reused_and_keyed_by_config(tiny_cache, monkeypatch):
    artifacts, calls = tiny_cache
    monkeypatch.setenv("MEND_JAX_CACHE", os.path.dirname(artifacts.root))
    stamp = os.path.getmtime(os.path.join(artifacts.model_dir, "model.safetensors"))
    assert ensure_world(TINY, TINY_PRETRAIN, progress=False) == artifacts
    assert calls == [1], "a second call must not pretrain again"
    assert os.path.getmtime(os.path.join(artifacts.model_dir, "model.safetensors")) == stamp
    with open(os.path.join(artifacts.root, cache.WORLD_JSON)) as f:
        built_on = json.load(f)["environment"]  # another CPU or jaxlib builds other weights
    assert built_on["libraries"]["jaxlib"] == metadata.version("jaxlib") and built_on["cpu"]
    other = dataclasses.replace(TINY, seed=2)
    assert cache.world_key(other, TINY_PRETRAIN) != cache.world_key(TINY, TINY_PRETRAIN)
    assert cache.world_key(TINY, dataclasses.replace(TINY_PRETRAIN, seed=1)) != cache.world_key(TINY, TINY_PRETRAIN)


def test_failed_build_leaves_no_partial_world(tiny_cache, monkeypatch):
    artifacts, _ = tiny_cache
    parent = os.path.dirname(artifacts.root)
    monkeypatch.setenv("MEND_JAX_CACHE", parent)

    def broken(*args, **kwargs):
        raise KeyboardInterrupt  # as if the user stopped the build mid-way

    monkeypatch.setattr(cache, "pretrain", broken)
    before = set(os.listdir(parent))
    with pytest.raises(KeyboardInterrupt):
        ensure_world(dataclasses.replace(TINY, seed=3), TINY_PRETRAIN, progress=False)
    assert set(os.listdir(parent)) == before
