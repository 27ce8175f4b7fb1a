"""Writes the world in the file formats of the reference's data sets.

Layout under a root directory (the names the reference's loaders expect):

  gen/self_sample/{train,valid}.json   edits: true sentence -> counterfactual sentence
  gen/loc/{train,valid}.txt            locality text, one wikitext-style passage a line
  zsre/structured_zeroshot-{train,dev}-new_annotated_final.jsonl
  nq/{train,validation}.json
  fever/fever-{train,dev}-kilt.jsonl

Locality data (gen/loc, nq) of a split is made of the *other* split's facts, so
it never states a fact whose subject that split edits.
"""
import json
import os
import random
from typing import Dict, List, Sequence, Tuple

from mend_jax.world.facts import Fact, World

SPLITS = ("train", "valid")
OTHER = {"train": "valid", "valid": "train"}
GEN_SELF_SAMPLE = "gen/self_sample/{}.json"
GEN_LOC = "gen/loc/{}.txt"
ZSRE = "zsre/structured_zeroshot-{}-new_annotated_final.jsonl"
NQ = "nq/{}.json"
FEVER = "fever/fever-{}-kilt.jsonl"
# File-name spelling of each split, per data set.
DEV = {"train": "train", "valid": "dev"}
NQ_SPLIT = {"train": "train", "valid": "validation"}

MIN_LOC_WORDS = 50  # the reference drops wikitext passages shorter than this
FEVER_LOGIT = 5.0  # a confident nominal logit: there is no fact-checking model to take it from


def edit_contexts(facts: Sequence[Fact], seed: int) -> List[Tuple[Fact, int, str]]:
    """(fact, template, context) for every fact and statement template.

    The context is a short run of true sentences about other subjects, with at least
    as many words as the fact's sentence, so the reference's edit_outer, which drops
    up to half of the edit's tokens from the front, never drops the subject being edited.
    """
    rng = random.Random(seed)
    pool = [s for f in facts for s in f.statements()]
    return [(f, t, _context(rng, pool, f.subject, len(true.split(" "))))
            for f in facts for t, true in enumerate(f.statements())]


def edit_pairs(facts: Sequence[Fact], seed: int) -> List[Tuple[str, str]]:
    """(true text, counterfactual text): every fact and template, after its context, with each of
    the fact's counterfactual objects.

    The pairs come in rounds: round r gives template t the alternative t + r, so the first
    len(facts) x templates pairs edit every fact and template once. Validation on the first
    `val_steps` edits, as the reference validates, then covers every fact.
    """
    contexts = edit_contexts(facts, seed)
    n_rounds = max(len(f.alternatives) for f in facts)
    return [
        (f"{ctx} {f.statement(t)}", f"{ctx} {f.statement(t, f.alternative(t + r))}")
        for r in range(n_rounds) for f, t, ctx in contexts if r < len(f.alternatives)
    ]


def fact_texts(world: World) -> List[str]:
    """Every true statement, alone and in its gen edit's context: what the model must know."""
    in_context = [f"{ctx} {f.statement(t)}" for split in SPLITS
                  for f, t, ctx in edit_contexts(world.split(split), gen_seed(world, split))]
    return [s for f in world.facts for s in f.statements()] + in_context


def gen_edit_prompts(world: World, split: str) -> List[Tuple[Fact, str]]:
    """(fact, prompt) for every fact of `split`: its statement under template 0 after the context
    the gen data gives it, up to the object (the edit target is then " Object.")."""
    return [(f, f"{ctx} {f.prefix(0)}") for f, t, ctx in edit_contexts(world.split(split), gen_seed(world, split))
            if t == 0]


def gen_seed(world: World, split: str) -> int:
    """The seed of a split's gen edit contexts (the self_sample files)."""
    return world.config.seed + SPLITS.index(split)


def _context(rng: random.Random, pool: Sequence[str], subject: str, min_words: int) -> str:
    sentences = []
    while _n_words(sentences) < min_words:
        s = rng.choice(pool)
        if subject not in s.replace(".", "").replace(",", "").split(" "):
            sentences.append(s)
    return " ".join(sentences)


def loc_passages(facts: Sequence[Fact], seed: int) -> List[str]:
    """True sentences in a shuffled order, grouped into passages of >= MIN_LOC_WORDS words."""
    rng = random.Random(seed)
    sentences = [s for f in facts for s in f.statements()]
    rng.shuffle(sentences)
    passages, current = [], []
    for s in sentences:
        current.append(s)
        if _n_words(current) >= MIN_LOC_WORDS:
            passages.append(current)
            current = []
    if current:  # top the tail up with repeats, so that no passage grows long
        while _n_words(current) < MIN_LOC_WORDS:
            current.append(rng.choice(sentences))
        passages.append(current)
    return [" ".join(p) for p in passages]


def loc_split(world: World, split: str) -> List[str]:
    """The locality passages of `split`: about the other split's subjects."""
    return loc_passages(world.split(OTHER[split]), seed=world.config.seed + SPLITS.index(split))


def _n_words(sentences: Sequence[str]) -> int:
    return sum(len(s.split(" ")) for s in sentences)


def write_gen(world: World, root: str, n_tokens: int) -> None:
    for split in SPLITS:
        pairs = edit_pairs(world.split(split), gen_seed(world, split))
        _write_json(
            os.path.join(root, GEN_SELF_SAMPLE.format(split)),
            {"original": [p[0] for p in pairs], "completions": [p[1] for p in pairs], "n_tokens": n_tokens},
        )
        _write_text(os.path.join(root, GEN_LOC.format(split)), "".join(p + "\n" for p in loc_split(world, split)))


def zsre_rows(facts: Sequence[Fact]) -> List[Dict]:
    rows = []
    for f in facts:
        questions = f.questions()
        for q in questions:
            rows.append({
                "input": q,
                "prediction": f.object,
                "alternatives": list(f.alternatives),
                "filtered_rephrases": [r for r in questions if r != q],
                "output": [{"answer": f.object}],
            })
    return rows


def fever_rows(facts: Sequence[Fact]) -> List[Dict]:
    """A true (SUPPORTS) and a false (REFUTES) claim per fact and template."""
    rows = []
    for f in facts:
        for t in range(len(f.relation_spec.statements)):
            for obj, label, other in ((f.object, "SUPPORTS", "REFUTES"), (f.alternative(t), "REFUTES", "SUPPORTS")):
                claims = f.statements(obj)
                rows.append({
                    "logit": FEVER_LOGIT if label == "SUPPORTS" else -FEVER_LOGIT,
                    "input": claims[t],
                    "prediction": label,
                    "alternatives": [other],
                    "filtered_rephrases": [c for u, c in enumerate(claims) if u != t],
                    "output": [{"answer": label}],
                })
    return rows


def write_qa_and_fc(world: World, root: str) -> None:
    for split in SPLITS:
        facts = world.split(split)
        _write_jsonl(os.path.join(root, ZSRE.format(DEV[split])), zsre_rows(facts))
        _write_jsonl(os.path.join(root, FEVER.format(DEV[split])), fever_rows(facts))
        loc = zsre_rows(world.split(OTHER[split]))
        _write_json(
            os.path.join(root, NQ.format(NQ_SPLIT[split])),
            {"questions": [r["input"] for r in loc], "answers": [r["prediction"] for r in loc]},
        )


def all_texts(world: World) -> List[str]:
    """Everything any data set says (so that a tokenizer can make each word one token)."""
    texts = []
    for f in world.facts:
        texts += f.questions()
        for o in (f.object,) + f.alternatives:
            texts += f.statements(o)
    return texts + [p for split in SPLITS for p in loc_split(world, split)]


def write_all(world: World, root: str, n_tokens: int) -> None:
    write_gen(world, root, n_tokens)
    write_qa_and_fc(world, root)


def _write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="ascii") as f:  # ascii: the world must stay pure ASCII
        f.write(text)


def _write_json(path: str, obj) -> None:
    _write_text(path, json.dumps(obj, indent=1) + "\n")


def _write_jsonl(path: str, rows: Sequence[Dict]) -> None:
    _write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


COUNTERFACT = "counterfact/{}.json"
MAX_NEIGHBOURS = 10  # CounterFact's release has 10 neighbourhood prompts a case


def counterfact_cases(world: World, split: str) -> List[Dict]:
    """The split's facts as CounterFact cases (data/counterfact.py): one per fact and statement
    template, rewritten to the template's counterfactual object. Paraphrases are the fact's
    other templates; neighbours are other subjects (of either split) with the same relation
    and true object, under the same template."""
    by_object: Dict[Tuple[str, str], List[Fact]] = {}
    for f in world.facts:
        by_object.setdefault((f.relation, f.object), []).append(f)
    cases = []
    for f in world.split(split):
        templates = f.relation_spec.statements
        for t, template in enumerate(templates):
            neighbours = [g.prefix(t) for g in by_object[(f.relation, f.object)] if g.subject != f.subject]
            cases.append({
                "case_id": len(cases),
                "requested_rewrite": {
                    "prompt": template.split("{o}")[0].rstrip(" ").replace("{s}", "{}"),
                    "subject": f.subject,
                    "target_new": {"str": f.alternative(t)},
                    "target_true": {"str": f.object},
                },
                "paraphrase_prompts": [f.prefix(u) for u in range(len(templates)) if u != t],
                "neighborhood_prompts": neighbours[:MAX_NEIGHBOURS],
                "generation_prompts": [f.prefix(t)],
            })
    return cases


def write_counterfact(world: World, root: str) -> None:
    for split in SPLITS:
        _write_json(os.path.join(root, COUNTERFACT.format(split)), counterfact_cases(world, split))
