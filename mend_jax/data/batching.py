"""Batch building shared by the experiments: static shapes, pure-function sampling.

Every batch is a function of (seed, step) alone, so training can resume at any
step without replaying the sampler, and jit sees the same shapes every time.
"""
import functools
from typing import Dict, Iterator, List, Sequence, Tuple

import jax
import numpy as np

from mend_jax.losses import IGNORE

# Leading entropy words that keep the different random streams apart.
_PERMUTATION, _TRAIN, _EVAL = 0, 1, 2


def train_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([_TRAIN, seed, step])


def eval_rng(index: int) -> np.random.Generator:
    """Eval batches ignore the training seed, so runs with different seeds see the same ones."""
    return np.random.default_rng([_EVAL, index])


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng([_PERMUTATION, seed, epoch]).permutation(n)
    perm.flags.writeable = False  # shared by the cache
    return perm


def epoch_indices(n_items: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of batch `step`: each epoch walks a fresh seeded permutation.

    The last `n_items % batch_size` items of an epoch's permutation are skipped
    (different ones each epoch) so every batch has the same size.
    """
    if not 1 <= batch_size <= n_items:
        raise ValueError(f"batch of {batch_size} items from a set of {n_items}")
    epoch, pos = divmod(step, n_items // batch_size)
    return _permutation(n_items, seed, epoch)[pos * batch_size : (pos + 1) * batch_size]


def check_tokenizer(tokenizer) -> None:
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no pad token; apply the GPT-2 pad fix first: "
            "module, params = mend_jax.models.add_pad_token(module, params, tokenizer) (it adds '[PAD]')"
        )
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise ValueError(
            f"tokenizer pads on the {tokenizer.padding_side}; only right padding is supported "
            "(labels and the prefix drop assume real tokens come first). Set tokenizer.padding_side = 'right'"
        )


def pad_right(seqs: Sequence[Sequence[int]], length: int, pad_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """(ids, attention_mask), int32 of shape (len(seqs), length); sequences must fit."""
    ids = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def lm_labels(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Every real token is a target; padding is ignored."""
    return np.where(mask > 0, ids, IGNORE).astype(np.int32)


def shift_left(batch: Dict[str, np.ndarray], drop: int, pad_id: int) -> Dict[str, np.ndarray]:
    """Drops the first `drop` positions of every row and re-pads on the right to the same width."""
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE}
    out = {}
    for key, value in batch.items():
        shifted = np.full_like(value, fill[key])
        shifted[:, : value.shape[1] - drop] = value[:, drop:]
        out[key] = shifted
    return out


def bucket_length(longest: int, buckets: Sequence[int], limit: int) -> int:
    """The padded length of a batch whose longest sequence has `longest` tokens: the
    smallest bucket that holds it, else `limit` (sequences are cut at `limit`)."""
    return min([b for b in buckets if longest <= b < limit] + [limit])


def _fill(path) -> int:
    """Padding for a leaf of a batch: labels are ignored, every other array (ids, masks) is 0."""
    return IGNORE if getattr(path[-1], "key", None) == "labels" else 0


def pad_to_common_length(batches: List[Dict]) -> List[Dict]:
    """Right-pads every batch's (rows, length) arrays to the longest length among them.

    Padded positions are masked (attention mask 0, labels ignored), so for the
    right-padded, masked models here they change no real position's output.
    """
    def pad(path, *leaves):
        if leaves[0].ndim < 2 or len({leaf.shape[1] for leaf in leaves}) == 1:
            return list(leaves)
        width = max(leaf.shape[1] for leaf in leaves)
        widths = [(0, 0), None] + [(0, 0)] * (leaves[0].ndim - 2)
        return [np.pad(leaf, [w or (0, width - leaf.shape[1]) for w in widths], constant_values=_fill(path))
                for leaf in leaves]

    padded = jax.tree_util.tree_map_with_path(lambda path, *leaves: pad(path, *leaves), *batches)
    treedef = jax.tree_util.tree_structure(batches[0])
    columns = treedef.flatten_up_to(padded)
    return [treedef.unflatten([column[i] for column in columns]) for i in range(len(batches))]


def stack_batches(batches: List[Dict]) -> Dict:
    """Stacks same-structure batches on a new leading axis (for vmapped evaluation); batches
    padded to different lengths (gen's locality buckets) are first padded to the longest."""
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *pad_to_common_length(batches))


def concat_rows(batches: List[Dict]) -> Dict:
    """Concatenates same-structure batches along their rows, padding lengths first."""
    return jax.tree_util.tree_map(lambda *leaves: np.concatenate(leaves), *pad_to_common_length(batches))


class EditBatches:
    """`train_batch(step)` / `eval_batch(i)` for a data set whose batches are `_batch(edit_idx, rng)`.

    Training walks seeded permutations of the edits, `n_edits` at a time;
    evaluation takes them in file order, so it covers the split once.
    """

    n_edits: int
    seed: int

    def __len__(self) -> int:
        raise NotImplementedError

    def _batch(self, edit_idx: np.ndarray, rng: np.random.Generator) -> Dict:
        raise NotImplementedError

    @property
    def n_eval_batches(self) -> int:
        return len(self) // self.n_edits

    def train_batch(self, step: int) -> Dict:
        return self._batch(epoch_indices(len(self), self.n_edits, self.seed, step), train_rng(self.seed, step))

    def eval_batch(self, index: int) -> Dict:
        if not 0 <= index < self.n_eval_batches:
            raise IndexError(f"eval batch {index} out of range [0, {self.n_eval_batches})")
        return self._batch(np.arange(index * self.n_edits, (index + 1) * self.n_edits), eval_rng(index))

    def eval_batches(self, n: int = None) -> Iterator[Dict]:
        n = self.n_eval_batches if n is None else min(n, self.n_eval_batches)
        return (self.eval_batch(i) for i in range(n))


def check_sizes(n_rows: int, n_edits: int, n_loc: int, source: str) -> None:
    if not 1 <= n_edits <= n_rows:
        raise ValueError(f"n_edits must be in [1, {n_rows}] for {source}, got {n_edits}")
    if n_loc < 1:
        raise ValueError(f"n_loc must be >= 1, got {n_loc}")


def join_target(prompt: str, target: str) -> str:
    """The target as it follows the prompt: "prompt target", a space added unless one is there."""
    return target if prompt[-1:].isspace() or target[:1].isspace() else " " + target


def prompt_target_tokens(tokenizer, prompts: Sequence[str], targets: Sequence[str]):
    """(prompt ids, target ids) per pair, for a decoder-only LM that reads the prompt, then the target."""
    prompt_ids = [list(tokenizer(p)["input_ids"]) for p in prompts]
    target_ids = [list(tokenizer(join_target(p, t), add_special_tokens=False)["input_ids"])
                  for p, t in zip(prompts, targets)]
    return prompt_ids, target_ids


def prompt_target_batch(prompt_ids, target_ids, width: int, pad_id: int) -> Dict[str, np.ndarray]:
    """Right-padded "prompt target" rows in which only the target's tokens are labelled."""
    ids, mask = pad_right([p + t for p, t in zip(prompt_ids, target_ids)], width, pad_id)
    labels = np.full_like(ids, IGNORE)
    for row, (p, t) in enumerate(zip(prompt_ids, target_ids)):
        labels[row, len(p):len(p) + len(t)] = t
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
