"""The CounterFact reader and the embedded world's CounterFact files."""
import json

import numpy as np
import pytest

from mend_jax.data.counterfact import load_counterfact, parse_case, to_json
from mend_jax.data.io import DataFormatError
from mend_jax.world import RELATIONS, WorldConfig, formats, generate_world

CASE = {
    "case_id": 7,
    "pararel_idx": 1,
    "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103", "subject": "Danielle Darrieux",
                          "target_new": {"str": "English", "id": "Q1860"}, "target_true": {"str": "French", "id": "Q150"}},
    "paraphrase_prompts": ["Shayna does this. Danielle Darrieux spoke the language"],
    "neighborhood_prompts": ["The mother tongue of Léon Blum is"],
    "attribute_prompts": ["J. R. R. Tolkien is a native speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is"],
}


def test_a_release_case_reads_with_its_fields(tmp_path):
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([CASE]))
    (case,) = load_counterfact(str(path))
    assert case.rewrite_prompt == "The mother tongue of Danielle Darrieux is"
    assert (case.case_id, case.target_new, case.target_true) == (7, "English", "French")
    assert case.neighborhood_prompts == ("The mother tongue of Léon Blum is",)
    assert parse_case(to_json(case), "again") == case


@pytest.mark.parametrize("change, message", [
    (lambda c: c["requested_rewrite"].pop("target_new"), r"cf.json, case 0, requested_rewrite: missing field 'target_new'"),
    (lambda c: c["requested_rewrite"].update(prompt="no slot"), r"'prompt' must hold '\{\}' once"),
    (lambda c: c["requested_rewrite"]["target_true"].update(str=" "), r"target_true: field 'str' is empty"),
    (lambda c: c.update(paraphrase_prompts="one"), r"field 'paraphrase_prompts' must be list"),
    (lambda c: c.pop("case_id"), r"case 0: missing field 'case_id'"),
])
def test_malformed_cases_name_the_case_and_field(tmp_path, change, message):
    case = json.loads(json.dumps(CASE))
    change(case)
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([case]))
    with pytest.raises(DataFormatError, match=message):
        load_counterfact(str(path))


def template_of(prompt):
    """(relation, template index) whose CounterFact prompt is `prompt`."""
    return next((r.name, t) for r in RELATIONS for t, s in enumerate(r.statements)
                if s.split("{o}")[0].rstrip(" ").replace("{s}", "{}") == prompt)


def test_world_cases_rewrite_each_fact_and_neighbours_share_its_true_object(tmp_path):
    world = generate_world(WorldConfig())
    formats.write_counterfact(world, str(tmp_path))
    cases = load_counterfact(str(tmp_path / "counterfact" / "valid.json"))
    facts = {(f.subject, f.relation): f for f in world.facts}
    assert len(cases) == sum(len(f.relation_spec.statements) for f in world.split("valid"))
    assert sum(bool(c.neighborhood_prompts) for c in cases) > len(cases) // 2
    for case in cases:
        relation, t = template_of(case.prompt)
        fact = facts[(case.subject, relation)]
        assert fact.split == "valid" and case.rewrite_prompt == fact.prefix(t)
        assert (case.target_true, case.target_new) == (fact.object, fact.alternative(t))
        assert sorted(case.paraphrase_prompts) == sorted(fact.prefix(u) for u in range(3) if u != t)
        for prompt in case.neighborhood_prompts:
            neighbour = next(g for g in world.facts if g.relation == relation and g.prefix(t) == prompt)
            assert neighbour.object == fact.object and neighbour.subject != fact.subject


def write_tiny_counterfact(root):
    """A tiny GPT-2 (tests/tiny.py) with CounterFact files over its words; returns a counterfact config."""
    from tests import tiny

    c = tiny.write_gen_experiment(str(root / "exp"))
    cases = [{"case_id": i, "requested_rewrite": {"prompt": f"w{i} {{}} w{i + 1}", "subject": f"w{i + 2}",
                                                  "target_new": {"str": f"w{i + 3} w{i + 4}"},
                                                  "target_true": {"str": f"w{i + 5}"}},
              "paraphrase_prompts": [f"w{i + 2} w{i + 6}", f"w{i + 7} w{i + 2}"],
              "neighborhood_prompts": [f"w{i + 8} w{i + 1}"]} for i in range(10)]
    (root / "cf").mkdir()
    (root / "cf" / "train.json").write_text(json.dumps(cases[:6]))
    (root / "cf" / "valid.json").write_text(json.dumps(cases[6:]))
    c.task, c.data.path, c.data.loc_path, c.data.max_length = "counterfact", str(root / "cf"), "", 12
    return c


def test_counterfact_batches_label_the_new_target_and_locality_the_true_one(tmp_path):
    from mend_jax import experiments

    exp = experiments.build(write_tiny_counterfact(tmp_path))
    data, tok = exp.train_data, exp.train_data.tokenizer
    for step in range(3):
        batch = data.train_batch(step)
        text, labelled = {}, {}
        for part in ("edit_inner", "edit_outer", "loc"):
            ids, mask, labels = (batch[part][k][0] for k in ("input_ids", "attention_mask", "labels"))
            assert ids.shape == (12,)
            text[part], labelled[part] = tok.decode(ids[mask > 0]), tok.decode(ids[labels >= 0])
        case = next(k for k in data.cases if text["edit_inner"] == f"{k.rewrite_prompt} {k.target_new}")
        assert labelled["edit_inner"] == labelled["edit_outer"] == case.target_new
        assert text["edit_outer"] in {f"{p} {case.target_new}" for p in case.paraphrase_prompts}
        other = next(k for k in data.cases if text["loc"] == f"{k.rewrite_prompt} {k.target_true}")
        assert other is not case and labelled["loc"] == other.target_true


def test_counterfact_trains_and_the_world_config_names_the_world_model(tmp_path):
    from mend_jax import experiments
    from mend_jax.trainer import Trainer
    from tests.tiny import repo_config

    c = write_tiny_counterfact(tmp_path)
    c.max_iters, c.val_interval, c.val_steps, c.final_eval_steps = 2, 2, 2, 2
    results = Trainer(c, experiments.build(c), str(tmp_path / "run")).run()
    assert results["steps_trained"] == 2 and np.isfinite(results["results"]["edit/acc_val"])
    assert results["results"]["drawdown_val"] == pytest.approx(
        results["results"]["acc/pre_val"] - results["results"]["acc/post_val"])
    world = repo_config("counterfact").get_config()
    assert (world.task, world.data.source, world.model.name) == ("counterfact", "world", "world")
    assert world.model.inner_params == repo_config("gen").get_config().model.inner_params
