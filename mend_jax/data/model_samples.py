"""The gen experiment's data for a real model, offline: the model's own samples.

The reference's gen edits are 10-token continuations that its model sampled (self_sample), and
its locality passages are wikitext lines of at least 50 words. With no corpus offline, both come
from the model itself, continuing SEED_PROMPTS (sentence starts of many kinds) with top-k samples
(models/decoding.py), each cut before its first special token (an instruct model's end of turn):

- an edit: a seed prompt continued by `context_tokens` sampled tokens (the `original` prefix),
  then by `n_tokens` more: the whole text is the completion whose last `n_tokens` tokens the
  edit makes the model produce, as in self_sample;
- a locality passage: a seed prompt continued by `passage_tokens` sampled tokens, on one line,
  kept when it has at least data/gen.py's MIN_WORDS words and is ASCII (the reference's filter
  of wikitext).

Training and validation continue disjoint seed prompts (every fifth validates). The files are
written in the published layout, self_sample/{train,valid}.json and loc/{train,valid}.txt, under
$MEND_JAX_CACHE/model_samples/KEY/, KEY a hash of the settings and of the model's weights: built
once, on first use (tens of minutes on a 2-core CPU for SmolLM2-135M).
"""
import json
import os
from typing import Dict, List, Sequence, Tuple

from mend_jax.data.gen import MIN_WORDS
from mend_jax.data.io import publish_directory, write_json_atomically
from mend_jax.data.known_facts import model_fingerprint, splits_key

VERSION = 2  # 1 drew every 32 prompts' samples from one key: a repeated prompt repeated its sample
SEED_PROMPTS = (
    "The history of", "In the morning,", "Scientists have found that", "The city is known for",
    "My favourite book is", "The weather today", "There are many reasons why", "When I was young,",
    "The government announced", "A new study shows", "The best way to learn", "During the war,",
    "The river flows", "Many people believe that", "The first time I", "In the year 1900,",
    "The company said", "Music is", "The old house", "According to the report,",
    "The team won", "Children often", "The museum has", "After dinner, we",
    "The village was", "One of the most important", "The film tells the story of", "In mathematics,",
    "The king", "Farmers in the region", "The train arrived", "It is important to",
    "The painting shows", "Last summer,", "The university was founded", "Water is",
    "The election", "On the island,", "The recipe calls for", "The bridge was built",
    "The doctor told", "In the forest,", "The book describes", "Early computers",
    "The festival takes place", "The ocean", "My grandmother", "The law requires",
    "The mountain", "In the nineteenth century,", "The language is spoken", "The game begins",
    "The ship sailed", "Students at the school", "The church was", "The market opened",
    "Birds can", "The song was written", "The road to the city", "In the kitchen,",
)


def seed_prompts(split: str) -> List[str]:
    """The seed prompts a split continues: every fifth validates, the others train."""
    return [p for i, p in enumerate(SEED_PROMPTS) if (i % 5 == 4) == (split == "valid")]


def _prompts(split: str, n: int) -> List[str]:
    base = seed_prompts(split)
    return [base[i % len(base)] for i in range(n)]


def is_passage(text: str) -> bool:
    return len(text.split()) >= MIN_WORDS and text.isascii()


def build(generate, tokenizer, settings: Dict) -> Tuple[Dict[str, Dict], Dict[str, List[str]]]:
    """({split: self_sample object}, {split: locality passages}). `generate(prompts, n_new, seed)`
    returns the texts the model sampled after each prompt."""
    edits, passages = {}, {}
    for s, split in enumerate(("train", "valid")):
        prompts = _prompts(split, settings[f"n_{split}"])
        contexts = [p + t for p, t in zip(prompts, generate(prompts, settings["context_tokens"], 2 * s))]
        ends = generate(contexts, settings["n_tokens"], 2 * s + 1)
        keep = [i for i, e in enumerate(ends) if len(tokenizer(e)["input_ids"]) >= settings["n_tokens"]]
        edits[split] = {"original": [contexts[i] for i in keep], "completions": [contexts[i] + ends[i] for i in keep],
                        "n_tokens": settings["n_tokens"]}
        seeds = _prompts(split, settings[f"n_loc_{split}"])
        texts = [p + t for p, t in zip(seeds, generate(seeds, settings["passage_tokens"], 10 + s))]
        passages[split] = [line for line in (" ".join(t.split()) for t in texts) if is_passage(line)]
    return edits, passages


def sampler(module, params, tokenizer, top_k: int):
    """`generate(prompts, n_new, seed)`: the model's top-k samples, each cut before its first special token."""
    from mend_jax.editing.fluency import Generator

    generators = {}

    def generate(prompts: Sequence[str], n_new: int, seed: int) -> List[str]:
        if n_new not in generators:
            generators[n_new] = Generator(module, tokenizer, n_new, top_k=top_k, stop_at_special=True)
        generators[n_new].seed = seed
        return generators[n_new](params, list(prompts))

    return generate


def ensure_samples(cache_root: str, generate, tokenizer, fingerprint: str, model_name: str, settings: Dict,
                   progress=print) -> Tuple[str, str, str]:
    """(the self_sample directory, the training and the validation locality files) of the texts
    `generate` samples (`sampler`), built on first use; `fingerprint` names the model's weights."""
    spec = {"version": VERSION, "settings": dict(sorted(settings.items())), "model": fingerprint}
    directory = os.path.join(cache_root, "model_samples", splits_key(spec))
    files = (os.path.join(directory, "self_sample"), *(os.path.join(directory, "loc", f"{s}.txt")
                                                        for s in ("train", "valid")))
    if os.path.isfile(os.path.join(directory, "spec.json")):
        return files
    progress(f"gen data: sampling {model_name}'s own text for edits and locality (once; cached in {directory})")
    edits, passages = build(generate, tokenizer, settings)
    for split in ("train", "valid"):
        if not edits[split]["completions"] or not passages[split]:
            raise ValueError(f"{model_name}'s samples gave {len(edits[split]['completions'])} {split} edits and "
                             f"{len(passages[split])} {split} passages of at least {MIN_WORDS} ASCII words: raise "
                             "data.samples.n_* or passage_tokens")
    counts = {s: {"edits": len(edits[s]["completions"]), "passages": len(passages[s])} for s in edits}

    def write(tmp):
        for split in ("train", "valid"):
            write_json_atomically(os.path.join(tmp, "self_sample", f"{split}.json"), edits[split])
            os.makedirs(os.path.join(tmp, "loc"), exist_ok=True)
            with open(os.path.join(tmp, "loc", f"{split}.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(passages[split]) + "\n")
        write_json_atomically(os.path.join(tmp, "spec.json"), {**spec, "model_name": model_name, "counts": counts},
                              indent=1)

    publish_directory(directory, write, "spec.json")
    progress("gen data: " + json.dumps(counts))
    return files


def ensure_for_config(config, model) -> Tuple[str, str, str]:
    from mend_jax.world import cache_root

    settings = config.data.samples.to_dict()
    generate = sampler(model.target.module, model.params, model.tokenizer, settings["top_k"])
    return ensure_samples(cache_root(), generate, model.tokenizer, model_fingerprint(model.params), config.model.name,
                          settings)
