"""A small fictional world of facts, generated deterministically from a seed.

Entities (countries, cities, languages, people, companies) get invented,
pronounceable one-word names, so a tiny model can only know them by learning
this world. Every statement template ends with its object followed by a period,
which keeps the edited tokens of a fact at a fixed position and length.
"""
import dataclasses
import random
from typing import Dict, List, Optional, Tuple

# Real words for the one kind of object that needs no invented name.
FIELDS = (
    "medicine", "law", "music", "farming", "chemistry", "poetry", "banking", "shipbuilding",
    "astronomy", "pottery", "weaving", "mining", "painting", "carpentry", "fishing", "history",
)

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "st", "th")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "th", "nd", "rk")
_LANGUAGE_SUFFIXES = ("nish", "nese", "ric", "lian")
_COMPANY_SUFFIXES = ("tek", "corp", "works", "dyne")


@dataclasses.dataclass(frozen=True)
class Relation:
    """A relation between a subject kind and an object kind, with its templates.

    Statements end with "{o}." so the object is always the last word. No statement's
    text before "{o}" may be a prefix of another's for the same subject kind, or
    the next word after the shorter one would be ambiguous for the model.
    """

    name: str
    subject_kind: str
    object_kind: str
    statements: Tuple[str, ...]
    questions: Tuple[str, ...]


RELATIONS: Tuple[Relation, ...] = (
    Relation(
        "capital", "country", "city",
        ("The capital of {s} is {o}.", "{s} has its capital in {o}.", "The capital city of {s} is {o}."),
        ("What is the capital of {s}?", "Which city is the capital of {s}?", "What is the capital city of {s}?"),
    ),
    Relation(
        "official_language", "country", "language",
        ("The official language of {s} is {o}.", "Most people in {s} speak {o}.", "In {s}, the main language is {o}."),
        ("What is the official language of {s}?", "Which language do most people in {s} speak?",
         "What is the main language of {s}?"),
    ),
    Relation(
        "located_in", "city", "country",
        ("{s} is a city in {o}.", "{s} is located in {o}.", "The city of {s} lies in {o}."),
        ("In which country is {s}?", "Which country is {s} located in?", "Where is the city of {s}?"),
    ),
    Relation(
        "born_in", "person", "city",
        ("{s} was born in {o}.", "The birthplace of {s} is {o}.", "{s} comes from the city of {o}."),
        ("Where was {s} born?", "What is the birthplace of {s}?", "Which city does {s} come from?"),
    ),
    Relation(
        "speaks", "person", "language",
        ("{s} speaks {o}.", "The native language of {s} is {o}.", "{s} grew up speaking {o}."),
        ("What language does {s} speak?", "What is the native language of {s}?",
         "Which language did {s} grow up speaking?"),
    ),
    Relation(
        "field", "person", "field",
        ("{s} works in the field of {o}.", "{s} is an expert in {o}.", "{s} has a career in {o}."),
        ("What field does {s} work in?", "What is {s} an expert in?", "In which field does {s} have a career?"),
    ),
    Relation(
        "employer", "person", "company",
        ("{s} works for {o}.", "{s} is employed by {o}.", "The employer of {s} is {o}."),
        ("Who does {s} work for?", "Which company employs {s}?", "Who is the employer of {s}?"),
    ),
    Relation(
        "founder", "company", "person",
        ("{s} was founded by {o}.", "The founder of {s} is {o}.", "The company {s} was started by {o}."),
        ("Who founded {s}?", "Who is the founder of {s}?", "Who started the company {s}?"),
    ),
    Relation(
        "headquarters", "company", "city",
        ("{s} is headquartered in {o}.", "The headquarters of {s} are in {o}.",
         "The company {s} has its main office in {o}."),
        ("Where is {s} headquartered?", "Where are the headquarters of {s}?",
         "In which city is the main office of {s}?"),
    ),
)
RELATIONS_BY_NAME: Dict[str, Relation] = {r.name: r for r in RELATIONS}


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Everything that determines the world. Part of the cache key, so keep it hashable."""

    seed: int = 0
    n_countries: int = 10
    cities_per_country: int = 3
    n_languages: int = 8
    n_people: int = 60
    n_companies: int = 12
    n_alternatives: int = 3  # counterfactual objects per fact
    valid_fraction: float = 0.2  # share of each kind's subjects held out for validation

    def __post_init__(self):
        if self.n_countries < 2 or self.n_languages < 2 or self.n_people < 2 or self.n_companies < 2:
            raise ValueError(f"every entity kind needs at least 2 entities, or no counterfactual exists: {self}")
        if self.cities_per_country < 1 or self.n_alternatives < 1:
            raise ValueError(f"cities_per_country and n_alternatives must be >= 1: {self}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")


@dataclasses.dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str
    alternatives: Tuple[str, ...]  # counterfactual objects of the same relation, never `object`
    split: str  # "train" or "valid", decided by the subject

    def statement(self, template: int, obj: Optional[str] = None) -> str:
        return self.relation_spec.statements[template].format(s=self.subject, o=obj or self.object)

    def statements(self, obj: Optional[str] = None) -> Tuple[str, ...]:
        """The statement under every template."""
        return tuple(self.statement(t, obj) for t in range(len(self.relation_spec.statements)))

    def alternative(self, template: int) -> str:
        """The counterfactual object used with this template (they take turns)."""
        return self.alternatives[template % len(self.alternatives)]

    def questions(self) -> Tuple[str, ...]:
        return tuple(self.question(t) for t in range(len(self.relation_spec.questions)))

    def question(self, template: int) -> str:
        return self.relation_spec.questions[template].format(s=self.subject)

    def prefix(self, template: int) -> str:
        """The statement up to (not including) the space before its object."""
        before, _ = self.relation_spec.statements[template].split("{o}")
        return before.format(s=self.subject).rstrip(" ")

    @property
    def relation_spec(self) -> Relation:
        return RELATIONS_BY_NAME[self.relation]


@dataclasses.dataclass(frozen=True)
class World:
    config: WorldConfig
    entities: Dict[str, Tuple[str, ...]]  # kind -> names
    facts: Tuple[Fact, ...]

    def split(self, name: str) -> Tuple[Fact, ...]:
        return tuple(f for f in self.facts if f.split == name)


def generate_world(config: WorldConfig = WorldConfig()) -> World:
    rng = random.Random(config.seed)
    names = _NameMaker(rng, reserved=_template_words())
    countries = names.many(config.n_countries)
    cities_of = {c: names.many(config.cities_per_country) for c in countries}
    entities = {
        "country": countries,
        "city": tuple(city for c in countries for city in cities_of[c]),
        "language": tuple(n + rng.choice(_LANGUAGE_SUFFIXES) for n in names.many(config.n_languages, stem=True)),
        "field": FIELDS,
        "person": names.many(config.n_people),
        "company": tuple(n + rng.choice(_COMPANY_SUFFIXES) for n in names.many(config.n_companies, stem=True)),
    }
    city_country = {city: c for c in countries for city in cities_of[c]}

    def object_of(relation: str, subject: str) -> str:
        if relation == "capital":
            return cities_of[subject][0]  # consistent with located_in
        if relation == "located_in":
            return city_country[subject]
        return rng.choice(entities[RELATIONS_BY_NAME[relation].object_kind])

    triples = [
        (s, r.name, object_of(r.name, s)) for r in RELATIONS for s in entities[r.subject_kind]
    ]
    splits = _split_subjects(rng, entities, config.valid_fraction)
    pools = {r.name: _object_pool(r, triples, entities) for r in RELATIONS}
    facts = []
    for s, r, o in triples:
        others = [x for x in pools[r] if x != o]
        alternatives = tuple(rng.sample(others, min(config.n_alternatives, len(others))))
        facts.append(Fact(s, r, o, alternatives, splits[s]))
    return World(config, entities, tuple(facts))


def _object_pool(relation: Relation, triples, entities) -> List[str]:
    """Counterfactuals come from the objects this relation actually uses (e.g. only
    capitals for "capital"); in a world so small that it uses a single one, from
    every entity of the object's kind."""
    used = sorted({o for _, r, o in triples if r == relation.name})
    return used if len(used) > 1 else sorted(entities[relation.object_kind])


def _split_subjects(rng: random.Random, entities, valid_fraction: float) -> Dict[str, str]:
    """Splits each kind's entities, so both splits have every relation."""
    split = {}
    for names in entities.values():
        order = list(names)
        rng.shuffle(order)
        n_valid = max(1, round(valid_fraction * len(order)))
        split.update({n: "valid" if i < n_valid else "train" for i, n in enumerate(order)})
    return split


def _template_words() -> set:
    words = set()
    for r in RELATIONS:
        for t in r.statements + r.questions:
            words.update(w.strip(",.?").lower() for w in t.split())
    return words | set(FIELDS)


class _NameMaker:
    """Unique invented names built from syllables."""

    def __init__(self, rng: random.Random, reserved: set):
        self.rng = rng
        self.used = set(reserved)

    def one(self, stem: bool = False) -> str:
        while True:
            n_syllables = 2 if stem else self.rng.choice((2, 2, 3))
            word = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n_syllables))
            if not stem:
                word += self.rng.choice(_CODAS)
            if word not in self.used:
                self.used.add(word)
                return word.capitalize()

    def many(self, n: int, stem: bool = False) -> Tuple[str, ...]:
        return tuple(self.one(stem) for _ in range(n))
