"""Algorithmic tasks, part one: the shared machinery, associative recall and the copy-like tasks.

Every sequence is ``<bos> prompt answer``, one fixed length per configuration, and the loss counts
the answer tokens only (``loss_mask == answer_mask``). Formats with the default parameters
(``<bos>`` omitted; the answer is everything after the last separator):

- ``recall``        ``c > 3 q > 7 ... f > 0 ? q 7``               value of the queried key
- ``recall_multi``  ``c > 3 q > 7 ... f > 0 ? q 7 ? c 3 ? f 0 ? ...``  every value after a ``?`` key
- ``induction``     ``d a q b ... | d a q b ...``                 the prefix repeated
- ``reverse``       ``d a q b ... | ... b q a d``                 the prefix reversed
- ``sort``          ``7 3 12 3 ... | 3 3 7 12 ...``               the prefix sorted ascending
- ``histogram``     ``b a b c ... | 2 1 2 1 ...``                 per position, count of that token

The rest (``fraction_prev``, ``dyck``, ``addition``, ``selective_copy``) live in
:mod:`workbench.tasks.sequences`.

Generation is vectorised: a ``torch.Generator`` seeded from ``seed`` draws a round of candidate
rows at once, :func:`keep_split` keeps the rows that hash into the requested split, and rounds
continue until ``n`` rows are collected. Round sizes follow a fixed schedule, so
``sample(split, m, seed)`` is a prefix of ``sample(split, n, seed)`` for ``m < n``.
"""

from __future__ import annotations

import inspect
import string

import torch

from workbench.tasks.base import Batch, Task, keep_split
from workbench.tasks.tokenizer import Tokenizer

SEPARATOR = "|"


def letter_names(count: int) -> list[str]:
    """``a``..``z``, then ``s26``, ``s27``, ... for alphabets larger than 26 symbols."""
    return [string.ascii_lowercase[i] if i < 26 else f"s{i}" for i in range(count)]


def number_names(start: int, stop: int) -> list[str]:
    return [str(i) for i in range(start, stop)]


def random_permutations(gen: torch.Generator, rows: int, items: int) -> torch.Tensor:
    """Int64 [rows, items]: an independent uniform permutation of ``range(items)`` per row."""
    return torch.rand(rows, items, generator=gen).argsort(dim=1)


def randint(gen: torch.Generator, high: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randint(high, shape, generator=gen)


def column(value: int, rows: int) -> torch.Tensor:
    """Int64 [rows, 1] filled with one token id (a separator, ``<bos>``, ...)."""
    return torch.full((rows, 1), value, dtype=torch.int64)


class AlgorithmicTask(Task):
    """Shared machinery: parameters read off ``__init__``, vocabulary, split-filtered sampling.

    A subclass stores every constructor argument under its own name, then calls
    ``super().__init__(test_fraction)``, and implements :meth:`symbols` (its tokens besides the
    specials, in a fixed order), :meth:`answer_positions` and :meth:`generate`.
    """

    # Candidates drawn per round: a fixed schedule (never derived from n), so smaller samples are
    # prefixes of larger ones. It starts small because a training step samples a small batch, and
    # doubles so that big samples amortise the per-round overhead.
    FIRST_ROUND, LARGEST_ROUND = 256, 8192

    def __init__(self, test_fraction: float = 0.1):
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
        self.test_fraction = test_fraction
        self.tokenizer = Tokenizer(self.symbols())
        positions = self.answer_positions()
        self.seq_len = positions[-1] + 1
        mask = torch.zeros(self.seq_len, dtype=torch.bool)
        mask[positions] = True
        self._answer_row = mask

    # -- what a subclass provides -------------------------------------------------------------------

    def symbols(self) -> list[str]:
        """The task's tokens besides ``<pad>`` and ``<bos>``, in vocabulary order."""
        raise NotImplementedError

    def answer_positions(self) -> list[int]:
        """Sorted indices of the answer tokens; the last one is the final position of the row."""
        raise NotImplementedError

    def generate(self, gen: torch.Generator, rows: int) -> torch.Tensor:
        """Int64 [rows, seq_len] of fresh candidate sequences, ``<bos>`` first."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------

    def ids(self, names: list[str]) -> torch.Tensor:
        """Int64 lookup table: ``ids(names)[i]`` is the token id of ``names[i]``."""
        return torch.tensor(self.tokenizer.encode(names), dtype=torch.int64)

    def id_of(self, name: str) -> int:
        return self.tokenizer.index[name]

    def bos_column(self, rows: int) -> torch.Tensor:
        return column(self.tokenizer.bos_id, rows)

    @classmethod
    def param_names(cls) -> list[str]:
        """The constructor's keyword arguments, which are also the attributes ``params`` reads."""
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def params(self) -> dict:
        return {name: getattr(self, name) for name in self.param_names()}

    def sample(self, split: str, n: int, seed: int) -> Batch:
        self.check_split(split)
        if split == "test" and self.test_fraction == 0.0 and n > 0:
            raise ValueError(f"task {self.name!r} has test_fraction=0, so its test split is empty")
        share = self.test_fraction if split == "test" else 1.0 - self.test_fraction
        # Generous cap on candidates: a configuration whose distinct sequences all hash into the
        # other split would otherwise loop forever.
        max_candidates = 16 * self.LARGEST_ROUND + 4 * n / max(share, 1e-6)
        gen = torch.Generator().manual_seed(seed)
        kept: list[torch.Tensor] = []
        collected, drawn, round_size = 0, 0, self.FIRST_ROUND
        while collected < n:
            if drawn > max_candidates:
                raise ValueError(
                    f"task {self.name!r} {self.params()} yielded only {collected} of {n} {split} rows "
                    f"from {drawn} candidates; its space of sequences is too small for this split"
                )
            candidates = self.generate(gen, round_size)
            rows = candidates[keep_split(candidates, split, self.test_fraction)]
            kept.append(rows)
            collected += rows.shape[0]
            drawn += round_size
            round_size = min(2 * round_size, self.LARGEST_ROUND)
        tokens = torch.cat(kept)[:n] if kept else torch.empty(0, self.seq_len, dtype=torch.int64)
        answer = self._answer_row.expand(tokens.shape[0], -1).clone()
        return Batch(tokens=tokens, loss_mask=answer.clone(), answer_mask=answer)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------------------------------------------
# associative recall
# ---------------------------------------------------------------------------------------------------


class RecallTask(AlgorithmicTask):
    """Associative recall: ``k1 > v1 ... kn > vn ? q v``, answer the value stored under key ``q``.

    Keys are distinct within a sequence (letters ``a``..``z``); values are the numbers ``0``..
    ``n_values-1`` and may repeat. Solvable by the RASP "find then shift" circuit: an induction-style
    head finds the earlier ``q`` and copies the token two places after it, two attention layers.
    """

    name = "recall"
    ARROW, QUERY = ">", "?"

    def __init__(self, n_pairs: int = 8, n_keys: int = 26, n_values: int = 16, test_fraction: float = 0.1,
                 min_pairs: int | None = None):
        if not 1 <= n_pairs <= n_keys:
            raise ValueError(f"n_pairs must be in 1..n_keys={n_keys} (keys are distinct), got {n_pairs}")
        if n_values < 1:
            raise ValueError(f"n_values must be >= 1, got {n_values}")
        min_pairs = n_pairs if min_pairs is None else min_pairs
        if not 1 <= min_pairs <= n_pairs:
            raise ValueError(f"min_pairs must be in 1..n_pairs={n_pairs}, got {min_pairs}")
        self.n_pairs, self.n_keys, self.n_values, self.min_pairs = n_pairs, n_keys, n_values, min_pairs
        super().__init__(test_fraction)
        self.key_ids = self.ids(letter_names(n_keys))
        self.value_ids = self.ids(number_names(0, n_values))

    def params(self) -> dict:
        # min_pairs is left out at its default so that existing specs ({"name": "recall"}) stay equal
        out = super().params()
        if out.get("min_pairs") == self.n_pairs:
            del out["min_pairs"]
        return out

    def symbols(self) -> list[str]:
        return [self.ARROW, self.QUERY, *letter_names(self.n_keys), *number_names(0, self.n_values)]

    def answer_positions(self) -> list[int]:
        return [1 + 3 * self.n_pairs + 2]

    def draw_pairs(self, gen: torch.Generator, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(key indices [rows, n_pairs], value indices [rows, n_pairs], the ``k > v`` tokens)."""
        keys = random_permutations(gen, rows, self.n_keys)[:, : self.n_pairs]
        values = randint(gen, self.n_values, (rows, self.n_pairs))
        arrows = torch.full_like(keys, self.id_of(self.ARROW))
        pairs = torch.stack([self.key_ids[keys], arrows, self.value_ids[values]], dim=2)
        return keys, values, pairs.reshape(rows, 3 * self.n_pairs)

    def generate(self, gen: torch.Generator, rows: int) -> torch.Tensor:
        keys, values, pairs = self.draw_pairs(gen, rows)
        # With min_pairs < n_pairs a row holds m pairs, m uniform in [min_pairs, n_pairs]; the missing
        # leading pairs are <pad>, so every row keeps one length and the answer one position. Short
        # contexts give a strong signal for the lookup circuit, which then carries to long ones.
        if self.min_pairs < self.n_pairs:
            absent = randint(gen, self.n_pairs - self.min_pairs + 1, (rows, 1))
            slot = torch.arange(self.n_pairs).expand(rows, -1)
            pairs = pairs.masked_fill((slot < absent).repeat_interleave(3, dim=1), self.tokenizer.pad_id)
            which = absent + (torch.rand(rows, 1, generator=gen) * (self.n_pairs - absent)).long()
        else:
            which = randint(gen, self.n_pairs, (rows, 1))
        query = self.key_ids[keys.gather(1, which)]
        answer = self.value_ids[values.gather(1, which)]
        return torch.cat(
            [self.bos_column(rows), pairs, column(self.id_of(self.QUERY), rows), query, answer], 1
        )


class RecallMultiTask(RecallTask):
    """Multi-query associative recall: the pairs, then ``? q1 v1 ? q2 v2 ...``; every ``v`` is an answer.

    The queried keys are distinct (so ``n_queries <= n_pairs``) and in random order.
    """

    name = "recall_multi"

    def __init__(
        self,
        n_pairs: int = 8,
        n_queries: int = 4,
        n_keys: int = 26,
        n_values: int = 16,
        test_fraction: float = 0.1,
    ):
        if not 1 <= n_queries <= n_pairs:
            raise ValueError(
                f"n_queries must be in 1..n_pairs={n_pairs} (queries are distinct), got {n_queries}"
            )
        self.n_queries = n_queries
        super().__init__(n_pairs=n_pairs, n_keys=n_keys, n_values=n_values, test_fraction=test_fraction)

    def answer_positions(self) -> list[int]:
        return [1 + 3 * self.n_pairs + 3 * q + 2 for q in range(self.n_queries)]

    def generate(self, gen: torch.Generator, rows: int) -> torch.Tensor:
        keys, values, pairs = self.draw_pairs(gen, rows)
        which = random_permutations(gen, rows, self.n_pairs)[:, : self.n_queries]
        marks = torch.full_like(which, self.id_of(self.QUERY))
        queries = torch.stack(
            [marks, self.key_ids[keys.gather(1, which)], self.value_ids[values.gather(1, which)]], dim=2
        )
        return torch.cat([self.bos_column(rows), pairs, queries.reshape(rows, 3 * self.n_queries)], 1)


# ---------------------------------------------------------------------------------------------------
# copy-like tasks: a random sequence, a separator, then a function of the sequence
# ---------------------------------------------------------------------------------------------------


class _PrefixTransformTask(AlgorithmicTask):
    """``x1 .. xL | f(x)`` where ``f(x)`` has one token per input position; ``f(x)`` is the answer."""

    def symbols(self) -> list[str]:
        return [SEPARATOR, *self.input_names(), *self.output_extra_names()]

    def input_names(self) -> list[str]:
        raise NotImplementedError

    def output_extra_names(self) -> list[str]:
        """Answer tokens that are not input tokens (none for copy, reverse, sort)."""
        return []

    def answer_positions(self) -> list[int]:
        return list(range(self.length + 2, 2 * self.length + 2))

    def draw_inputs(self, gen: torch.Generator, rows: int) -> torch.Tensor:
        """Symbol indices [rows, length]."""
        return randint(gen, len(self.input_names()), (rows, self.length))

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        """Token ids [rows, length] of the answer, given input symbol indices [rows, length]."""
        raise NotImplementedError

    def generate(self, gen: torch.Generator, rows: int) -> torch.Tensor:
        inputs = self.draw_inputs(gen, rows)
        input_ids = self.ids(self.input_names())
        sep = column(self.id_of(SEPARATOR), rows)
        return torch.cat([self.bos_column(rows), input_ids[inputs], sep, self.transform(inputs)], dim=1)


class InductionTask(_PrefixTransformTask):
    """Copy / induction: ``x1 .. xL | x1 .. xL``; an induction head predicts each repeated token."""

    name = "induction"

    def __init__(self, length: int = 12, n_symbols: int = 20, test_fraction: float = 0.1):
        if length < 1 or n_symbols < 1:
            raise ValueError(f"length and n_symbols must be >= 1, got {length}, {n_symbols}")
        self.length, self.n_symbols = length, n_symbols
        super().__init__(test_fraction)

    def input_names(self) -> list[str]:
        return letter_names(self.n_symbols)

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.ids(self.input_names())[inputs]


class ReverseTask(InductionTask):
    """Reversal: ``x1 .. xL | xL .. x1``."""

    name = "reverse"

    def __init__(self, length: int = 8, n_symbols: int = 20, test_fraction: float = 0.1):
        super().__init__(length=length, n_symbols=n_symbols, test_fraction=test_fraction)

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.ids(self.input_names())[inputs.flip(1)]


class SortTask(_PrefixTransformTask):
    """Sorting: numbers ``0``..``n_values-1``, ``|``, the same numbers in ascending order.

    With ``distinct=True`` the numbers in a row are distinct (the form Tracr's ``make_sort_unique``
    compiles); by default they may repeat.
    """

    name = "sort"

    def __init__(
        self, length: int = 8, n_values: int = 16, distinct: bool = False, test_fraction: float = 0.1
    ):
        if length < 1 or n_values < 1 or (distinct and length > n_values):
            raise ValueError(f"need 1 <= length (<= n_values when distinct), got {length}, {n_values}")
        self.length, self.n_values, self.distinct = length, n_values, distinct
        super().__init__(test_fraction)

    def input_names(self) -> list[str]:
        return number_names(0, self.n_values)

    def draw_inputs(self, gen: torch.Generator, rows: int) -> torch.Tensor:
        if self.distinct:
            return random_permutations(gen, rows, self.n_values)[:, : self.length]
        return super().draw_inputs(gen, rows)

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.ids(self.input_names())[inputs.sort(dim=1).values]


class HistogramTask(_PrefixTransformTask):
    """RASP histogram: ``x1 .. xL | c1 .. cL`` with ``ci`` = how often ``xi`` occurs in the row.

    Count tokens are the numbers ``1``..``length`` (symbols are letters, so no name collides).
    """

    name = "histogram"

    def __init__(self, length: int = 10, n_symbols: int = 8, test_fraction: float = 0.1):
        if length < 1 or n_symbols < 1:
            raise ValueError(f"length and n_symbols must be >= 1, got {length}, {n_symbols}")
        self.length, self.n_symbols = length, n_symbols
        super().__init__(test_fraction)

    def input_names(self) -> list[str]:
        return letter_names(self.n_symbols)

    def output_extra_names(self) -> list[str]:
        return number_names(1, self.length + 1)

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        counts = (inputs[:, :, None] == inputs[:, None, :]).sum(dim=2)
        return self.ids(self.output_extra_names())[counts - 1]
