"""The Editor API and the `mend_jax.edit` CLI on tiny models: edits against the editors' own
edit functions, sequential edits against a hand-made chain, metrics against independent
computations, editor files, and exports that transformers loads."""
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from mend_jax import Editor, config_checks, losses
from mend_jax import edit as edit_cli
from mend_jax.editing import editor_files
from mend_jax.editing.requests import EditInputError, read_jsonl
from tests import kilt_fixtures as kf
from tests import tiny

PROMPTS, TARGETS = ["w1 w2 w3 w4", "w5 w6 w7"], ["w9 w10", "w11"]
REPHRASES, LOCALITY = ["w2 w3 w4", "w6 w7"], ["w20 w21 w22", "w23 w24"]


def leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.fixture(scope="module")
def editor(gen_run):
    return Editor.from_run(gen_run, max_new_tokens=3)


def manual_edit_batch(tok, prompts, targets):
    """'prompt target' with only the target's tokens labelled, built without the codec."""
    rows = [(tok(p)["input_ids"], tok(" " + t, add_special_tokens=False)["input_ids"]) for p, t in zip(prompts, targets)]
    width = 16
    ids = np.full((len(rows), width), tok.pad_token_id, np.int32)
    mask, labels = np.zeros_like(ids), np.full_like(ids, -100)
    for i, (p, t) in enumerate(rows):
        ids[i, :len(p) + len(t)], mask[i, :len(p) + len(t)] = p + t, 1
        labels[i, len(p):len(p) + len(t)] = t
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_run_exports_its_kept_editor_and_the_checkpoint_gives_the_same(gen_run, editor, tmp_path):
    assert editor_files.has_editor(os.path.join(gen_run, "editor"))
    meta = editor_files.read_meta(os.path.join(gen_run, "editor"))
    assert meta["alg"] == "mend" and meta["config"]["mend"]["rank"] == 4
    # Training moved the editor network, and the export holds the trained weights, not the init.
    init = Editor.from_config(editor.config)
    assert max_diff(editor.params["nets"], init.params["nets"]) > 0
    copy = str(tmp_path / "run")
    shutil.copytree(gen_run, copy)
    shutil.rmtree(os.path.join(copy, "editor"))
    from_checkpoint = Editor.from_run(copy)
    assert leaves_equal(from_checkpoint.params, editor.params) and leaves_equal(from_checkpoint.stats, editor.stats)


def test_saved_editor_loads_bit_for_bit(editor, tmp_path):
    editor.save(str(tmp_path / "ed"))
    assert sorted(os.listdir(tmp_path / "ed")) == [".mend_jax_export.json", "editor.json", "editor.safetensors"]
    loaded = Editor.load(str(tmp_path / "ed"))
    assert leaves_equal(loaded.params, editor.params) and leaves_equal(loaded.stats, editor.stats)
    with pytest.raises(editor_files.EditorFileError, match="holds no trained editor"):
        Editor.load(str(tmp_path))


def test_batch_edit_is_the_editors_own_edit_on_the_prompt_and_target(editor):
    result = editor.edit(PROMPTS, TARGETS, rephrase_prompts=REPHRASES, locality_prompts=LOCALITY)
    batch = manual_edit_batch(editor.model.tokenizer, PROMPTS, TARGETS)
    expected, _, _ = editor.editor.edit(editor.params, editor.stats, editor.model.params, batch, False)
    assert max_diff(result.params, expected) < 1e-6
    assert max_diff(result.params, editor.model.params) > 1e-4  # it did edit
    # Only the inner matrices are new arrays; every other leaf is the original model's own.
    flat, original = traverse_util.flatten_dict(result.params), traverse_util.flatten_dict(editor.model.params)
    inner = set(editor.model.target.inner_paths)
    assert inner and all((flat[p] is original[p]) == (p not in inner) for p in flat)
    assert len(result.history) == 1 and result.history[0]["n_edits"] == 2
    # Reliability: every target token is the teacher-forced argmax after the edit.
    target = editor.model.target
    logits = target.logits(result.params, batch)
    correct = losses.token_stats(logits, jnp.asarray(batch["labels"]), True).correct
    assert result.metrics["reliability"] == pytest.approx(float(np.mean(correct)))
    assert [a["success"] for a in result.after] == list(np.asarray(correct))
    # p(target) before is the original model's product of target-token probabilities.
    logp = jax.nn.log_softmax(target.logits(editor.model.params, batch)[0, :-1], -1)
    labels = batch["labels"][0, 1:]
    p = float(jnp.exp(sum(logp[i, labels[i]] for i in range(len(labels)) if labels[i] >= 0)))
    assert result.before[0]["p_target"] == pytest.approx(p, rel=1e-4)


def greedy_by_hand(target, params, tok, prompt, n):
    ids = list(tok(prompt)["input_ids"])
    for _ in range(n):
        logits = target.logits(params, {"input_ids": jnp.asarray([ids]), "attention_mask": jnp.ones((1, len(ids)), jnp.int32)})
        ids.append(int(jnp.argmax(logits[0, -1])))
    return ids[-n:]


def test_sequential_edits_chain_and_score_against_the_original_model(editor):
    result = editor.edit(PROMPTS, TARGETS, locality_prompts=LOCALITY[:1], sequential=True)
    tok, target = editor.model.tokenizer, editor.model.target
    first = editor.editor.edit(editor.params, editor.stats, editor.model.params,
                               manual_edit_batch(tok, PROMPTS[:1], TARGETS[:1]), False)[0]
    second = editor.editor.edit(editor.params, editor.stats, first,
                                manual_edit_batch(tok, PROMPTS[1:], TARGETS[1:]), False)[0]
    assert max_diff(result.params, second) < 1e-6
    assert [h["n_edits"] for h in result.history] == [1, 2]
    # Retention: after the second edit, the first edit's success on the twice-edited model (greedy
    # decoding that reproduces the target is the same as its every token being the argmax).
    first_target = tok(" " + TARGETS[0], add_special_tokens=False)["input_ids"]
    kept = greedy_by_hand(target, second, tok, PROMPTS[0], len(first_target)) == first_target
    assert result.history[0]["success_of_earlier"] is None
    assert result.history[1]["success_of_earlier"] == float(kept)
    # Locality after each step compares with the original model's greedy completion.
    original = greedy_by_hand(target, editor.model.params, tok, LOCALITY[0], 3)
    for h, params in zip(result.history, (first, second)):
        assert h["locality"] == float(greedy_by_hand(target, params, tok, LOCALITY[0], 3) == original)
    # "before" is the original model even though the second edit ran on an edited one.
    batched = editor.edit(PROMPTS, TARGETS)
    assert [b["p_target"] for b in result.before] == pytest.approx([b["p_target"] for b in batched.before])
    assert result.before[1]["completion"] == tok.decode(greedy_by_hand(target, editor.model.params, tok, PROMPTS[1], 3))


def test_independent_edits_each_edit_the_original_model(editor, tmp_path):
    result = editor.edit(PROMPTS, TARGETS, independent=True, batch_size=1)
    tok = editor.model.tokenizer
    for i, (rows, params) in enumerate(result.owners):
        alone = editor.editor.edit(editor.params, editor.stats, editor.model.params,
                                   manual_edit_batch(tok, PROMPTS[i:i + 1], TARGETS[i:i + 1]), False)[0]
        assert rows == slice(i, i + 1) and max_diff(params, alone) < 1e-6
        single = editor.edit(PROMPTS[i:i + 1], TARGETS[i:i + 1])
        assert result.after[i]["p_target"] == pytest.approx(single.after[0]["p_target"], rel=1e-5)
    assert result.params is None and [h["n_edits"] for h in result.history] == [1, 2]
    editor.edit(PROMPTS, TARGETS, independent=True)
    with pytest.raises(ValueError, match="no one edited model"):
        editor.save_pretrained(str(tmp_path / "x"))


def test_trained_base_editors_edit_their_trained_base(gen_run):
    config = Editor.from_run(gen_run).config
    config.alg, config.lr, config.edit_lr, config.train_base = "enn", None, None, None
    ed = Editor.from_config(config)
    ed.params["base"] = jax.tree_util.tree_map(lambda x: x + 0.01, ed.params["base"])
    ed = Editor(ed.config, ed.model, ed.editor, ed.params, ed.stats)
    assert max_diff(ed.original, ed.model.params) == pytest.approx(0.01, rel=1e-3)
    result = ed.edit(PROMPTS[:1], TARGETS[:1])
    expected = ed.editor.edit(ed.params, ed.stats, ed.model.params,
                              manual_edit_batch(ed.model.tokenizer, PROMPTS[:1], TARGETS[:1]), False)[0]
    assert max_diff(result.params, expected) < 1e-6


def test_fine_tuning_edits_from_a_run_that_only_names_its_config(gen_run, tmp_path):
    config = Editor.from_run(gen_run).config
    config.alg, config.lr, config.edit_lr = "ft", None, None
    config_checks.save(str(tmp_path), config)
    ed = Editor.from_run(str(tmp_path))
    result = ed.edit(PROMPTS[:1], TARGETS[:1])
    assert result.after[0]["p_target"] > result.before[0]["p_target"]


def test_bad_edit_input_names_the_problem(editor):
    with pytest.raises(EditInputError, match="2 prompts but 1 targets"):
        editor.edit(PROMPTS, TARGETS[:1])
    with pytest.raises(EditInputError, match=r"target_new\[1\] is empty"):
        editor.edit(PROMPTS, ["w9", " "])
    with pytest.raises(EditInputError, match="1 rephrase prompts for 2 edits"):
        editor.edit(PROMPTS, TARGETS, rephrase_prompts=REPHRASES[:1])


def check_export(ed, pt_class, inputs, tmp_path):
    out = str(tmp_path / "edited")
    ed.save_pretrained(out)
    pt = pt_class.from_pretrained(out).eval()
    with torch.no_grad():
        ref = pt(**{k: torch.tensor(np.asarray(v)) for k, v in inputs.items()}).logits.numpy()
    got = np.asarray(ed.model.target.logits(ed.edited, inputs))
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert transformers.AutoTokenizer.from_pretrained(out)(ed.sample_edit[0][0])["input_ids"]


def test_edited_gpt2_exports_for_transformers(editor, tmp_path):
    editor.sample_edit = (PROMPTS, TARGETS)
    editor.edit(PROMPTS, TARGETS)
    batch = manual_edit_batch(editor.model.tokenizer, PROMPTS, TARGETS)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    check_export(editor, transformers.GPT2LMHeadModel, inputs, tmp_path)


def test_edited_t5_exports_for_transformers(tmp_path):
    c = kf.write_qa_experiment(tmp_path / "qa")
    ed = Editor.from_config(c)
    row = kf.zsre_row(100)
    ed.sample_edit = ([row["input"]], [row["alternatives"][0]])
    result = ed.edit(*ed.sample_edit, locality_prompts=[kf.zsre_row(101)["input"]])
    assert result.metrics["locality"] in (0.0, 1.0) and isinstance(result.after[0]["completion"], str)
    inputs = {k: v for k, v in ed.codec.edit_batch(*ed.sample_edit).items() if k != "labels"}
    check_export(ed, transformers.T5ForConditionalGeneration, inputs, tmp_path)


def test_edited_bert_classifier_exports_for_transformers(tmp_path):
    c = kf.write_fc_experiment(tmp_path / "fc", layers=1, blocks=1)
    ed = Editor.from_config(c)
    ed.sample_edit = ([kf.fever_row(100)["input"]], ["REFUTES"])
    result = ed.edit(*ed.sample_edit)
    assert result.before[0]["completion"] in ("SUPPORTS", "REFUTES")
    with pytest.raises(EditInputError, match="SUPPORTS or REFUTES"):
        ed.edit(ed.sample_edit[0], ["maybe"])
    inputs = {k: v for k, v in ed.codec.edit_batch(*ed.sample_edit).items() if k != "labels"}
    check_export(ed, transformers.BertForSequenceClassification, inputs, tmp_path)


# ----- the command line -------------------------------------------------------------------

def write_edits(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


def test_cli_edits_a_jsonl_file_prints_before_and_after_and_exports(gen_run, tmp_path, capsys):
    edits = write_edits(tmp_path / "edits.jsonl", [
        {"prompt": p, "target": t, "rephrase": r, "locality": loc}
        for p, t, r, loc in zip(PROMPTS, TARGETS, REPHRASES, LOCALITY)])
    out = str(tmp_path / "edited")
    assert edit_cli.main(["--run", gen_run, "--edits", edits, "--sequential", "--out", out,
                          "--max-new-tokens", "3"]) == 0
    printed = capsys.readouterr().out
    assert "w1 w2 w3 w4" in printed and "p(target) before" in printed and "reliability" in printed
    saved = json.load(open(os.path.join(out, "metrics.json")))
    assert saved["metrics"]["n_batches"] == 2 and len(saved["after"]) == 2 and len(saved["history"]) == 2
    assert os.path.isfile(os.path.join(out, "model.safetensors"))


@pytest.mark.parametrize("lines, message", [
    ([{"prompt": "w1 w2"}, ], r"edits.jsonl, line 1: missing field 'target'"),
    ([{"prompt": "w1", "target": "w2"}, {"prompt": "w3", "target": ""}], r"edits.jsonl, line 2: field 'target' is empty"),
    (["{not json"], r"edits.jsonl, line 1: invalid JSON"),
])
def test_cli_bad_edits_file_names_the_line_and_writes_nothing(gen_run, tmp_path, capsys, lines, message):
    edits = write_edits(tmp_path / "edits.jsonl", lines)
    before = sorted(os.listdir(gen_run))
    with pytest.raises(SystemExit) as e:
        edit_cli.main(["--run", gen_run, "--edits", edits, "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not os.path.exists(tmp_path / "out") and sorted(os.listdir(gen_run)) == before


def test_cli_refuses_a_missing_run_and_a_run_without_an_editor(gen_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        edit_cli.main(["--run", str(tmp_path / "nope"), "--prompt", "w1", "--target", "w2"])
    assert "does not exist" in capsys.readouterr().err
    untrained = str(tmp_path / "untrained")
    config_checks.save(untrained, Editor.from_run(gen_run).config)
    with pytest.raises(SystemExit) as e:
        edit_cli.main(["--run", untrained, "--prompt", "w1", "--target", "w2"])
    assert e.value.code == 2 and "has no trained editor" in capsys.readouterr().err
    assert os.listdir(os.path.join(untrained, "checkpoints")) == ["config.json"]  # nothing written


def test_jsonl_reader_needs_rephrases_on_every_line_or_none(tmp_path):
    path = write_edits(tmp_path / "e.jsonl", [{"prompt": "a", "target": "b", "rephrase": "c"},
                                             {"prompt": "d", "target": "e"}])
    with pytest.raises(EditInputError, match=r"e.jsonl, line 2: no 'rephrase'"):
        read_jsonl(path)
    path = write_edits(tmp_path / "f.jsonl", [{"prompt": "a", "target": "b", "extra": 1}])
    with pytest.raises(EditInputError, match=r"f.jsonl, line 1: unknown field"):
        read_jsonl(path)


def mean_token_p(target, params, tok, prompt, answer):
    batch = manual_edit_batch(tok, [prompt], [answer])
    logp = jax.nn.log_softmax(target.logits(params, batch)[0, :-1], -1)
    labels = batch["labels"][0, 1:]
    picked = [float(logp[i, labels[i]]) for i in range(len(labels)) if labels[i] >= 0]
    return float(np.exp(np.mean(picked)))


def test_counterfact_scores_match_a_direct_computation(editor):
    from mend_jax.data.counterfact import CounterFactCase

    cases = [CounterFactCase(0, "w1 w2 {} w3", "w4", "w9 w10", "w11", ("w2 w4 w3", "w4 w4 w3"), ("w1 w2 w5 w3",), ()),
             CounterFactCase(1, "{} w6 w7", "w5", "w12", "w13", ("w5 w7",), (), ())]
    result = editor.edit_counterfact(cases)
    tok, target, m = editor.model.tokenizer, editor.model.target, result.metrics
    independent = editor.edit_counterfact(cases, independent=True, batch_size=1).metrics
    alone = [editor.edit_counterfact([c]).metrics["efficacy_magnitude"] for c in cases]
    assert independent["efficacy_magnitude"] == pytest.approx(np.mean(alone), abs=1e-6)
    for params, suffix in ((editor.model.params, "_before"), (result.params, "")):
        new = [mean_token_p(target, params, tok, c.rewrite_prompt, c.target_new) for c in cases]
        true = [mean_token_p(target, params, tok, c.rewrite_prompt, c.target_true) for c in cases]
        assert m["efficacy_score" + suffix] == pytest.approx(np.mean([a > b for a, b in zip(new, true)]))
        assert m["efficacy_magnitude" + suffix] == pytest.approx(np.mean(np.subtract(new, true)), abs=1e-6)
        para = [np.mean([mean_token_p(target, params, tok, p, c.target_new) >
                         mean_token_p(target, params, tok, p, c.target_true) for p in c.paraphrase_prompts])
                for c in cases]
        assert m["paraphrase_score" + suffix] == pytest.approx(np.mean(para))
        # Only the first case has neighbours: the score is its alone.
        p = cases[0].neighborhood_prompts[0]
        assert m["neighborhood_score" + suffix] == float(mean_token_p(target, params, tok, p, "w11") >
                                                         mean_token_p(target, params, tok, p, "w9 w10"))
    assert m["neighborhood_token_agreement_before"] == 1.0
    assert m["n_edits"] == 2 and result.after[0]["prompt"] == "w1 w2 w4 w3"
