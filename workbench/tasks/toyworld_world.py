"""The fixed world behind the toyworld corpus: places, people, words, organisations.

Nothing here is random: the data are literals, and the two invented languages' words are produced
by a fixed arithmetic rule from the concept index, so every process on every machine sees the same
world. Proper nouns are single lowercase tokens (``san_francisco``, ``carson_city``).

The attribution case studies read these constants directly, e.g.
``CAPITALS[STATE_OF_CITY["dallas"]] == "austin"`` (Dallas -> Texas -> Austin).
"""

from __future__ import annotations

import itertools

# ---------------------------------------------------------------------------------------------------
# geography: twelve US states, three real non-capital cities each, and the real capital
# ---------------------------------------------------------------------------------------------------

CITIES_BY_STATE: dict[str, tuple[str, ...]] = {
    "texas": ("dallas", "houston", "san_antonio"),
    "california": ("oakland", "los_angeles", "san_francisco"),
    "new_york": ("buffalo", "rochester", "syracuse"),
    "florida": ("miami", "tampa", "orlando"),
    "illinois": ("chicago", "peoria", "rockford"),
    "washington": ("seattle", "spokane", "tacoma"),
    "pennsylvania": ("philadelphia", "pittsburgh", "erie"),
    "ohio": ("cleveland", "cincinnati", "toledo"),
    "michigan": ("detroit", "grand_rapids", "flint"),
    "nevada": ("las_vegas", "reno", "henderson"),
    "arizona": ("tucson", "mesa", "flagstaff"),
    "louisiana": ("new_orleans", "shreveport", "lafayette"),
}
CAPITALS: dict[str, str] = {
    "texas": "austin",
    "california": "sacramento",
    "new_york": "albany",
    "florida": "tallahassee",
    "illinois": "springfield",
    "washington": "olympia",
    "pennsylvania": "harrisburg",
    "ohio": "columbus",
    "michigan": "lansing",
    "nevada": "carson_city",
    "arizona": "phoenix",
    "louisiana": "baton_rouge",
}
STATES: tuple[str, ...] = tuple(CITIES_BY_STATE)
CITIES: tuple[str, ...] = tuple(city for cities in CITIES_BY_STATE.values() for city in cities)
STATE_OF_CITY: dict[str, str] = {city: state for state, cities in CITIES_BY_STATE.items() for city in cities}

# ---------------------------------------------------------------------------------------------------
# people and professions (every profession starts with a consonant, so "is a <profession>" reads right)
# ---------------------------------------------------------------------------------------------------

PROFESSIONS: dict[str, str] = {
    "alice": "doctor", "bob": "teacher", "carol": "lawyer", "dave": "chef",
    "eve": "pilot", "frank": "farmer", "grace": "nurse", "henry": "baker",
    "irene": "dentist", "jack": "painter", "kate": "writer", "leo": "singer",
    "maria": "tailor", "nick": "plumber", "olivia": "judge", "paul": "carpenter",
    "quinn": "pharmacist", "rosa": "sailor", "sam": "mechanic", "tina": "librarian",
    "uma": "scientist", "victor": "banker", "wendy": "florist", "zoe": "journalist",
}  # fmt: skip
PEOPLE: tuple[str, ...] = tuple(PROFESSIONS)

# ---------------------------------------------------------------------------------------------------
# antonyms, in English and in two invented languages
# ---------------------------------------------------------------------------------------------------

ANTONYM_PAIRS: tuple[tuple[str, str], ...] = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"),
    ("light", "dark"), ("young", "old"), ("tall", "short"), ("rich", "poor"),
    ("early", "late"), ("hard", "soft"), ("loud", "quiet"), ("strong", "weak"),
    ("full", "empty"), ("open", "closed"), ("wet", "dry"), ("clean", "dirty"),
    ("thick", "thin"), ("high", "low"), ("near", "far"), ("wide", "narrow"),
    ("true", "false"), ("sweet", "sour"), ("day", "night"), ("win", "lose"),
)  # fmt: skip
# Both directions are facts: the opposite of hot is cold and the opposite of cold is hot.
ANTONYMS: dict[str, str] = {**dict(ANTONYM_PAIRS), **{b: a for a, b in ANTONYM_PAIRS}}
CONCEPTS: tuple[str, ...] = tuple(word for pair in ANTONYM_PAIRS for word in pair)

LANGUAGES: tuple[str, ...] = ("vel", "zor")
# Each invented language has its own frame words for its antonym sentences (see toyworld.py).
VEL_FRAME_WORDS: tuple[str, ...] = ("nu", "ti", "mo", "ona", "selae", "kivai")
ZOR_FRAME_WORDS: tuple[str, ...] = ("zar", "krom", "dul", "og", "thrak", "ux")

# ---------------------------------------------------------------------------------------------------
# organisations and acronyms: every first x middle x last combination; initials differ within a list,
# so an acronym names exactly one organisation. Acronym letters are UPPERCASE tokens, distinct from
# the lowercase words (the article "a" is not the letter "A").
# ---------------------------------------------------------------------------------------------------

ORG_FIRST_WORDS = ("national", "international", "american", "global", "united", "federal", "royal", "central")
ORG_MIDDLE_WORDS = ("science", "health", "trade", "energy", "music", "weather", "digital", "banking")
ORG_LAST_WORDS = ("association", "foundation", "group", "council", "society", "institute", "bureau", "league")
ORGANISATIONS: tuple[tuple[str, str, str], ...] = tuple(
    itertools.product(ORG_FIRST_WORDS, ORG_MIDDLE_WORDS, ORG_LAST_WORDS)
)


def acronym_of(words: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(word[0].upper() for word in words)


# ---------------------------------------------------------------------------------------------------
# arithmetic word problems
# ---------------------------------------------------------------------------------------------------

MAX_NUMBER = 40  # numbers 0..40 are single tokens; problems keep every quantity in that range
NUMBERS: tuple[str, ...] = tuple(str(i) for i in range(MAX_NUMBER + 1))
OBJECTS: tuple[str, ...] = ("apples", "pears", "books", "coins", "cards", "stamps")
# Irrelevant clauses (GSM-Symbolic's "NoOp"); {p3} is any person.
NOOP_CLAUSES: tuple[str, ...] = (
    "the sky is blue .",
    "{p3} likes tea .",
    "the weather is nice today .",
    "{p3} has a red hat .",
)

# ---------------------------------------------------------------------------------------------------
# templates: the phrasings of every kind of example (rendered by toyworld.py)
# ---------------------------------------------------------------------------------------------------

# kind -> (answer slot, templates); the last template of each kind is the held-out (test) one. A
# held-out phrasing recombines words the train phrasings use (new order, new combination), so the test
# split measures generalisation across phrasings, not the impossible guessing of never-seen words.
# Arithmetic templates start with their operation, "+" or "-", and mark clause starts with {noop}.
TEMPLATE_TEXTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "city_state": ("state", (
        "{city} is a city in the state of",
        "the city of {city} is located in",
        "which state is {city} in ?",
        "{city} is located in the state of",
    )),
    "capital": ("capital", (
        "the capital of {state} is",
        "the capital city of the state of {state} is",
        "what is the capital of {state} ?",
        "what is the capital city of {state} ?",
    )),
    "two_hop": ("capital", (
        "the capital of the state containing {city} is",
        "{city} is in a state whose capital is",
        "what is the capital of the state where {city} is ?",
        "what is the capital of the state containing {city} ?",
    )),
    "profession": ("profession", (
        "{person} works as a",
        "the job of {person} is",
        "what does {person} do for a living ? {person} is a",
        "what is the job of {person} ? {person} is a",
    )),
    "antonym_en": ("antonym", (
        "the opposite of {word} is",
        "{word} is the opposite of",
        "the antonym of {word} is",
        "what is the opposite of {word} ?",
    )),
    "antonym_vel": ("antonym", (  # vel frame: "nu selae ti X mo" ~ "the opposite of X is"
        "nu selae ti {word} mo",
        "{word} mo nu selae ti",
        "kivai selae ti {word} ?",
        "kivai nu selae ti {word} mo",
    )),
    "antonym_zor": ("antonym", (  # zor has its own frame words and puts the word first or second
        "{word} og krom dul",
        "krom og {word} thrak",
        "zar {word} krom ux ?",
        "krom og {word} dul",
    )),
    "translation": ("foreign", (
        "the {lang} word for {word} is",
        "{word} in {lang} is",
        "how do you say {word} in {lang} ? you say",
        "what is the {lang} word for {word} ?",
    )),
    "acronym": ("letters", (
        "the acronym of {org} is",
        "the {org} (",
        "{org} is known as",
        "what is the acronym of {org} ?",
    )),
    "arithmetic": ("result", (
        "+ {noop} {p1} has {a} {obj} . {noop} {p2} gives {p1} {b} {obj} . {noop} how many {obj} does {p1} have ?",
        "- {noop} {p1} has {a} {obj} . {noop} {p1} gives {p2} {b} {obj} . {noop} how many {obj} does {p1} have ?",
        "+ {noop} {p1} has {a} {obj} . {noop} {p2} has {b} {obj} . {noop} how many {obj} do {p1} and {p2} have ?",
        "+ {noop} {p2} gives {p1} {a} {obj} . {noop} {p1} has {b} {obj} . {noop} how many {obj} does {p1} have ?",
    )),
}  # fmt: skip
KINDS: tuple[str, ...] = tuple(TEMPLATE_TEXTS)
PUNCTUATION: tuple[str, ...] = (".", ",", "?", "(")


# ---------------------------------------------------------------------------------------------------
# the invented vocabularies, generated by a fixed rule
# ---------------------------------------------------------------------------------------------------

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_HARSH_CONSONANTS = "gkztdv"
_HARSH_ENDINGS = "gkdxzt"


def _vel_shape(j: int) -> str:
    """Consonant-vowel-consonant-vowel, soft sounding: ``lomi``, ``tesa``."""
    c1, rest = divmod(j, 5 * 14 * 5)
    v1, rest = divmod(rest, 14 * 5)
    c2, v2 = divmod(rest, 5)
    return _CONSONANTS[c1] + _VOWELS[v1] + _CONSONANTS[c2] + _VOWELS[v2]


def _zor_shape(j: int) -> str:
    """Consonant-vowel-r-consonant, harsh sounding: ``kurg``, ``zarx``."""
    c1, rest = divmod(j, 5 * 6)
    v, c2 = divmod(rest, 6)
    return _HARSH_CONSONANTS[c1] + _VOWELS[v] + "r" + _HARSH_ENDINGS[c2]


def _invented_words(shape, space: int, stride: int, offset: int, reserved: set[str]) -> dict[str, str]:
    """English concept -> invented word: walk the word space with a stride coprime to its size (so no
    word repeats), skipping words that already mean something in the corpus."""
    words: dict[str, str] = {}
    step = 0
    for concept in CONCEPTS:
        while True:
            word = shape((offset + step * stride) % space)
            step += 1
            if word not in reserved:
                break
        words[concept] = word
        reserved.add(word)
    return words


def english_words() -> set[str]:
    """Every world word that is not invented (templates add their own words on top of these)."""
    words = set(STATES) | set(CITIES) | set(CAPITALS.values()) | set(PROFESSIONS) | set(PROFESSIONS.values())
    words |= set(CONCEPTS) | set(LANGUAGES) | set(NUMBERS) | set(OBJECTS)
    words |= set(ORG_FIRST_WORDS) | set(ORG_MIDDLE_WORDS) | set(ORG_LAST_WORDS)
    words |= {w for clause in NOOP_CLAUSES for w in clause.split() if not w.startswith("{")}
    return words


def template_words() -> set[str]:
    return {w for _, texts in TEMPLATE_TEXTS.values() for text in texts for w in text.split() if w[0] != "{"}


# An invented word equal to any other word of the corpus would give one token two meanings.
_RESERVED = english_words() | template_words()
VEL: dict[str, str] = _invented_words(
    _vel_shape, 14 * 5 * 14 * 5, stride=397, offset=11, reserved=set(_RESERVED)
)
ZOR: dict[str, str] = _invented_words(_zor_shape, 6 * 5 * 6, stride=67, offset=5, reserved=set(_RESERVED))
TRANSLATIONS: dict[str, dict[str, str]] = {"vel": VEL, "zor": ZOR}
