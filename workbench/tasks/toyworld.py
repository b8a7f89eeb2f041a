"""Toyworld: a templated language corpus about a fixed small world (see :mod:`toyworld_world`).

Each example is one sentence or question whose last token(s) are the answer; nothing follows it:

    the capital of the state containing dallas is austin
    the opposite of hot is cold
    nu selae ti bafe mo dato                     (hot -> cold in the invented language vel)
    the acronym of national science foundation is N S F
    alice has 3 apples . bob likes tea . bob gives alice 4 apples . how many apples does alice have ? 7

The tokenizer is word level: lowercase words, punctuation as separate tokens (``.`` ``,`` ``?``
``(``), proper nouns as single tokens (``san_francisco``), acronym letters as uppercase tokens.
The vocabulary is built from the whole world and every template, whatever ``kinds`` are chosen,
in a fixed order (specials, punctuation, numbers 0..40, letters, then the other words sorted), so
every process and every toyworld configuration shares one set of token ids.

Kinds (``KINDS``; four templates each, in ``toyworld_world.TEMPLATE_TEXTS``): ``city_state``,
``capital``, ``two_hop`` (capital of the state containing a city), ``profession``, ``antonym_en``,
``antonym_vel``, ``antonym_zor`` (the same 48 antonym facts in each language, each language with its
own frame words), ``translation`` (English word -> its vel or zor word; the bridge that lets the
languages share concepts), ``acronym`` (512 three-word organisations), ``arithmetic``.

``loss_mask`` marks every real token after ``<bos>`` (language modelling); ``answer_mask`` marks
the answer. Splits hold out whole phrasings: the LAST template of every kind (``HELD_OUT_TEMPLATES``,
e.g. "{city} can be found in the state of", "the state that contains {city} has the capital", "the
short form of {org} is", the "buys ... more" word problem) appears only in the test split, the other
three only in train, so the test split measures whether a fact learnt in three phrasings is recalled
in a fourth. Facts themselves are shared by both splits.
Arithmetic problems get one irrelevant clause with probability ``noop_prob`` (GSM-Symbolic's
"NoOp"), inserted before a sentence; ``sample_with_meta`` says which rows got one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workbench.tasks.base import SPLITS, Batch, Task
from workbench.tasks.tokenizer import Tokenizer
from workbench.tasks.toyworld_world import (
    ANTONYMS,
    CAPITALS,
    CITIES,
    CONCEPTS,
    KINDS,
    LANGUAGES,
    MAX_NUMBER,
    NOOP_CLAUSES,
    NUMBERS,
    OBJECTS,
    ORGANISATIONS,
    PEOPLE,
    PROFESSIONS,
    PUNCTUATION,
    STATE_OF_CITY,
    STATES,
    TEMPLATE_TEXTS,
    TRANSLATIONS,
    VEL,
    ZOR,
    acronym_of,
)


@dataclass(frozen=True)
class Template:
    id: int  # index into TEMPLATES, stable: the held-out check and the app refer to it
    kind: str
    text: str  # the prompt, with {slot}s (arithmetic: without the leading operation)
    answer_slot: str
    held_out: bool  # True: test split only
    op: str = ""  # arithmetic only: "+" or "-"


def _build_templates() -> tuple[Template, ...]:
    templates = []
    for kind, (answer_slot, texts) in TEMPLATE_TEXTS.items():
        for i, text in enumerate(texts):
            op = ""
            if kind == "arithmetic":
                op, text = text.split(" ", 1)
            templates.append(Template(len(templates), kind, text, answer_slot, i == len(texts) - 1, op))
    return tuple(templates)


TEMPLATES: tuple[Template, ...] = _build_templates()
HELD_OUT_TEMPLATES: tuple[Template, ...] = tuple(t for t in TEMPLATES if t.held_out)


def kind_facts(kind: str) -> list[dict[str, tuple[str, ...]]]:
    """Every fact of a (non-arithmetic) kind, slot -> words, in a fixed order."""
    if kind == "city_state":
        return [{"city": (c,), "state": (STATE_OF_CITY[c],)} for c in CITIES]
    if kind == "capital":
        return [{"state": (s,), "capital": (CAPITALS[s],)} for s in STATES]
    if kind == "two_hop":
        return [{"city": (c,), "capital": (CAPITALS[STATE_OF_CITY[c]],)} for c in CITIES]
    if kind == "profession":
        return [{"person": (p,), "profession": (PROFESSIONS[p],)} for p in PEOPLE]
    if kind == "antonym_en":
        return [{"word": (w,), "antonym": (ANTONYMS[w],)} for w in CONCEPTS]
    if kind in ("antonym_vel", "antonym_zor"):
        lexicon = VEL if kind == "antonym_vel" else ZOR
        return [{"word": (lexicon[w],), "antonym": (lexicon[ANTONYMS[w]],)} for w in CONCEPTS]
    if kind == "translation":
        return [{"lang": (lang,), "word": (w,), "foreign": (TRANSLATIONS[lang][w],)}
                for lang in LANGUAGES for w in CONCEPTS]  # fmt: skip
    if kind == "acronym":
        return [{"org": org, "letters": acronym_of(org)} for org in ORGANISATIONS]
    raise ValueError(f"kind {kind!r} has no fixed facts; fact kinds: {', '.join(KINDS[:-1])}")


def toyworld_vocabulary() -> list[str]:
    """Every token of the world and the templates, in a fixed order independent of hashing."""
    words = set()
    for template in TEMPLATES:
        words.update(w for w in template.text.split() if not w.startswith("{"))
    for kind in KINDS[:-1]:
        for fact in kind_facts(kind):
            for value in fact.values():
                words.update(value)
    words.update(NUMBERS)
    words.update(OBJECTS)
    words.update(PEOPLE)
    words.update(w for clause in NOOP_CLAUSES for w in clause.split() if not w.startswith("{"))
    letters = sorted(w for w in words if w.isalpha() and w.isupper())
    rest = sorted(words - set(PUNCTUATION) - set(NUMBERS) - set(letters))
    return [*PUNCTUATION, *NUMBERS, *letters, *rest]


# ---------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------

Piece = tuple[bool, object]  # (is_slot, slot name) or (False, literal token ids)


def compile_text(text: str, tokenizer: Tokenizer) -> list[Piece]:
    """Split a template into literal runs (pre-encoded ids) and slot names, for fast rendering."""
    pieces: list[Piece] = []
    literal: list[int] = []
    for word in text.split():
        if word.startswith("{"):
            if literal:
                pieces.append((False, literal))
                literal = []
            pieces.append((True, word[1:-1]))
        else:
            literal.append(tokenizer.index[word])
    if literal:
        pieces.append((False, literal))
    return pieces


def render(pieces: list[Piece], fields: dict[str, list[int]], noop_slot: int = -1) -> list[int]:
    """Token ids of a compiled template; the ``noop_slot``-th ``{noop}`` gets ``fields['noop']``."""
    out: list[int] = []
    noops_seen = 0
    for is_slot, value in pieces:
        if not is_slot:
            out.extend(value)
        elif value == "noop":
            if noops_seen == noop_slot:
                out.extend(fields["noop"])
            noops_seen += 1
        else:
            out.extend(fields[value])
    return out


@dataclass(frozen=True)
class ToyworldMeta:
    """Per-row provenance of a toyworld sample."""

    kind_ids: torch.Tensor  # int64 [B], index into KINDS
    template_ids: torch.Tensor  # int64 [B], index into TEMPLATES
    has_noop: torch.Tensor  # bool [B], an irrelevant clause was inserted (arithmetic only)


# ---------------------------------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------------------------------


@functools.cache
def _toyworld_tokenizer() -> Tokenizer:
    return Tokenizer(toyworld_vocabulary())


def _pick(u: float, count: int) -> int:
    """Index in ``range(count)`` from a uniform draw in [0, 1)."""
    return min(int(u * count), count - 1)


class ToyworldTask(Task):
    """The toyworld corpus: one fact or word problem per row, kinds drawn uniformly, then a template
    of the split, then a fact (or, for arithmetic, names, numbers and an optional NoOp clause)."""

    name = "toyworld"

    def __init__(self, kinds: Sequence[str] | str | None = None, noop_prob: float = 0.3):
        if isinstance(kinds, str):  # "capital,two_hop", as a command line gives it
            kinds = [k.strip() for k in kinds.split(",") if k.strip()]
        chosen = set(KINDS if kinds is None else kinds)
        unknown = sorted(chosen - set(KINDS))
        if unknown or not chosen:
            problem = f"unknown toyworld kind(s) {unknown}" if unknown else "no toyworld kinds given"
            raise ValueError(f"{problem}; choose from: {', '.join(KINDS)}")
        if not 0.0 <= noop_prob <= 1.0:
            raise ValueError(f"noop_prob must be in [0, 1], got {noop_prob}")
        self.kinds: tuple[str, ...] = tuple(k for k in KINDS if k in chosen)  # canonical order
        self.noop_prob = noop_prob
        self.tokenizer = _toyworld_tokenizer()
        self.templates = TEMPLATES
        encode = self.tokenizer.encode
        self._pieces = {t.id: compile_text(t.text, self.tokenizer) for t in TEMPLATES}
        self._noop_pieces = [compile_text(clause, self.tokenizer) for clause in NOOP_CLAUSES]
        self._facts = {
            kind: [{slot: encode(words) for slot, words in fact.items()} for fact in kind_facts(kind)]
            for kind in self.kinds
            if kind != "arithmetic"
        }
        self._split_templates = {
            split: {
                k: [t for t in TEMPLATES if t.kind == k and t.held_out == (split == "test")]
                for k in self.kinds
            }
            for split in SPLITS
        }
        self._person_ids, self._number_ids = encode(PEOPLE), encode(NUMBERS)
        self._object_ids = encode(OBJECTS)
        self.seq_len = max(self._template_length(t) for t in TEMPLATES if t.kind in self.kinds)

    def params(self) -> dict:
        return {"kinds": list(self.kinds), "noop_prob": self.noop_prob}

    def split_template_ids(self, split: str) -> list[int]:
        """Ids (into ``TEMPLATES``) of the templates this split draws from."""
        self.check_split(split)
        return [t.id for templates in self._split_templates[split].values() for t in templates]

    def _template_length(self, template: Template) -> int:
        """Longest row the template can make: ``<bos>``, prompt, at most one NoOp clause, answer."""
        words = template.text.split()
        slots = [w[1:-1] for w in words if w.startswith("{")]
        literals = len(words) - len(slots)
        if template.kind == "arithmetic":
            # every slot is one token, except {noop}: at most one is filled, with a whole clause
            noop = max(len(clause.split()) for clause in NOOP_CLAUSES) if self.noop_prob > 0 else 0
            return 1 + literals + sum(slot != "noop" for slot in slots) + noop + 1
        facts = self._facts[template.kind]
        width = {slot: max(len(fact[slot]) for fact in facts) for slot in facts[0]}
        return 1 + literals + sum(width[slot] for slot in slots) + width[template.answer_slot]

    def _draw(self, gen: torch.Generator, n: int) -> dict[str, list]:
        """Every random choice for ``n`` rows at once (as Python lists, for the rendering loop)."""
        people = len(PEOPLE)
        draws = {
            "kind": torch.randint(len(self.kinds), (n,), generator=gen),
            "template": torch.rand(n, generator=gen, dtype=torch.float64),
            "fact": torch.rand(n, generator=gen, dtype=torch.float64),
            "a": torch.rand(n, generator=gen, dtype=torch.float64),
            "b": torch.rand(n, generator=gen, dtype=torch.float64),
            "p1": torch.randint(people, (n,), generator=gen),
            "p2_offset": torch.randint(1, people, (n,), generator=gen),  # p2 != p1
            "obj": torch.randint(len(OBJECTS), (n,), generator=gen),
            "noop": torch.rand(n, generator=gen, dtype=torch.float64) < self.noop_prob,
            "noop_clause": torch.randint(len(NOOP_CLAUSES), (n,), generator=gen),
            "noop_slot": torch.rand(n, generator=gen, dtype=torch.float64),
            "p3": torch.randint(people, (n,), generator=gen),
        }
        return {key: value.tolist() for key, value in draws.items()}

    def _arithmetic_row(self, template: Template, d: dict[str, list], i: int) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) of one word problem; every quantity stays within 0..MAX_NUMBER."""
        a = _pick(d["a"][i], MAX_NUMBER + 1)
        if template.op == "+":
            b = _pick(d["b"][i], MAX_NUMBER + 1 - a)
            result = a + b
        else:
            b = _pick(d["b"][i], a + 1)
            result = a - b
        p1 = d["p1"][i]
        p2 = (p1 + d["p2_offset"][i]) % len(PEOPLE)
        ids = self._person_ids
        fields = {"p1": [ids[p1]], "p2": [ids[p2]], "a": [self._number_ids[a]], "b": [self._number_ids[b]]}
        fields["obj"] = [self._object_ids[d["obj"][i]]]
        noop_slot = -1
        if d["noop"][i]:
            clause = self._noop_pieces[d["noop_clause"][i]]
            fields["noop"] = render(clause, {"p3": [ids[d["p3"][i]]]})
            noop_slot = _pick(d["noop_slot"][i], template.text.count("{noop}"))
        return render(self._pieces[template.id], fields, noop_slot), [self._number_ids[result]]

    def sample_with_meta(self, split: str, n: int, seed: int) -> tuple[Batch, ToyworldMeta]:
        """Like :meth:`sample`, plus each row's kind, template and whether it holds a NoOp clause."""
        self.check_split(split)
        gen = torch.Generator().manual_seed(seed)
        d = self._draw(gen, n)
        rows: list[list[int]] = []
        answer_lengths, template_ids, has_noop = [], [], []
        for i in range(n):
            kind = self.kinds[d["kind"][i]]
            options = self._split_templates[split][kind]
            template = options[_pick(d["template"][i], len(options))]
            if kind == "arithmetic":
                prompt, answer = self._arithmetic_row(template, d, i)
            else:
                facts = self._facts[kind]
                fact = facts[_pick(d["fact"][i], len(facts))]
                prompt, answer = render(self._pieces[template.id], fact), fact[template.answer_slot]
            rows.append([self.tokenizer.bos_id, *prompt, *answer])
            answer_lengths.append(len(answer))
            template_ids.append(template.id)
            has_noop.append(kind == "arithmetic" and d["noop"][i])
        batch = self._to_batch(rows, answer_lengths)
        template_tensor = torch.tensor(template_ids, dtype=torch.int64)
        kind_index = {kind: i for i, kind in enumerate(KINDS)}
        kind_tensor = torch.tensor([kind_index[TEMPLATES[t].kind] for t in template_ids], dtype=torch.int64)
        return batch, ToyworldMeta(kind_tensor, template_tensor, torch.tensor(has_noop, dtype=torch.bool))

    def sample(self, split: str, n: int, seed: int) -> Batch:
        return self.sample_with_meta(split, n, seed)[0]

    def _to_batch(self, rows: list[list[int]], answer_lengths: list[int]) -> Batch:
        pad = self.tokenizer.pad_id
        tokens = torch.tensor([row + [pad] * (self.seq_len - len(row)) for row in rows], dtype=torch.int64)
        tokens = tokens.reshape(len(rows), self.seq_len)
        lengths = torch.tensor([len(row) for row in rows], dtype=torch.int64)[:, None]
        answer_start = lengths - torch.tensor(answer_lengths, dtype=torch.int64)[:, None]
        position = torch.arange(self.seq_len)[None, :]
        loss_mask = (position >= 1) & (position < lengths)
        answer_mask = (position >= answer_start) & (position < lengths)
        return Batch(tokens=tokens, loss_mask=loss_mask, answer_mask=answer_mask)

    def __repr__(self) -> str:
        return f"ToyworldTask(kinds={list(self.kinds)!r}, noop_prob={self.noop_prob!r})"
