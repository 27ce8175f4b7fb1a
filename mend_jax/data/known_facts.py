"""Real-fact CounterFact splits for one model: the facts of data/real_facts.py that the model
knows, split by subject, built once per model and cached.

A fact is known when, after its rewrite prompt, every token of the true object is the
model's teacher-forced argmax: the model would complete the prompt with the object by
greedy decoding. Editing a fact the model does not know measures nothing (its efficacy and
neighbourhood scores start where the edit should end).

The splits live under $MEND_JAX_CACHE/real_facts/KEY/ (train.json, valid.json, test.json,
facts.json with the per-relation counts), KEY a hash of the generator's version and
arguments and of the model's weights, so another model or another release builds anew.
"""
import hashlib
import json
import os
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mend_jax import losses
from mend_jax.data import real_facts
from mend_jax.data.batching import prompt_target_batch, prompt_target_tokens
from mend_jax.data.io import publish_directory

BATCH = 64  # rows per jitted forward
WIDTH_STEP = 16  # rows are padded to a multiple: a few compilations serve every length


def knows(target, params, tokenizer, prompts: Sequence[str], objects: Sequence[str]) -> np.ndarray:
    """One bool per (prompt, object): every object token is the argmax after the prompt and the tokens before it."""
    score = jax.jit(lambda p, batch: losses.token_stats(target.logits(p, batch), batch["labels"],
                                                        target.shift_labels).correct)
    out = []
    for lo in range(0, len(prompts), BATCH):
        prompt_ids, object_ids = prompt_target_tokens(tokenizer, prompts[lo:lo + BATCH], objects[lo:lo + BATCH])
        n = len(prompt_ids)
        longest = max(len(p) + len(o) for p, o in zip(prompt_ids, object_ids))
        width = -(-longest // WIDTH_STEP) * WIDTH_STEP
        pad = BATCH - n  # a fixed batch: the last, short one reuses the compilation
        batch = prompt_target_batch(prompt_ids + prompt_ids[:1] * pad, object_ids + object_ids[:1] * pad, width,
                                    tokenizer.pad_token_id)
        out.append(np.asarray(score(params, {k: jnp.asarray(v) for k, v in batch.items()}))[:n])
    return np.concatenate(out).astype(bool)


def model_fingerprint(params) -> str:
    """A hash of every leaf's shape and of its first and last 4,096 values: another checkpoint, or the same
    one quantised otherwise, gives another fingerprint, without reading a large model in full."""
    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda x: jax.tree_util.keystr(x[0])):
        flat = np.asarray(jax.device_get(leaf), np.float32).reshape(-1)
        digest.update(f"{jax.tree_util.keystr(path)}{leaf.shape}".encode())
        digest.update(np.concatenate([flat[:4096], flat[-4096:]]).tobytes())
    return digest.hexdigest()


def splits_key(spec: Dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def ensure_splits(cache_root: str, target, params, tokenizer, model_name: str, relations: Sequence[str],
                  n_cities: int, seed: int, max_neighbors: int, progress=print) -> str:
    """The directory of the model's known-fact splits, built on first use."""
    relations = real_facts.check_relations(relations or list(real_facts.RELATIONS))
    spec = {"version": real_facts.VERSION, "relations": relations, "n_cities": n_cities, "seed": seed,
            "max_neighbors": max_neighbors, "model": model_fingerprint(params)}
    directory = os.path.join(cache_root, "real_facts", splits_key(spec))
    if os.path.isfile(os.path.join(directory, "facts.json")):
        return directory
    facts = real_facts.load_facts(relations, n_cities)
    cases = real_facts.build_cases(facts, seed, max_neighbors)
    progress(f"real facts: checking which of {len(cases)} facts {model_name} knows (once; cached in {directory})")
    kept, counts = real_facts.filter_known(cases, lambda p, o: knows(target, params, tokenizer, p, o))
    splits = real_facts.split_cases(kept)
    publish_directory(directory, lambda tmp: real_facts.write_splits(
        tmp, splits, counts, {"model": model_name, "model_fingerprint": spec["model"], "seed": seed,
                              "n_cities": n_cities, "max_neighbors": max_neighbors,
                              "known_filter": "every object token is the argmax"}), "facts.json")
    progress(real_facts.count_table(counts, splits))
    return directory
