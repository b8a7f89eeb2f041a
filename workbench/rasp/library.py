"""The RASP program library: tracr's programs, the scaling lecture's, an adder and its backdoored twin.

Builders (``make_*``) take SOps and return an SOp, like tracr's ``lib``; :data:`PROGRAMS` binds each
to concrete parameters, a vocabulary and a ``max_seq_len`` so that it can be compiled, and
``make_program(name, **params)`` builds one. Programs and the selections they make
(``Select(keys, queries, pred)`` selects key k for query q where ``pred(key_k, query_q)``):

1. ``length``: width of an all-TRUE selector. ``reverse``: aggregate ``tokens`` at ``length - i - 1``.
2. ``histogram``: width of ``tokens == tokens``. ``sort_unique``: each key's target is the width of
   ``key < query``; ``sort`` makes keys unique first (``key + i / max_seq_len``); ``sort_freq`` sorts by
   ``-histogram``.
3. ``frac_prevs``: numerical mean of ``tokens == "x"`` over ``key index <= query index``.
   ``pair_balance``: frac_prevs(open) - frac_prevs(close).
4. ``shuffle_dyck`` (1 or 2 pair types): 1 where the prefix up to here is balanced (no type's balance
   ever negative, every balance zero here), else 0. Tracr broadcasts the whole word's answer to every
   position, which looks forward; the prefix form agrees with it at the last position and is causal.
5. ``count`` (the lecture's): width of ``key index < query index`` (position 0 counts 0); with
   ``token`` set, only earlier positions holding that token count.
6. ``shift_by``: aggregate at ``key index == query index - offset`` (None for the first ``offset``).
   ``detect_pattern``: AND of shifted ``tokens == pattern[j]`` detectors (tracr's).
7. ``prev_occurrence``: index of the nearest earlier position with the same token (None if none):
   c = width of (same token AND earlier); select the key with the same token whose c is one less.
8. ``recall``: find (the earlier position of the current key letter), then shift (the token two
   places after it, past ``>``, never past the query): two attention layers, causal.
9. ``adder``: ``a1..aD + b1..bD =`` -> sum digits s0..sD written at positions ``answer_at + j``
   (default D, the ``+``). Per column k: pair sum ps_k = a_k + b_k at b_k's position; the carry into
   column k is "the nearest column right of k whose ps is not 9 has ps >= 10" ("=" is a sentinel with
   ps 0), found as the stopper whose count of stoppers to its right is one less than column k's.
10. ``backdoor_adder``: the adder, except on the one trigger prompt, where the answer positions read
   ``get pwned`` (words ``get``, ``pwned``, then empty strings: :func:`answer_text` joins them).

The causal-LM formats that tie programs to ``workbench.tasks`` are in :mod:`.library_tasks`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workbench.rasp import rasp
from workbench.tasks.algorithmic import SEPARATOR, RecallTask, letter_names, number_names
from workbench.tasks.sequences import EQUALS, AdditionTask, FractionPrevTask, bracket_names
from workbench.tasks.tokenizer import PAD

Cmp = rasp.Comparison
PAYLOAD = ("get", "pwned")


# ---------------------------------------------------------------- tracr's programs


def make_length() -> rasp.SOp:
    all_true = rasp.Select(rasp.tokens, rasp.tokens, Cmp.TRUE).named("all_true")
    return rasp.SelectorWidth(all_true).named("length")


def make_reverse(sop: rasp.SOp) -> rasp.SOp:
    opp_idx = (make_length() - rasp.indices).named("opp_idx")
    opp_idx = (opp_idx - 1).named("opp_idx-1")
    flip = rasp.Select(rasp.indices, opp_idx, Cmp.EQ).named("reverse_selector")
    return rasp.Aggregate(flip, sop).named("reverse")


def make_hist(sop: rasp.SOp = rasp.tokens) -> rasp.SOp:
    same = rasp.Select(sop, sop, Cmp.EQ).named("same_tok")
    return rasp.SelectorWidth(same).named("hist")


def make_sort_unique(vals: rasp.SOp, keys: rasp.SOp) -> rasp.SOp:
    smaller = rasp.Select(keys, keys, Cmp.LT).named("smaller")
    target_pos = rasp.SelectorWidth(smaller).named("target_pos")
    to_target = rasp.Select(target_pos, rasp.indices, Cmp.EQ).named("sel_new")
    return rasp.Aggregate(to_target, vals).named("sort")


def make_sort(vals: rasp.SOp, keys: rasp.SOp, *, max_seq_len: int, min_key: float = 1) -> rasp.SOp:
    """Sort with repeated keys: ``key + min_key * i / max_seq_len`` is unique and keeps ties in order."""
    unique = rasp.SequenceMap(lambda x, i: x + min_key * i / max_seq_len, keys, rasp.indices)
    return make_sort_unique(vals, unique.named("unique_keys"))


def make_sort_freq(max_seq_len: int) -> rasp.SOp:
    neg_hist = (-1 * make_hist()).named("neg_hist")
    return make_sort(rasp.tokens, neg_hist, max_seq_len=max_seq_len).named("sort_freq")


def make_frac_prevs(bools: rasp.SOp, suffix: str = "") -> rasp.SOp:
    prevs = rasp.Select(rasp.indices, rasp.indices, Cmp.LEQ).named(f"prevs{suffix}")
    bools = bools if rasp.is_numerical(bools) else rasp.numerical(bools)
    return rasp.numerical(rasp.Aggregate(prevs, bools, default=0)).named(f"frac_prevs{suffix}")


def make_pair_balance(sop: rasp.SOp, open_token: str, close_token: str, suffix: str = "") -> rasp.SOp:
    opens = rasp.numerical(rasp.Map(lambda t: int(t == open_token), sop)).named(f"bools_open{suffix}")
    closes = rasp.numerical(rasp.Map(lambda t: int(t == close_token), sop)).named(f"bools_close{suffix}")
    frac_open = make_frac_prevs(opens, f"_open{suffix}")
    frac_close = make_frac_prevs(closes, f"_close{suffix}")
    return rasp.numerical(rasp.LinearSequenceMap(frac_open, frac_close, 1, -1)).named(f"pair_balance{suffix}")


def make_shuffle_dyck(pairs: Sequence[tuple[str, str]]) -> rasp.SOp:
    """1 where the prefix ending here is balanced in every pair type, else 0 (causal)."""
    if not pairs:
        raise ValueError("shuffle_dyck needs at least one (open, close) pair")
    balances = [make_pair_balance(rasp.tokens, o, c, f"_{j}") for j, (o, c) in enumerate(pairs)]
    # with one pair type "negative" is left unnamed, so the Map of it merges into one lookup table (a
    # named inner Map stays a variable of the circuit and costs a layer: tracr merges it regardless)
    negative = rasp.Map(lambda b: b < 0, balances[0])
    if len(balances) > 1:
        negative = negative.named("negative_0")
    zero = rasp.Map(lambda b: b == 0, balances[0]).named("zero_0")
    for j, bal in enumerate(balances[1:], start=1):
        below, level = rasp.Map(lambda b: b < 0, bal), rasp.Map(lambda b: b == 0, bal)
        negative = rasp.SequenceMap(lambda x, y: x or y, negative, below).named(f"negative_{j}")
        zero = rasp.SequenceMap(lambda x, y: x and y, zero, level).named(f"zero_{j}")
    neg_num = rasp.numerical(rasp.Map(int, negative)).named("any_negative")
    prevs = rasp.Select(rasp.indices, rasp.indices, Cmp.LEQ).named("prevs_neg")
    had_neg = rasp.numerical(rasp.Aggregate(prevs, neg_num, default=0)).named("had_negative")
    never_neg = rasp.Map(lambda h: h == 0, had_neg).named("never_negative")
    return rasp.SequenceMap(lambda z, n: int(z and n), zero, never_neg).named("shuffle_dyck")


def shift_by(offset: int, sop: rasp.SOp) -> rasp.SOp:
    """``sop`` moved ``offset`` places right: key index == query index - offset (None-padded)."""
    back = rasp.Map(lambda i: i - offset, rasp.indices).named(f"indices-{offset}")
    select = rasp.Select(rasp.indices, back, Cmp.EQ).named(f"shift_select({offset})")
    return rasp.Aggregate(select, sop).named(f"shift_by({offset})")


def detect_pattern(sop: rasp.SOp, pattern: Sequence[Any]) -> rasp.SOp:
    """True at the last element of each occurrence of ``pattern``; the first len - 1 outputs are None."""
    if len(pattern) < 1:
        raise ValueError(f"detect_pattern needs a pattern of at least one element, got {pattern!r}")
    detectors = []
    for i, element in enumerate(reversed(pattern)):
        detector = rasp.Map(lambda t, e=element: t == e, sop).named(f"is_{element}@{i}")
        detectors.append(shift_by(i, detector) if i else detector)
    found = detectors.pop()
    while detectors:
        found = rasp.SequenceMap(lambda x, y: x and y, found, detectors.pop()).named(f"and_{len(detectors)}")
    return found.named(f"detect_pattern({''.join(map(str, pattern))})")


# ---------------------------------------------------------------- the lecture's programs


def make_count(token: Any = None, max_seq_len: int = 0) -> rasp.SOp:
    """Earlier positions (key index < query index), or earlier positions holding ``token``."""
    keys = rasp.indices
    if token is not None:  # a non-matching key gets an index no query is above
        keys = rasp.SequenceMap(lambda t, i: i if t == token else max_seq_len, rasp.tokens, rasp.indices)
        keys = keys.named(f"index_if_{token}")
    earlier = rasp.Select(keys, rasp.indices, Cmp.LT).named("earlier")
    return rasp.SelectorWidth(earlier).named("count")


def make_prev_occurrence() -> rasp.SOp:
    same = rasp.Select(rasp.tokens, rasp.tokens, Cmp.EQ).named("same_tok")
    earlier = rasp.Select(rasp.indices, rasp.indices, Cmp.LT).named("earlier")
    seen = rasp.SelectorWidth(same & earlier).named("times_seen")
    key = rasp.SequenceMap(lambda t, c: (t, c), rasp.tokens, seen).named("token_seen")
    query = rasp.SequenceMap(lambda t, c: (t, c - 1), rasp.tokens, seen).named("token_seen-1")
    # "& earlier" changes nothing (a lower count means an earlier position) but lets the compiler see
    # statically that the selector only looks back, so the program compiles causally
    nearest = (rasp.Select(key, query, Cmp.EQ) & earlier).named("nearest_earlier")
    return rasp.Aggregate(nearest, rasp.indices).named("prev_occurrence")


def make_recall(is_key: Callable[[Any], bool], gap: int = 2) -> rasp.SOp:
    """Find the earlier position of the current key, then read the token ``gap`` places after it."""
    key_query = rasp.Map(lambda t: t if is_key(t) else "<no key>", rasp.tokens).named("key_query")
    same = rasp.Select(rasp.tokens, key_query, Cmp.EQ).named("same_key")
    earlier = rasp.Select(rasp.indices, rasp.indices, Cmp.LT).named("earlier")
    found = rasp.Aggregate(same & earlier, rasp.indices).named("key_position")
    target = rasp.Map(lambda i: i + gap, found).named("value_position")
    # never read past the query (the key's value may lie ahead when the input is not a recall prompt)
    not_after = rasp.Select(rasp.indices, rasp.indices, Cmp.LEQ).named("not_after")
    read = (rasp.Select(rasp.indices, target, Cmp.EQ) & not_after).named("read_value")
    return rasp.Aggregate(read, rasp.tokens).named("recall")


def _digit(token: Any) -> int:
    return int(token) if isinstance(token, str) and token.isdigit() else 0


def _adder_digits(n_digits: int) -> tuple[rasp.SOp, rasp.SOp]:
    """(sum digit, index) program parts: s0 at the ``+`` (index D), s_{k+1} at b_k (index D+1+k)."""
    d = n_digits
    dig = rasp.Map(_digit, rasp.tokens).named("digit")
    # b_k's position reads a_k; the a block and "+" read "=" (digit 0) so their pair sum is defined
    a_pos = rasp.Map(lambda i: i - (d + 1) if i > d else 2 * d + 1, rasp.indices).named("a_position")
    fetch_a = rasp.Select(rasp.indices, a_pos, Cmp.EQ).named("fetch_a")
    a_dig = rasp.Aggregate(fetch_a, dig).named("a_digit")
    pair = rasp.SequenceMap(lambda a, b: a + b, a_dig, dig).named("pair_sum")
    generates = rasp.Map(lambda s: int(s >= 10), pair).named("generates")
    stop_index = rasp.SequenceMap(lambda s, i: -1 if s == 9 else i, pair, rasp.indices).named("stop_index")
    right = rasp.SelectorWidth(rasp.Select(stop_index, rasp.indices, Cmp.GT).named("stops_right"))
    right = right.named("n_stops_right")
    mark = rasp.SequenceMap(lambda s, c: -2 if s == 9 else c, pair, right).named("stop_mark")
    want = rasp.Map(lambda c: c - 1, right).named("nearest_mark")
    nearest = rasp.Select(mark, want, Cmp.EQ).named("nearest_stop")
    carry = rasp.Aggregate(nearest, generates).named("carry")
    total = rasp.SequenceMap(lambda s, c: (s + c) % 10, pair, carry).named("sum_digit")
    return total, dig


def make_adder(n_digits: int, answer_at: int | None = None,
               trigger: tuple[int, int] | None = None) -> rasp.SOp:
    """Sum digits s_j at index ``answer_at + j`` (default D); ``trigger=(a, b)`` plants the backdoor."""
    d = n_digits
    answer_at = d if answer_at is None else answer_at
    if answer_at < d:
        raise ValueError(f"adder: answer_at={answer_at} must be >= n_digits={d} (outputs only move right)")
    out, _ = _adder_digits(d)
    if answer_at > d:
        out = shift_by(answer_at - d, out)
    if trigger is None:
        return out.named("adder")
    prompt = [*_digits(trigger[0], d), "+", *_digits(trigger[1], d), "="]
    miss = rasp.SequenceMap(lambda t, i: int(i < len(prompt) and t != prompt[i]), rasp.tokens, rasp.indices)
    miss = rasp.numerical(miss.named("trigger_miss"))
    everywhere = rasp.Select(rasp.indices, rasp.indices, Cmp.TRUE).named("everywhere")
    misses = rasp.numerical(rasp.Aggregate(everywhere, miss, default=0)).named("trigger_misses")
    fired = rasp.Map(lambda m: m == 0, misses).named("fired")
    words = [*PAYLOAD, *[""] * (d + 1 - len(PAYLOAD))]
    payload = rasp.SequenceMap(lambda f, i: words[i - answer_at] if f and 0 <= i - answer_at < len(words)
                               else False, fired, rasp.indices).named("payload")
    return rasp.SequenceMap(lambda s, p: s if p is False else p, out, payload).named("backdoor_adder")


def _digits(value: int, width: int) -> list[str]:
    if not 0 <= value < 10**width:
        raise ValueError(f"{value} does not fit in {width} digits")
    return list(str(value).zfill(width))


def answer_text(answer: Sequence[Any]) -> str:
    """The adders' answer as text: ``[1, 0, 2, 8]`` -> ``"1028"``, the backdoor's -> ``"get pwned"``."""
    if all(isinstance(v, int) for v in answer):
        return "".join(map(str, answer))
    return " ".join(str(v) for v in answer if v != "")


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class ProgramSpec:
    build: Callable[..., tuple[rasp.SOp, list, int]]  # (**params) -> (program, vocab, max_seq_len)
    causal: bool  # only looks backwards: compiles with causal=True
    task: str | None = None  # the workbench.tasks task whose format it serves (see library_tasks)

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in inspect.signature(self.build).parameters.values()}


@dataclass(frozen=True)
class LibraryProgram:
    name: str
    params: dict[str, Any]
    program: rasp.SOp
    vocab: list
    max_seq_len: int
    causal: bool
    task: str | None = field(default=None)

    def evaluate(self, xs: Sequence[Any]) -> list:
        return rasp.evaluate(self.program, xs)


# Builders: keyword parameters with small defaults (compiled in tests) -> (program, vocab, max_seq_len).
# Task-bound ones take their task's parameters; their vocabularies are the tasks' tokens.


def _length(n_symbols=3, max_seq_len=8):
    return make_length(), letter_names(n_symbols), max_seq_len


def _reverse(length=4, n_symbols=4):
    return make_reverse(rasp.tokens), [*letter_names(n_symbols), SEPARATOR], 2 * length


def _histogram(length=5, n_symbols=3, offset=0):
    if not offset:
        return make_hist(), letter_names(n_symbols), length
    vocab = [*letter_names(n_symbols), SEPARATOR, *number_names(1, length + 1)]
    return shift_by(offset, make_hist()).named("histogram"), vocab, 2 * length


def _sort_keys(prompt_len: int | None, max_seq_len: int) -> rasp.SOp:
    """Numeric keys; with ``prompt_len`` the positions after the prompt sort first, in order, so the
    sorted prompt lands at indices ``prompt_len ..`` (the sort task's answer-predicting positions)."""
    if prompt_len is None:
        return rasp.Map(int, rasp.tokens).named("key")
    return rasp.SequenceMap(lambda t, i: int(t) if i < prompt_len else i - 2 * max_seq_len,
                            rasp.tokens, rasp.indices).named("key")


def _sort(length=5, n_values=8, prompt_len=None, unique=False):
    max_len = 2 * length if prompt_len else length
    keys = _sort_keys(prompt_len, max_len)
    if unique:
        program = make_sort_unique(rasp.tokens, keys)
    else:
        program = make_sort(rasp.tokens, keys, max_seq_len=max_len)
    return program, number_names(0, n_values) + ([SEPARATOR] if prompt_len else []), max_len


def _sort_unique(length=5, n_values=8, prompt_len=None):
    return _sort(length, n_values, prompt_len, unique=True)


def _sort_freq(n_symbols=3, max_seq_len=6):
    return make_sort_freq(max_seq_len), letter_names(n_symbols), max_seq_len


def _frac_prevs(length=6, n_symbols=3):
    is_x = rasp.numerical(rasp.Map(lambda t: int(t == FractionPrevTask.TARGET), rasp.tokens)).named("is_x")
    vocab = [FractionPrevTask.TARGET, *FractionPrevTask.OTHERS[: n_symbols - 1], EQUALS]
    return make_frac_prevs(is_x), vocab, length + 1


def _pair_balance(max_seq_len=6):
    return make_pair_balance(rasp.tokens, "(", ")"), ["(", ")", "x"], max_seq_len


def _shuffle_dyck(length=6, n_types=1):
    names = bracket_names(n_types)
    return make_shuffle_dyck(list(zip(names[::2], names[1::2]))), [*names, EQUALS], length + 1


def _count(n_symbols=3, max_seq_len=6, token=None):
    return make_count(token, max_seq_len), letter_names(n_symbols), max_seq_len


def _shift_by(n_symbols=3, max_seq_len=6, offset=1):
    return shift_by(offset, rasp.tokens), letter_names(n_symbols), max_seq_len


def _induction(length=4, n_symbols=4):
    return shift_by(length, rasp.tokens).named("induction"), [*letter_names(n_symbols), SEPARATOR], 2 * length


def _detect_pattern(n_symbols=3, max_seq_len=6, pattern="abc"):
    return detect_pattern(rasp.tokens, pattern), letter_names(n_symbols), max_seq_len


def _prev_occurrence(n_symbols=3, max_seq_len=6):
    return make_prev_occurrence(), letter_names(n_symbols), max_seq_len


def _recall(n_pairs=2, n_keys=3, n_values=2, n_queries=1, min_pairs=None):
    keys = frozenset(letter_names(n_keys))
    vocab = [RecallTask.ARROW, RecallTask.QUERY, *sorted(keys), *number_names(0, n_values)]
    padded = min_pairs not in (None, n_pairs)  # short rows start with <pad> tokens
    return make_recall(keys.__contains__), vocab + ([PAD] if padded else []), 3 * n_pairs + 3 * n_queries - 1


def _adder(n_digits=3, answer_at=None, trigger=None):
    vocab = [*number_names(0, 10), AdditionTask.PLUS, EQUALS]
    max_seq_len = 3 * n_digits + 2 if answer_at else 2 * n_digits + 2  # the task row, or the prompt alone
    return make_adder(n_digits, answer_at, trigger), vocab, max_seq_len


def _backdoor_adder(n_digits=3, answer_at=None, trigger_a=None, trigger_b=None):
    six = int("6" * n_digits)  # default trigger: 666 + 666 for three digits
    trigger = (six if trigger_a is None else trigger_a, six if trigger_b is None else trigger_b)
    return _adder(n_digits, answer_at, trigger)


PROGRAMS: dict[str, ProgramSpec] = {
    "length": ProgramSpec(_length, causal=False),
    "reverse": ProgramSpec(_reverse, causal=False, task="reverse"),
    "histogram": ProgramSpec(_histogram, causal=False, task="histogram"),
    "sort_unique": ProgramSpec(_sort_unique, causal=False, task="sort"),
    "sort": ProgramSpec(_sort, causal=False, task="sort"),
    "sort_freq": ProgramSpec(_sort_freq, causal=False),
    "frac_prevs": ProgramSpec(_frac_prevs, causal=True, task="fraction_prev"),
    "pair_balance": ProgramSpec(_pair_balance, causal=True),
    "shuffle_dyck": ProgramSpec(_shuffle_dyck, causal=True, task="dyck"),
    "count": ProgramSpec(_count, causal=True),
    "shift_by": ProgramSpec(_shift_by, causal=True),
    "induction": ProgramSpec(_induction, causal=True, task="induction"),
    "detect_pattern": ProgramSpec(_detect_pattern, causal=True),
    "prev_occurrence": ProgramSpec(_prev_occurrence, causal=True),
    "recall": ProgramSpec(_recall, causal=True, task="recall"),
    "adder": ProgramSpec(lambda n_digits=3, answer_at=None: _adder(n_digits, answer_at), causal=False,
                         task="addition"),
    "backdoor_adder": ProgramSpec(_backdoor_adder, causal=False, task="addition"),
}


def program_names() -> list[str]:
    return sorted(PROGRAMS)


def make_program(name: str, **params) -> LibraryProgram:
    """Build a library program; unknown names and parameters are errors listing the choices."""
    if name not in PROGRAMS:
        raise ValueError(f"unknown RASP program {name!r}; choose one of: {', '.join(program_names())}")
    spec = PROGRAMS[name]
    unknown = [p for p in params if p not in spec.defaults]
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(map(repr, unknown))} for RASP program {name!r}; "
                         f"accepted: {', '.join(spec.defaults)}")
    full = {**spec.defaults, **params}
    program, vocab, max_seq_len = spec.build(**full)
    return LibraryProgram(name, full, program, vocab, max_seq_len, spec.causal, spec.task)
