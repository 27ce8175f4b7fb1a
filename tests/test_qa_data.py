"""The qa experiment's readers (zsRE, NQ) and batch builder, on small files in the published format."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from mend_jax import losses
from mend_jax.data.io import DataFormatError, DataNotFoundError
from mend_jax.data.kilt import draw_excluding
from mend_jax.data.nq import load_nq, nq_path, parse_nq
from mend_jax.data.zsre import (
    SHIFT_LABELS,
    Seq2SeqEncoder,
    ZsreDataset,
    load_zsre,
    parse_zsre_row,
    zsre_path,
)
from mend_jax.losses import IGNORE
from tests import kilt_fixtures as kf

N_TRAIN = 12


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return kf.write_qa_data(tmp_path_factory.mktemp("qa"), n_train=N_TRAIN)


@pytest.fixture(scope="module")
def texts():
    return kf.qa_texts(kf.zsre_rows(N_TRAIN) + kf.zsre_rows(6, start=100) + [kf.zsre_row(0, echo_input=True)],
                       kf.nq_obj(5)) + kf.qa_texts([], kf.nq_obj(5, start=50))


@pytest.fixture(scope="module")
def t5_tok(texts):
    return kf.qa_tokenizer("t5", texts)


@pytest.fixture(scope="module")
def bart_tok(texts):
    return kf.qa_tokenizer("bart", texts)


def t5_encoder(tok, **kw):
    return Seq2SeqEncoder(tok, style="t5", max_length=8, target_max_length=4, **kw)


def ids(tok, text):
    return tok(text)["input_ids"]


# ----- reading ------------------------------------------------------------------


def test_rows_without_alternatives_or_rephrases_are_dropped(tmp_path):
    rows = [kf.zsre_row(0), kf.zsre_row(1, n_alternatives=0), kf.zsre_row(2, n_rephrases=0), kf.zsre_row(3)]
    path = kf.write_jsonl(tmp_path / "zsre.jsonl", rows)
    loaded = load_zsre(path)
    assert [r.input for r in loaded] == ["what is q0", "what is q3"]
    assert loaded[0].answer == "a0" and loaded[0].prediction == "p0"
    assert loaded[0].alternatives == ("n0_0", "n0_1")


def test_input_is_removed_from_its_own_rephrases():
    row = parse_zsre_row(kf.zsre_row(5, echo_input=True), "here")
    assert row.rephrases == ("r5_0 q5", "r5_1 q5")


def test_a_row_whose_only_rephrase_is_its_input_is_dropped():
    obj = kf.zsre_row(5, n_rephrases=0)
    obj["filtered_rephrases"] = [obj["input"]]
    assert parse_zsre_row(obj, "here") is None


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(kf.zsre_row(0)) + "\n\n" + '{"input": "x", \n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl, line 3: invalid JSON"):
        load_zsre(str(path))


def test_a_line_that_is_not_an_object_is_an_error(tmp_path):
    path = kf.write_jsonl(tmp_path / "list.jsonl", [[1, 2]])
    with pytest.raises(DataFormatError, match="line 1: expected a JSON object, got list"):
        load_zsre(path)


@pytest.mark.parametrize("field", ["input", "prediction", "alternatives", "filtered_rephrases", "output"])
def test_missing_field_is_named_with_its_line(tmp_path, field):
    rows = [kf.zsre_row(0), {k: v for k, v in kf.zsre_row(1).items() if k != field}]
    path = kf.write_jsonl(tmp_path / "z.jsonl", rows)
    with pytest.raises(DataFormatError, match=rf"z\.jsonl, line 2: missing field '{field}'"):
        load_zsre(path)


def test_missing_answer_and_wrong_types_are_named(tmp_path):
    row = kf.zsre_row(0)
    row["output"] = [{}]
    with pytest.raises(DataFormatError, match=r"missing field 'output\[0\]\.answer'"):
        parse_zsre_row(row, "f, line 1")
    row = kf.zsre_row(0)
    row["alternatives"] = "n0"
    with pytest.raises(DataFormatError, match="field 'alternatives' must be a list, got str"):
        parse_zsre_row(row, "f, line 1")
    row = kf.zsre_row(0)
    row["filtered_rephrases"] = ["ok", 3]
    with pytest.raises(DataFormatError, match=r"'filtered_rephrases'\[1\] is int"):
        parse_zsre_row(row, "f, line 1")


def test_an_empty_edit_target_is_named(tmp_path):
    row = kf.zsre_row(0)
    row["alternatives"] = ["n0", "  "]
    path = kf.write_jsonl(tmp_path / "z.jsonl", [kf.zsre_row(1), row])
    with pytest.raises(DataFormatError, match=r"z\.jsonl, line 2: 'alternatives'\[1\] is empty"):
        load_zsre(path)


def test_empty_split_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataFormatError, match="empty split"):
        load_zsre(str(tmp_path / "empty.jsonl"))
    path = kf.write_jsonl(tmp_path / "dropped.jsonl", [kf.zsre_row(0, n_alternatives=0)])
    with pytest.raises(DataFormatError, match="empty split: none of its 1 rows"):
        load_zsre(path)


def test_missing_files_say_where_to_get_them(tmp_path, data_dir):
    with pytest.raises(DataNotFoundError, match="structured_zeroshot-dev-new_annotated_final.jsonl does not exist"):
        zsre_path(str(tmp_path), "valid")
    assert zsre_path(data_dir, "valid").endswith("zsre/structured_zeroshot-dev-new_annotated_final.jsonl")
    with pytest.raises(DataNotFoundError, match="zsre_nq=False"):
        nq_path(str(tmp_path), "train")
    assert nq_path(data_dir, "valid").endswith("nq/validation.json")


def test_nq_format_errors():
    assert parse_nq(kf.nq_obj(2), "nq").answers == ["na0", "na1"]
    with pytest.raises(DataFormatError, match="missing field 'answers'"):
        parse_nq({"questions": ["q"]}, "nq")
    with pytest.raises(DataFormatError, match="2 questions but 1 answers"):
        parse_nq({"questions": ["a", "b"], "answers": ["c"]}, "nq")
    with pytest.raises(DataFormatError, match="empty split"):
        parse_nq({"questions": [], "answers": []}, "nq")
    with pytest.raises(DataFormatError, match=r"'answers'\[0\] is list"):
        parse_nq({"questions": ["a"], "answers": [["b"]]}, "nq")


def test_tokenizer_without_pad_token_is_a_clear_error(texts):
    tok = kf.word_tokenizer(kf._words(texts), ["</s>", "<unk>"], "$A </s>", eos_token="</s>")
    with pytest.raises(ValueError, match="has no pad token"):
        t5_encoder(tok)


# ----- targets: T5 and BART layouts ---------------------------------------------


def test_t5_labels_are_the_answer_and_eos_and_decoder_inputs_shift_right(t5_tok):
    t = t5_encoder(t5_tok, decoder_start_token_id=0).targets(["a1", "n2_0"])
    eos = t5_tok.eos_token_id
    for row, word in enumerate(["a1", "n2_0"]):
        word_id = t5_tok.convert_tokens_to_ids(word)
        np.testing.assert_array_equal(t["labels"][row], [word_id, eos, IGNORE, IGNORE])
        np.testing.assert_array_equal(t["decoder_input_ids"][row], [0, word_id, eos, 0])
        np.testing.assert_array_equal(t["decoder_attention_mask"][row], [1, 1, 0, 0])
    assert all(v.dtype == np.int32 and v.shape == (2, 4) for v in t.values())
    assert SHIFT_LABELS["t5"] is False


def test_bart_first_decoder_token_is_eos_and_labels_equal_decoder_inputs(bart_tok):
    enc = Seq2SeqEncoder(bart_tok, style="bart", max_length=8, target_max_length=5)
    t = enc.targets(["a1"])
    word, eos, pad = bart_tok.convert_tokens_to_ids("a1"), bart_tok.eos_token_id, bart_tok.pad_token_id
    assert ids(bart_tok, "a1")[0] == bart_tok.bos_token_id  # the tokenizer starts with <s> ...
    np.testing.assert_array_equal(t["decoder_input_ids"][0], [eos, word, eos, pad, pad])  # ... which becomes </s>
    np.testing.assert_array_equal(t["labels"][0], [eos, word, eos, IGNORE, IGNORE])
    np.testing.assert_array_equal(t["decoder_attention_mask"][0], [1, 1, 1, 0, 0])
    assert SHIFT_LABELS["bart"] is True


def test_bart_layout_needs_a_tokenizer_that_starts_with_bos(t5_tok, texts):
    tok = kf.word_tokenizer(kf._words(texts), kf.QA_SPECIALS["bart"], "$A </s>", pad_token="<pad>",
                            eos_token="</s>", bos_token="<s>")
    with pytest.raises(ValueError, match="does not start 'a1' with BOS"):
        Seq2SeqEncoder(tok, style="bart", max_length=8, target_max_length=4).targets(["a1"])


def test_bart_loss_scores_the_answer_and_eos_not_the_replaced_start(bart_tok):
    """With the shifted loss, position t predicts label t+1: the answer, then EOS."""
    t = Seq2SeqEncoder(bart_tok, style="bart", max_length=8, target_max_length=5).targets(["a1"])
    labels = jnp.asarray(t["labels"])
    vocab = len(bart_tok)
    perfect = np.full((1, 5, vocab), -10.0, np.float32)
    for pos in range(4):
        if t["labels"][0, pos + 1] != IGNORE:
            perfect[0, pos, t["labels"][0, pos + 1]] = 10.0
    stats = losses.token_stats(jnp.asarray(perfect), labels, shift=True)
    assert bool(stats.correct[0]) and float(stats.n_tokens[0]) == 2.0
    wrong = perfect.copy()
    wrong[0, 1] = perfect[0, 0]  # the EOS prediction is now wrong: the whole answer is wrong
    assert not bool(losses.token_stats(jnp.asarray(wrong), labels, shift=True).correct[0])


# ----- batches --------------------------------------------------------------------


def zsre_dataset(data_dir, tok, nq=None, **kw):
    return ZsreDataset.from_files(zsre_path(data_dir, "train"), t5_encoder(tok), nq=nq, **kw)


def test_batch_structure_and_edit_content(data_dir, t5_tok):
    ds = zsre_dataset(data_dir, t5_tok, n_loc=3)
    b = ds.train_batch(0)
    assert set(b) == {"edit_inner", "edit_outer", "loc", "cond"}
    keys = {"input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "labels"}
    assert set(b["edit_inner"]) == set(b["edit_outer"]) == set(b["loc"]) == keys
    assert b["edit_inner"]["input_ids"].shape == (1, 8) and b["loc"]["labels"].shape == (3, 4)
    np.testing.assert_array_equal(b["edit_inner"]["labels"], b["edit_outer"]["labels"])
    np.testing.assert_array_equal(b["edit_inner"]["decoder_input_ids"], b["edit_outer"]["decoder_input_ids"])

    decode = lambda x: t5_tok.decode([i for i in x if i not in (0, 1)])
    question = decode(b["edit_inner"]["input_ids"][0])
    row = next(r for r in ds.rows if r.input == question)
    target = decode([i for i in b["edit_inner"]["labels"][0] if i != IGNORE])
    assert target in row.alternatives
    assert decode(b["edit_outer"]["input_ids"][0]) in row.rephrases
    cond = decode(b["cond"]["input_ids"][0])
    assert cond == f"{row.prediction} >> {target} || {row.input}"


def test_batches_are_pure_functions_of_the_step(data_dir, t5_tok):
    a, b = zsre_dataset(data_dir, t5_tok), zsre_dataset(data_dir, t5_tok)
    for step in (0, 5, 31):
        for x, y in zip(jnp_leaves(a.train_batch(step)), jnp_leaves(b.train_batch(step))):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.train_batch(0)["edit_inner"]["input_ids"], a.train_batch(1)["edit_inner"]["input_ids"])


def jnp_leaves(batch):
    return [v for part in batch.values() for v in part.values()]


def test_eval_batches_cover_the_split_in_order(data_dir, t5_tok):
    ds = zsre_dataset(data_dir, t5_tok, n_edits=2)
    assert ds.n_eval_batches == N_TRAIN // 2
    firsts = [t5_tok.decode(ds.eval_batch(i)["edit_inner"]["input_ids"][1], skip_special_tokens=True)
              for i in range(ds.n_eval_batches)]
    assert firsts == [ds.rows[2 * i + 1].input for i in range(ds.n_eval_batches)]
    with pytest.raises(IndexError):
        ds.eval_batch(ds.n_eval_batches)


def test_zsre_locality_is_disjoint_from_the_edits(data_dir, t5_tok):
    ds = zsre_dataset(data_dir, t5_tok, n_edits=3, n_loc=4)
    for step in range(40):
        b = ds.train_batch(step)
        edits = {tuple(r) for r in b["edit_inner"]["input_ids"]}
        locs = {tuple(r) for r in b["loc"]["input_ids"]}
        assert len(edits) == 3 and not edits & locs
        # Locality targets are the gold answers (output[0].answer), not alternatives.
        for q, lab in zip(b["loc"]["input_ids"], b["loc"]["labels"]):
            i = int(t5_tok.decode(q, skip_special_tokens=True).split("q")[-1])
            assert t5_tok.convert_ids_to_tokens(int(lab[0])) == f"a{i}"


def test_nq_locality_and_the_reference_pool(data_dir, t5_tok):
    nq = load_nq(nq_path(data_dir, "train"))
    ds = zsre_dataset(data_dir, t5_tok, nq=nq, n_loc=4)
    seen = set()
    for step in range(30):
        b = ds.train_batch(step)
        seen |= {t5_tok.decode(q, skip_special_tokens=True) for q in b["loc"]["input_ids"]}
    assert seen <= set(nq.questions) and len(seen) > 1
    # "reference": indices drawn below len(zsRE) and taken modulo len(NQ); "all": every NQ pair.
    big = ZsreDataset([ds.rows[0], ds.rows[1]], ds.encoder, nq=nq, n_loc=4, loc_pool="reference")
    seen_ref = {t5_tok.decode(q, skip_special_tokens=True)
                for s in range(30) for q in big.train_batch(s)["loc"]["input_ids"]}
    assert seen_ref == set(nq.questions[:2])


def test_multi_edit_batches(data_dir, t5_tok):
    ds = zsre_dataset(data_dir, t5_tok, n_edits=5, n_loc=1)
    b = ds.train_batch(2)  # 12 rows: batches 2 and 3 make up the second epoch
    assert b["edit_inner"]["input_ids"].shape == (5, 8) and b["cond"]["input_ids"].shape == (5, 8)
    assert b["edit_outer"]["labels"].shape == (5, 4) and b["loc"]["input_ids"].shape == (1, 8)
    assert len({tuple(r) for r in b["edit_inner"]["input_ids"]}) == 5
    # The epoch walks a permutation: two consecutive batches of an epoch share no edit.
    c = ds.train_batch(3)
    assert not {tuple(r) for r in b["edit_inner"]["input_ids"]} & {tuple(r) for r in c["edit_inner"]["input_ids"]}
    with pytest.raises(ValueError, match="n_edits must be in"):
        zsre_dataset(data_dir, t5_tok, n_edits=N_TRAIN + 1)
    with pytest.raises(ValueError, match="none left for zsRE locality"):
        zsre_dataset(data_dir, t5_tok, n_edits=N_TRAIN)


def test_draw_excluding_never_returns_an_excluded_index():
    rng = np.random.default_rng(0)
    drawn = np.concatenate([draw_excluding(rng, 10, 50, [0, 3, 4, 9]) for _ in range(20)])
    assert set(drawn.tolist()) == {1, 2, 5, 6, 7, 8}
    with pytest.raises(ValueError, match="no locality example left"):
        draw_excluding(rng, 2, 1, [0, 1])
