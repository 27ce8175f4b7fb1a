"""Data readers and static-shape batch builders for the editing experiments."""
from mend_jax.data.batching import check_tokenizer, epoch_indices, stack_batches
from mend_jax.data.gen import (
    Edits,
    GenDataset,
    find_wikitext,
    gen_datasets,
    load_passages,
    load_self_sample,
    parse_self_sample,
    self_sample_path,
)
from mend_jax.data.io import DataFormatError, DataNotFoundError

__all__ = [
    "DataFormatError",
    "DataNotFoundError",
    "Edits",
    "GenDataset",
    "check_tokenizer",
    "epoch_indices",
    "find_wikitext",
    "gen_datasets",
    "load_passages",
    "load_self_sample",
    "parse_self_sample",
    "self_sample_path",
    "stack_batches",
]
