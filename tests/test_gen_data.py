"""The gen experiment's reader and batch builder, on small files in the published format."""
import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mend_jax.data import (
    DataFormatError,
    DataNotFoundError,
    GenDataset,
    epoch_indices,
    find_wikitext,
    gen_datasets,
    load_passages,
    load_self_sample,
    parse_self_sample,
    self_sample_path,
    stack_batches,
)

N_TOKENS = 5
# Edit k has 12 + 3k words, each word unique, so one word is one token and every id names its place.
COMPLETIONS = [" ".join(f"e{k}w{j}" for j in range(12 + 3 * k)) for k in range(7)]
LONG = " ".join(f"p{j}" for j in range(60))
PASSAGES = [
    " = Heading = \n",
    " ".join(f"p{j}" for j in range(50)) + "\n",  # exactly 50 words: kept
    " ".join(f"p{j}" for j in range(49)) + "\n",  # 49 words: dropped
    " ".join(f"p{j}" for j in range(59)) + " caf\u00e9\n",  # not ASCII: dropped
    LONG + "\n",
    "\n",
]


def word_tokenizer(pad=True, padding_side="right"):
    words = {w for text in COMPLETIONS + PASSAGES for w in text.split()}
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(sorted(words))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kwargs = {"pad_token": "[PAD]"} if pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, padding_side=padding_side, **kwargs)


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def write_split(path, completions=COMPLETIONS, n_tokens=N_TOKENS, original=None):
    original = [c.split()[0] for c in completions] if original is None else original
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"original": original, "completions": completions, "n_tokens": n_tokens}))
    return path


def write_passages(path, lines=PASSAGES):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    return write_split(root / "train.json"), write_passages(root / "wiki.train.raw")


def dataset(files, tok, **kwargs):
    return GenDataset.from_files(*files, tok, **kwargs)


def ids_of(tok, text):
    return tok(text)["input_ids"]


def test_edit_labels_are_the_last_n_tokens_right_padded(files, tok):
    ds = dataset(files, tok, max_length=40)
    for i in range(len(ds)):
        inner = ds.eval_batch(i)["edit_inner"]
        want = ids_of(tok, COMPLETIONS[i])
        n = len(want)
        np.testing.assert_array_equal(inner["attention_mask"][0], [1] * n + [0] * (40 - n))  # right padding
        np.testing.assert_array_equal(inner["input_ids"][0], want + [tok.pad_token_id] * (40 - n))
        labelled = np.flatnonzero(inner["labels"][0] != -100)
        np.testing.assert_array_equal(labelled, np.arange(n - N_TOKENS, n))
        np.testing.assert_array_equal(inner["labels"][0, labelled], want[-N_TOKENS:])
        batch = ds.eval_batch(i)
        np.testing.assert_array_equal(batch["cond"]["input_ids"], inner["input_ids"])


def test_long_edit_keeps_its_end(files, tok):
    ds = dataset(files, tok, max_length=20)
    assert ds.n_truncated == sum(len(c.split()) > 20 for c in COMPLETIONS) > 0
    inner = ds.eval_batch(6)["edit_inner"]  # 30 tokens
    want = ids_of(tok, COMPLETIONS[6])[-20:]
    np.testing.assert_array_equal(inner["input_ids"][0], want)
    np.testing.assert_array_equal(inner["labels"][0, -N_TOKENS:], want[-N_TOKENS:])
    assert (inner["labels"][0, :-N_TOKENS] == -100).all()


def test_static_shapes_across_steps(files, tok):
    ds = dataset(files, tok, max_length=24, loc_max_length=32, n_edits=2, n_loc=3)
    shapes = {"edit_inner": (2, 24), "edit_outer": (2, 24), "cond": (2, 24), "loc": (3, 32)}
    for step in range(12):
        batch = ds.train_batch(step)
        assert set(batch) == set(shapes)
        for part, shape in shapes.items():
            for value in batch[part].values():
                assert value.shape == shape and value.dtype == np.int32, (step, part)
        assert set(batch["cond"]) == {"input_ids", "attention_mask"}


def test_prefix_drop_keeps_labels_aligned_and_in_bounds(files, tok):
    ds = dataset(files, tok, max_length=40, n_edits=3)
    drops = set()
    for step in range(30):
        batch = ds.train_batch(step)
        inner, outer = batch["edit_inner"], batch["edit_outer"]
        lens = inner["attention_mask"].sum(1)
        drop = int(lens[0] - outer["attention_mask"][0].sum())
        assert 0 <= drop <= (lens.min() - N_TOKENS) // 2
        drops.add(drop)
        for row in range(3):
            np.testing.assert_array_equal(outer["attention_mask"][row].sum(), lens[row] - drop)  # one drop per batch
            np.testing.assert_array_equal(outer["input_ids"][row, : 40 - drop], inner["input_ids"][row, drop:])
            np.testing.assert_array_equal(outer["labels"][row, : 40 - drop], inner["labels"][row, drop:])
            assert (outer["labels"][row, 40 - drop :] == -100).all()
            kept = outer["labels"][row][outer["labels"][row] != -100]
            np.testing.assert_array_equal(kept, inner["labels"][row][inner["labels"][row] != -100])
    assert len(drops) > 1  # the drop is really random
    assert max(drops) > 0
    no_drop = dataset(files, tok, max_length=40, drop_prefix=False).train_batch(0)
    np.testing.assert_array_equal(no_drop["edit_outer"]["input_ids"], no_drop["edit_inner"]["input_ids"])


def test_locality_filter_and_labels(files, tok):
    passages = load_passages(str(files[1]))
    assert passages == [PASSAGES[1], PASSAGES[4]]  # >= 50 words and ASCII, newline kept
    ds = dataset(files, tok, loc_max_length=55, n_loc=4, loc_pool="all")
    seen = set()
    for step in range(10):
        loc = ds.train_batch(step)["loc"]
        np.testing.assert_array_equal(loc["labels"], np.where(loc["attention_mask"] > 0, loc["input_ids"], -100))
        assert (loc["input_ids"][loc["attention_mask"] == 0] == tok.pad_token_id).all()
        seen.update(loc["attention_mask"].sum(1).tolist())
    assert seen == {50, 55}  # the 60-word passage is truncated to loc_max_length
    long_row = np.array(ids_of(tok, LONG)[:55])
    assert any((ds.train_batch(s)["loc"]["input_ids"] == long_row).all(1).any() for s in range(10))


def test_reference_loc_pool_uses_first_passages(tmp_path, tok):
    """The released code draws locality indices below the number of edits."""
    lines = [" ".join(f"p{j}" for j in range(50 + k)) + "\n" for k in range(10)]
    edits, wiki = write_split(tmp_path / "t.json", COMPLETIONS[:2]), write_passages(tmp_path / "w", lines)
    ds = GenDataset.from_files(edits, wiki, tok)
    lens = {int(ds.train_batch(s)["loc"]["attention_mask"].sum()) for s in range(40)}
    assert lens == {50, 51}


def test_train_batches_are_deterministic_and_resumable(files, tok):
    a, b = dataset(files, tok, n_edits=2, n_loc=2), dataset(files, tok, n_edits=2, n_loc=2)
    steps = list(range(10))
    first = {s: a.train_batch(s) for s in steps}
    for s in reversed(steps):  # a fresh object, visited out of order, gives the same batches
        assert_batches_equal(b.train_batch(s), first[s])
    other = dataset(files, tok, n_edits=2, n_loc=2, seed=1)
    ids = lambda batch: batch["edit_inner"]["input_ids"]  # noqa: E731
    assert any(not np.array_equal(ids(other.train_batch(s)), ids(first[s])) for s in steps)
    assert_batches_equal(a.eval_batch(2), other.eval_batch(2))  # eval ignores the training seed


def assert_batches_equal(x, y):
    assert x.keys() == y.keys()
    for part in x:
        for key in x[part]:
            np.testing.assert_array_equal(x[part][key], y[part][key], err_msg=f"{part}/{key}")


def test_each_epoch_is_a_permutation_of_all_edits(files, tok):
    ds = dataset(files, tok)
    first_tokens = {ids_of(tok, c)[0]: k for k, c in enumerate(COMPLETIONS)}
    edit_at = lambda step: first_tokens[int(ds.train_batch(step)["edit_inner"]["input_ids"][0, 0])]  # noqa: E731
    epochs = [[edit_at(e * 7 + s) for s in range(7)] for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(7))
    assert epochs[0] != epochs[1]  # a fresh permutation each epoch
    for epoch in range(2):  # 3 batches of 2 per epoch, one edit left over
        pairs = np.concatenate([epoch_indices(7, 2, 0, 3 * epoch + s) for s in range(3)])
        assert len(set(pairs.tolist())) == 6 and pairs.max() < 7


def test_eval_batches_and_stacking(files, tok):
    ds = dataset(files, tok, max_length=40, n_loc=4)
    assert len(list(ds.eval_batches())) == ds.n_eval_batches == 7
    stacked = stack_batches(list(ds.eval_batches(3)))
    assert stacked["edit_inner"]["input_ids"].shape == (3, 1, 40)
    assert stacked["loc"]["labels"].shape == (3, 4, 200)
    np.testing.assert_array_equal(stacked["edit_outer"]["labels"][2], ds.eval_batch(2)["edit_outer"]["labels"])
    np.testing.assert_array_equal(stacked["edit_inner"]["input_ids"][1, 0, :3], ids_of(tok, COMPLETIONS[1])[:3])
    with pytest.raises(IndexError):
        ds.eval_batch(7)


def test_gen_datasets_from_a_data_dir(tmp_path, tok):
    write_split(tmp_path / "10token" / "data" / "self_sample" / "train.json")
    write_split(tmp_path / "10token" / "data" / "self_sample" / "valid.json", COMPLETIONS[:3])
    write_passages(tmp_path / "wikitext-103-raw" / "wiki.train.raw", PASSAGES[:2] + PASSAGES[4:5] * 18)
    write_passages(tmp_path / "wikitext-103-raw" / "wiki.valid.raw")
    assert self_sample_path(str(tmp_path), "validation").endswith("self_sample/valid.json")
    train, valid = gen_datasets(str(tmp_path), tok, max_length=40)
    assert len(train) == 7 and len(valid) == 3
    assert len(train.passages) == 1  # the first 10% of 20 lines: PASSAGES[0:2]
    assert train.train_batch(0)["loc"]["input_ids"].shape == (1, 200)
    assert valid.eval_batch(0)["loc"]["input_ids"].shape == (4, 200)


# Errors: each names the file or field and says what to do.


def test_missing_edit_file(tmp_path):
    path = tmp_path / "valid.json"
    with pytest.raises(DataNotFoundError, match="Google Drive") as err:
        load_self_sample(str(path))
    assert str(path) in str(err.value) and "python -m mend_jax.train --config=configs/gen.py" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DataNotFoundError, match="10token/data/self_sample/train.json"):
        self_sample_path(str(tmp_path), "train")


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('{"original": [],\n  "completions": [oops]}')
    with pytest.raises(DataFormatError, match=r"train\.json: invalid JSON at line 2, column 19") as err:
        load_self_sample(str(path))
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"original": ["a"], "completions": ["a b"]}, "missing field 'n_tokens'"),
        ({"completions": ["a b"], "n_tokens": 1}, "missing field 'original'"),
        (
            {"original": ["a", "b"], "completions": ["a b"], "n_tokens": 1},
            "'original' has 2 entries but 'completions' has 1",
        ),
        ({"original": [], "completions": [], "n_tokens": 1}, "empty split"),
        ({"original": ["a"], "completions": "a b", "n_tokens": 1}, "'completions' must be a list"),
        ({"original": ["a"], "completions": ["a b"], "n_tokens": 0}, "'n_tokens' must be a positive integer"),
        ([1, 2], "expected one JSON object"),
    ],
)
def test_bad_edit_file(tmp_path, obj, message):
    path = tmp_path / "valid.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(DataFormatError, match=message) as err:
        load_self_sample(str(path))
    assert str(err.value).startswith(str(path))


def test_edit_shorter_than_n_tokens(tmp_path, tok):
    edits = parse_self_sample({"original": ["x"], "completions": ["e0w0 e0w1"], "n_tokens": 5}, "tiny.json")
    with pytest.raises(DataFormatError, match=r"tiny\.json: completion 0 has 2 tokens, fewer than n_tokens=5"):
        GenDataset(edits, PASSAGES[1:2], tok)


def test_tokenizer_without_pad_or_padding_left(files):
    with pytest.raises(ValueError, match=r"no pad token.*add_pad_token\(module, params, tokenizer\)"):
        dataset(files, word_tokenizer(pad=False))
    with pytest.raises(ValueError, match="pads on the left; only right padding"):
        dataset(files, word_tokenizer(padding_side="left"))


def test_passage_file_errors(tmp_path):
    path = tmp_path / "wiki.train.raw"
    with pytest.raises(DataNotFoundError, match="wikitext-103") as err:
        load_passages(str(path))
    assert str(path) in str(err.value)
    write_passages(path, [PASSAGES[0], PASSAGES[2], PASSAGES[3]])
    with pytest.raises(DataFormatError, match=r"wiki\.train\.raw: no passage survives the filter"):
        load_passages(str(path))
    with pytest.raises(DataNotFoundError, match=r"no wiki\.valid\.raw under"):
        find_wikitext(str(tmp_path))
