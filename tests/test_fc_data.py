"""The fc experiment's FEVER reader, batch builder and binary losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mend_jax import losses, meta
from mend_jax.data.fever import FeverDataset, fever_path, load_fever, parse_fever_row
from mend_jax.data.io import DataFormatError, DataNotFoundError
from tests import kilt_fixtures as kf

N_TRAIN = 12


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return kf.write_fc_data(tmp_path_factory.mktemp("fc"), n_train=N_TRAIN)


@pytest.fixture(scope="module")
def tok():
    return kf.bert_tokenizer(kf.fc_texts(kf.fever_rows(N_TRAIN) + kf.fever_rows(6, start=100)))


def dataset(data_dir, tok, **kw):
    return FeverDataset.from_files(fever_path(data_dir, "train"), tok, max_length=10, **kw)


def claim_index(tok, ids):
    """The i of 'claim c{i} ...'."""
    return int(tok.decode(ids, skip_special_tokens=True).split()[1][1:])


# ----- reading ------------------------------------------------------------------


def test_reader_keeps_labels_and_drops_rows_without_alternatives_or_rephrases(tmp_path):
    rows = [kf.fever_row(0), kf.fever_row(1, "REFUTES", prediction="SUPPORTS"), kf.fever_row(2, n_rephrases=0)]
    rows.append({**kf.fever_row(3), "alternatives": []})
    claims = load_fever(kf.write_jsonl(tmp_path / "f.jsonl", rows))
    assert [c.input for c in claims] == ["claim c0 holds", "claim c1 holds"]
    assert (claims[1].label, claims[1].prediction, claims[1].alternative) == ("REFUTES", "SUPPORTS", "REFUTES")
    assert claims[0].rephrases == ("claim c0 r0", "claim c0 r1")


@pytest.mark.parametrize("field", ["logit", "input", "prediction", "alternatives", "filtered_rephrases", "output"])
def test_missing_field_is_named_with_file_and_line(tmp_path, field):
    rows = [kf.fever_row(0), kf.fever_row(1), {k: v for k, v in kf.fever_row(2).items() if k != field}]
    path = kf.write_jsonl(tmp_path / "fever-train-kilt.jsonl", rows)
    with pytest.raises(DataFormatError, match=rf"fever-train-kilt\.jsonl, line 3: missing field '{field}'"):
        load_fever(path)


def test_malformed_json_and_unknown_labels(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"logit": 1.0,\n')
    with pytest.raises(DataFormatError, match=r"f\.jsonl, line 1: invalid JSON"):
        load_fever(str(path))
    with pytest.raises(DataFormatError, match="'prediction' is 'NOT ENOUGH INFO'"):
        parse_fever_row({**kf.fever_row(0), "prediction": "NOT ENOUGH INFO"}, "x")
    with pytest.raises(DataFormatError, match=r"'output\[0\]\.answer' is 'yes'"):
        parse_fever_row({**kf.fever_row(0), "output": [{"answer": "yes"}]}, "x")
    with pytest.raises(DataFormatError, match="field 'logit' must be a int or float, got str"):
        parse_fever_row({**kf.fever_row(0), "logit": "high"}, "x")


def test_empty_split_and_missing_file(tmp_path):
    path = kf.write_jsonl(tmp_path / "f.jsonl", [kf.fever_row(0, n_rephrases=0)])
    with pytest.raises(DataFormatError, match="empty split"):
        load_fever(path)
    with pytest.raises(DataNotFoundError, match="fever-dev-kilt.jsonl does not exist"):
        fever_path(str(tmp_path), "valid")


def test_tokenizer_without_pad_token_is_a_clear_error(data_dir):
    tok = kf.word_tokenizer(["claim"], ["[UNK]", "[CLS]", "[SEP]"], "[CLS] $A [SEP]")
    with pytest.raises(ValueError, match="has no pad token"):
        dataset(data_dir, tok)


# ----- batches --------------------------------------------------------------------


def test_batch_shapes_and_labels(data_dir, tok):
    b = dataset(data_dir, tok, n_loc=4).train_batch(0)
    assert b["edit_inner"]["input_ids"].shape == (1, 10) and b["loc"]["input_ids"].shape == (4, 10)
    for part in ("edit_inner", "edit_outer", "loc"):
        assert b[part]["labels"].dtype == np.int32 and b[part]["labels"].ndim == 1
    assert b["edit_inner"]["input_ids"][0, 0] == tok.cls_token_id
    np.testing.assert_array_equal(b["edit_inner"]["labels"], b["edit_outer"]["labels"])
    assert set(b["cond"]) == {"input_ids", "attention_mask"}


def test_edit_label_is_flipped_half_the_time_with_the_matching_condition(data_dir, tok):
    ds = dataset(data_dir, tok, n_loc=1)
    flips = 0
    n = 200
    for step in range(n):
        b = ds.train_batch(step)
        claim = ds.claims[claim_index(tok, b["edit_inner"]["input_ids"][0])]
        target = "SUPPORTS" if b["edit_inner"]["labels"][0] == 1 else "REFUTES"
        flipped = target != claim.prediction
        assert target == (claim.alternative if flipped else claim.prediction)
        cond = tok.decode(b["cond"]["input_ids"][0], skip_special_tokens=True)
        assert cond == f"{claim.prediction} >> {target} || {claim.input}"
        assert tok.decode(b["edit_outer"]["input_ids"][0], skip_special_tokens=True) in claim.rephrases
        flips += flipped
    assert 0.4 < flips / n < 0.6


def test_locality_is_other_claims_with_their_gold_labels(data_dir, tok):
    ds = dataset(data_dir, tok, n_edits=2, n_loc=5)
    for step in range(30):
        b = ds.train_batch(step)
        edits = {claim_index(tok, r) for r in b["edit_inner"]["input_ids"]}
        assert len(edits) == 2
        for ids, label in zip(b["loc"]["input_ids"], b["loc"]["labels"]):
            i = claim_index(tok, ids)
            assert i not in edits
            assert label == (ds.claims[i].label == "SUPPORTS")


def test_multi_edit_flips_each_edit_on_its_own(data_dir, tok):
    ds = dataset(data_dir, tok, n_edits=5, n_loc=1)
    patterns = set()
    for step in range(20):
        b = ds.train_batch(step)
        assert b["edit_inner"]["labels"].shape == (5,) and b["cond"]["input_ids"].shape == (5, 10)
        preds = [ds.claims[claim_index(tok, r)].prediction == "SUPPORTS" for r in b["edit_inner"]["input_ids"]]
        patterns.add(tuple(np.asarray(b["edit_inner"]["labels"]) != np.asarray(preds)))
    assert len(patterns) > 2  # not one coin for the whole batch


def test_eval_batches_are_deterministic(data_dir, tok):
    a, b = dataset(data_dir, tok), dataset(data_dir, tok, seed=7)
    assert a.n_eval_batches == N_TRAIN
    for i in (0, 5):
        for part in ("edit_inner", "loc"):
            np.testing.assert_array_equal(a.eval_batch(i)[part]["labels"], b.eval_batch(i)[part]["labels"])
            np.testing.assert_array_equal(a.eval_batch(i)[part]["input_ids"], b.eval_batch(i)[part]["input_ids"])


# ----- binary losses -------------------------------------------------------------


def test_binary_nll_and_accuracy():
    logits = jnp.array([[2.0], [-1.0], [0.5], [-3.0]])
    labels = jnp.array([1, 1, 0, 0], jnp.int32)
    stats = losses.token_stats(logits, labels, shift=False)
    expected = -np.log(jax.nn.sigmoid(np.array([2.0, -1.0, -0.5, 3.0])))
    np.testing.assert_allclose(stats.nll, expected, rtol=1e-6)
    np.testing.assert_array_equal(stats.correct, [True, False, False, True])
    np.testing.assert_array_equal(stats.n_tokens, [1, 1, 1, 1])
    np.testing.assert_allclose(losses.masked_nll(logits, labels, shift=False), expected.mean(), rtol=1e-6)


def test_bernoulli_kl_and_the_mask_is_not_used():
    pre = jnp.array([[2.0], [-1.0], [0.3]])
    post = jnp.array([[1.0], [0.5], [0.3]])
    p, q = jax.nn.sigmoid(pre[:, 0]), jax.nn.sigmoid(post[:, 0])
    expected = np.mean(p * np.log(p / q)) + np.mean((1 - p) * np.log((1 - p) / (1 - q)))
    mask = meta.loc_mask({"input_ids": None, "attention_mask": jnp.zeros((3, 8))})
    np.testing.assert_allclose(losses.kl_loc(pre, post, mask), expected, rtol=1e-5)
    assert float(losses.kl_loc(pre, pre, mask)) == pytest.approx(0.0, abs=1e-7)
