"""Locality corpora from the TensorFlow Datasets catalogue: `--config.data.loc_source=tfds:NAME`.

  tfds:natural_questions_open   qa locality (questions and short answers), instead of nq/*.json
  tfds:wiki40b/en               gen locality (paragraphs), instead of wikitext-103

This is the natural route on TPU VMs, where prepared TFDS data sits in GCS
(set --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets). tensorflow
and tensorflow-datasets are an optional extra: pip install 'mend-jax[tfds]'.
"""
from typing import Dict, Iterator, List, Optional

from mend_jax.data.gen import keep_passage
from mend_jax.data.io import DataFormatError
from mend_jax.data.nq import QaPairs

PREFIX = "tfds:"
SPLITS = {"train": "train", "valid": "validation"}
# wiki40b marks up its articles; only paragraph text is prose.
_WIKI40B_MARKERS = ("_START_ARTICLE_", "_START_SECTION_", "_START_PARAGRAPH_")
_WIKI40B_NEWLINE = "_NEWLINE_"


def parse_loc_source(spec: str) -> Optional[str]:
    """The TFDS name in "tfds:NAME", or None for "" (the experiment's files)."""
    if not spec:
        return None
    if not spec.startswith(PREFIX) or len(spec) == len(PREFIX):
        raise ValueError(f"data.loc_source must be '' or '{PREFIX}NAME' (e.g. tfds:natural_questions_open), got {spec!r}")
    return spec[len(PREFIX):]


def import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "data.loc_source=tfds:... needs tensorflow and tensorflow-datasets: pip install 'mend-jax[tfds]'"
        ) from e
    return tfds


def tfds_split(split: str, pct: float = 100.0) -> str:
    """Our split name ("train"/"valid") as a TFDS split, optionally its first `pct` percent."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if not 0 < pct <= 100:
        raise ValueError(f"pct must be in (0, 100], got {pct}")
    return SPLITS[split] if pct == 100 else f"{SPLITS[split]}[:{pct:g}%]"


def examples(name: str, split: str, *, data_dir: Optional[str] = None, download: bool = True,
             limit: Optional[int] = None) -> Iterator[Dict]:
    """The split's examples as numpy dicts, in the data set's order (no file shuffling)."""
    tfds = import_tfds()
    ds = tfds.load(name, split=split, data_dir=data_dir or None, download=download, shuffle_files=False)
    if limit:
        ds = ds.take(limit)
    return iter(tfds.as_numpy(ds))


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _require(example: Dict, features, source: str) -> None:
    missing = [f for f in features if f not in example]
    if missing:
        raise DataFormatError(f"{source}: examples lack feature(s) {missing}; they have {sorted(example)}")


def nq_question(text: str) -> str:
    """natural_questions_open's lower-case question in the style of the reference's nq/*.json:
    capitalised, with a question mark."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith("?") else "?")


def qa_pairs(name: str, split: str, *, data_dir: Optional[str] = None, download: bool = True,
             limit: Optional[int] = None) -> QaPairs:
    """(question, shortest answer) pairs from a TFDS set with `question` and `answer` features,
    as the reference's NQ generator builds them; examples without an answer are skipped."""
    source = f"{PREFIX}{name}[{split}]"
    questions, answers = [], []
    for example in examples(name, split, data_dir=data_dir, download=download, limit=limit):
        _require(example, ("question", "answer"), source)
        answer = example["answer"]  # a sequence of answers, or one
        options = [answer] if isinstance(answer, (bytes, str)) else list(answer)
        options = [a for a in map(_text, options) if a]
        if options:
            questions.append(nq_question(_text(example["question"])))
            answers.append(min(options, key=len))
    if not questions:
        raise DataFormatError(f"{source}: empty split, no example with an answer")
    return QaPairs(questions, answers, source)


def text_paragraphs(text: str) -> List[str]:
    """A document's paragraphs: wiki40b's marked-up paragraph text, else its lines."""
    if not any(m in text for m in _WIKI40B_MARKERS):
        lines = text.split("\n")
    else:
        lines, in_paragraph = [], False
        for line in text.split("\n"):
            if line in _WIKI40B_MARKERS:
                in_paragraph = line == "_START_PARAGRAPH_"
            elif in_paragraph:
                lines.extend(line.split(_WIKI40B_NEWLINE))
    return [p.strip() for p in lines if p.strip()]


def passages(name: str, split: str, *, data_dir: Optional[str] = None, download: bool = True,
             max_passages: Optional[int] = None) -> List[str]:
    """Paragraphs of a TFDS text set (feature `text`) that pass gen's filter
    (at least 50 space-separated words, pure ASCII), up to `max_passages`."""
    source = f"{PREFIX}{name}[{split}]"
    kept = []
    for example in examples(name, split, data_dir=data_dir, download=download):
        _require(example, ("text",), source)
        kept.extend(p for p in text_paragraphs(_text(example["text"])) if keep_passage(p))
        if max_passages and len(kept) >= max_passages:
            return kept[:max_passages]
    if not kept:
        raise DataFormatError(f"{source}: no paragraph passes the locality filter (>= 50 words, pure ASCII)")
    return kept
