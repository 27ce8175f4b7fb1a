"""Locality corpora from TensorFlow Datasets (`data.loc_source=tfds:NAME`), under tfds.testing.mock_data."""
import sys

import numpy as np
import pytest

from mend_jax.data import tfds_source
from mend_jax.data.io import DataFormatError

tfds = pytest.importorskip("tensorflow_datasets")
tf = pytest.importorskip("tensorflow")

LONG = " ".join(f"word{i}" for i in range(60))
WIKI40B_TEXT = (
    "\n_START_ARTICLE_\nSome title\n_START_SECTION_\nHistory\n_START_PARAGRAPH_\n"
    f"{LONG}_NEWLINE_too short to keep\n_START_SECTION_\nLater\n_START_PARAGRAPH_\nsecond {LONG}"
)


def wiki40b_as_dataset(self, *args, **kwargs):
    texts = [WIKI40B_TEXT, "\n_START_ARTICLE_\nNon ascii\n_START_PARAGRAPH_\ncaf\u00e9 " + LONG]
    return tf.data.Dataset.from_tensor_slices(
        {"text": texts, "wikidata_id": ["Q1", "Q2"], "version_id": ["1", "2"]}
    )


def test_parse_loc_source():
    assert tfds_source.parse_loc_source("") is None
    assert tfds_source.parse_loc_source("tfds:wiki40b/en") == "wiki40b/en"
    for bad in ("wiki40b/en", "tfds:", "hf:nq"):
        with pytest.raises(ValueError, match="data.loc_source must be"):
            tfds_source.parse_loc_source(bad)
    assert tfds_source.tfds_split("valid") == "validation"
    assert tfds_source.tfds_split("train", 10.0) == "train[:10%]"


def test_natural_questions_open_under_mock_data():
    with tfds.testing.mock_data(num_examples=4):
        pairs = tfds_source.qa_pairs("natural_questions_open", "validation")
    assert len(pairs) == 4 and pairs.source == "tfds:natural_questions_open[validation]"
    for q, a in zip(pairs.questions, pairs.answers):
        assert q.endswith("?") and q[:1] == q[:1].upper() and isinstance(a, str) and a


def test_shortest_answer_and_unanswered_questions_are_skipped():
    def as_dataset(self, *args, **kwargs):
        return tf.data.Dataset.from_generator(
            lambda: iter([{"question": "who wrote it", "answer": ["a long answer", "short"]},
                          {"question": "nobody knows", "answer": np.zeros((0,), object)}]),
            output_signature={"question": tf.TensorSpec((), tf.string), "answer": tf.TensorSpec((None,), tf.string)},
        )

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        pairs = tfds_source.qa_pairs("natural_questions_open", "train")
    assert pairs.questions == ["Who wrote it?"] and pairs.answers == ["short"]


def test_wiki40b_paragraphs_pass_the_gen_filter():
    with tfds.testing.mock_data(as_dataset_fn=wiki40b_as_dataset):
        passages = tfds_source.passages("wiki40b/en", "train")
    assert passages == [LONG, "second " + LONG]
    with tfds.testing.mock_data(num_examples=2):  # random mock text: nothing passes the 50-word filter
        with pytest.raises(DataFormatError, match="no paragraph passes the locality filter"):
            tfds_source.passages("wiki40b/en", "validation")


def test_missing_features_are_named():
    with tfds.testing.mock_data(num_examples=1):
        with pytest.raises(DataFormatError, match=r"lack feature\(s\) \['question', 'answer'\]"):
            tfds_source.qa_pairs("wiki40b/en", "train")


def test_experiments_route_qa_and_gen_locality_through_tfds(tmp_path):
    from mend_jax import config_lib, experiments
    from mend_jax.data.gen import GenDataset
    from tests.test_gen_data import COMPLETIONS, word_tokenizer, write_split

    c = config_lib.base_config()
    c.batch_size, c.val_batch_size = 2, 3
    c.data.update(dict(loc_source="tfds:natural_questions_open", max_length=64, loc_max_length=64, loc_pool="all"))
    c.data.zsre_nq, c.data.zsre_nq_train = False, False  # qa's keys (configs/qa.py)
    with tfds.testing.mock_data(num_examples=3):
        assert experiments.qa_locality(c, "unused", "train") is None  # the reference: NQ for validation only
        pairs = experiments.qa_locality(c, "unused", "valid")
    assert len(pairs) == 3 and pairs.source.endswith("[validation]")

    write_split(tmp_path / "self_sample" / "train.json")
    write_split(tmp_path / "self_sample" / "valid.json", completions=COMPLETIONS[:3])
    c.data.loc_source = "tfds:wiki40b/en"
    tok = word_tokenizer()
    with tfds.testing.mock_data(as_dataset_fn=wiki40b_as_dataset):
        train, val = experiments.gen_datasets(c, tok, str(tmp_path / "self_sample"), None, None, c.data.loc_max_length)
    assert isinstance(train, GenDataset) and train.passages == [LONG, "second " + LONG]
    assert train.train_batch(0)["loc"]["input_ids"].shape == (1, 64) and val.n_loc == 2


def test_missing_tensorflow_datasets_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'mend-jax\[tfds\]'"):
        tfds_source.qa_pairs("natural_questions_open", "train")
