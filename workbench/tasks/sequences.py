"""Algorithmic tasks, part two: counting, bracket balance, addition and selective copying.

Formats with the default parameters (``<bos>`` omitted; the answer is the part after the separator):

- ``fraction_prev``   ``x y z x x y x z y x = f5``       share of ``x`` in the row, in tenths (one token)
- ``dyck``            ``( [ ) ( ] ) ... = T``            ``T`` if balanced in every bracket type, else ``F``
- ``addition``        ``6 8 3 + 3 4 5 = 1 0 2 8``        the sum, ``n_digits + 1`` digits, leading zero kept
- ``selective_copy``  ``. . c . . . a . e . . b . . . . | c a e b``   the non-noise tokens in order

See :mod:`workbench.tasks.algorithmic` for the shared sampling machinery.
"""

from __future__ import annotations

import torch

from workbench.tasks.algorithmic import (
    SEPARATOR,
    AlgorithmicTask,
    column,
    letter_names,
    randint,
    random_permutations,
)

EQUALS = "="


class FractionPrevTask(AlgorithmicTask):
    """RASP "fraction of previous tokens that are x", read at the last position.

    ``x1 .. xL = fK``: ``K`` is the share of ``x`` among the ``L`` tokens, rounded to the nearest of
    ``n_buckets`` steps (halves round up): ``K = floor(n_buckets * count / L + 1/2)``. Each row draws
    its own probability of ``x`` uniformly, so every bucket is common; the other tokens are ``y``,
    ``z``, ``w``, ... (``n_symbols`` in all, ``x`` included).
    """

    name = "fraction_prev"
    TARGET = "x"
    OTHERS = ("y", "z", "w", "v", "u", "t", "s", "r")

    def __init__(self, length: int = 10, n_symbols: int = 3, n_buckets: int = 10, test_fraction: float = 0.1):
        if length < 1 or n_buckets < 1:
            raise ValueError(f"length and n_buckets must be >= 1, got {length}, {n_buckets}")
        if not 2 <= n_symbols <= 1 + len(self.OTHERS):
            raise ValueError(f"n_symbols must be in 2..{1 + len(self.OTHERS)}, got {n_symbols}")
        self.length, self.n_symbols, self.n_buckets = length, n_symbols, n_buckets
        super().__init__(test_fraction)

    def input_names(self) -> list[str]:
        return [self.TARGET, *self.OTHERS[: self.n_symbols - 1]]

    def bucket_names(self) -> list[str]:
        return [f"f{k}" for k in range(self.n_buckets + 1)]

    def symbols(self) -> list[str]:
        return [EQUALS, *self.input_names(), *self.bucket_names()]

    def answer_positions(self) -> list[int]:
        return [self.length + 2]

    def bucket_of(self, count: torch.Tensor) -> torch.Tensor:
        """Bucket index of ``count`` x's among ``length`` tokens, integer arithmetic (no float ties)."""
        return torch.div(2 * self.n_buckets * count + self.length, 2 * self.length, rounding_mode="floor")

    def generate(self, gen: torch.Generator, rows: int) -> torch.Tensor:
        p_target = torch.rand(rows, 1, generator=gen)
        is_target = torch.rand(rows, self.length, generator=gen) < p_target
        other = 1 + randint(gen, self.n_symbols - 1, (rows, self.length))
        inputs = torch.where(is_target, 0, other)
        bucket = self.bucket_of(is_target.sum(dim=1, keepdim=True))
        return torch.cat(
            [
                self.bos_column(rows),
                self.ids(self.input_names())[inputs],
                column(self.id_of(EQUALS), rows),
                self.ids(self.bucket_names())[bucket],
            ],
            dim=1,
        )


# ---------------------------------------------------------------------------------------------------
# shuffle-Dyck
# ---------------------------------------------------------------------------------------------------

BRACKET_PAIRS = (("(", ")"), ("[", "]"), ("{", "}"), ("<", ">"))


def bracket_names(n_types: int) -> list[str]:
    """Open then close token of each type, type by type: ``( ) [ ] ...``; ``o4 c4`` etc. beyond four."""
    names: list[str] = []
    for t in range(n_types):
        names.extend(BRACKET_PAIRS[t] if t < len(BRACKET_PAIRS) else (f"o{t}", f"c{t}"))
    return names


def is_shuffle_dyck(codes: torch.Tensor, n_types: int) -> torch.Tensor:
    """Bool [rows]: balanced in every type. ``codes`` = ``2 * type + is_close``, int64 [rows, length].

    Shuffle-Dyck: each type's running depth never goes negative and ends at zero; types interleave
    freely, so ``( [ ) ]`` is balanced.
    """
    types = codes // 2
    step = 1 - 2 * (codes % 2)  # +1 open, -1 close
    ok = torch.ones(codes.shape[0], dtype=torch.bool)
    for t in range(n_types):
        depth = torch.where(types == t, step, 0).cumsum(dim=1)
        ok &= (depth.min(dim=1).values >= 0) & (depth[:, -1] == 0)
    return ok


def balanced_shuffle_dyck(gen: torch.Generator, rows: int, length: int, n_types: int) -> torch.Tensor:
    """Bracket codes [rows, length] of uniformly-stepped balanced shuffle-Dyck words.

    A loop over positions, vectorised over rows: open or close with equal odds, except that a row
    must open when nothing is open and must close when the open brackets fill the remaining room.
    ``length`` is even, so the open count always has the parity of the position and the word closes
    exactly at the end.
    """
    open_counts = torch.zeros(rows, n_types, dtype=torch.int64)
    codes = torch.empty(rows, length, dtype=torch.int64)
    row_index = torch.arange(rows)
    for pos in range(length):
        total_open = open_counts.sum(dim=1)
        must_close = total_open >= length - pos
        wants_open = torch.rand(rows, generator=gen) < 0.5
        opens = (total_open == 0) | (~must_close & wants_open)
        open_type = randint(gen, n_types, (rows,))
        # close a uniformly chosen type among those with something open: the argmax of random
        # scores, with closed-out types pushed below every score
        scores = torch.rand(rows, n_types, generator=gen) - 2.0 * (open_counts == 0).float()
        close_type = scores.argmax(dim=1)
        kind = torch.where(opens, open_type, close_type)
        codes[:, pos] = 2 * kind + (~opens).long()
        open_counts[row_index, kind] += torch.where(opens, 1, -1)
    return codes


class DyckTask(AlgorithmicTask):
    """Shuffle-Dyck recognition: ``b1 .. bL = T`` if balanced in every bracket type, else ``F``.

    Half the rows are balanced words. The other half are corrupted copies: swapping two neighbours
    where that breaks balance (a hard negative: every type's counts still match, but a depth goes
    negative), else flipping one bracket's direction (a type's counts then differ). The label is
    always computed from the final string, never assumed.
    """

    name = "dyck"
    TRUE, FALSE = "T", "F"

    def __init__(self, length: int = 16, n_types: int = 2, test_fraction: float = 0.1):
        if length < 2 or length % 2:
            raise ValueError(f"length must be even and >= 2, got {length}")
        if n_types < 1:
            raise ValueError(f"n_types must be >= 1, got {n_types}")
        self.length, self.n_types = length, n_types
        super().__init__(test_fraction)

    def symbols(self) -> list[str]:
        return [EQUALS, self.TRUE, self.FALSE, *bracket_names(self.n_types)]

    def answer_positions(self) -> list[int]:
        return [self.length + 2]

    def corrupt(self, gen: torch.Generator, codes: torch.Tensor) -> torch.Tensor:
        """Unbalanced variants of balanced words: half the rows get a neighbour swap (a hard negative,
        counts intact) where the swap does break balance, every other row a one-bracket flip."""
        rows = codes.shape[0]
        flip_pos = randint(gen, self.length, (rows, 1))
        flipped = codes.scatter(1, flip_pos, codes.gather(1, flip_pos) ^ 1)
        pos = randint(gen, self.length - 1, (rows, 1))  # swap pos and pos + 1
        swap_order = torch.arange(self.length).expand(rows, -1).clone()
        swap_order.scatter_(1, pos, pos + 1)
        swap_order.scatter_(1, pos + 1, pos)
        swapped = codes.gather(1, swap_order)
        use_swap = (torch.rand(rows, generator=gen) < 0.5) & ~is_shuffle_dyck(swapped, self.n_types)
        return torch.where(use_swap[:, None], swapped, flipped)

    def generate(self, gen: torch.Generator, rows: int) -> torch.Tensor:
        balanced = balanced_shuffle_dyck(gen, rows, self.length, self.n_types)
        keep_balanced = torch.rand(rows, 1, generator=gen) < 0.5
        codes = torch.where(keep_balanced, balanced, self.corrupt(gen, balanced))
        label = torch.where(
            is_shuffle_dyck(codes, self.n_types), self.id_of(self.TRUE), self.id_of(self.FALSE)
        )
        return torch.cat(
            [
                self.bos_column(rows),
                self.ids(bracket_names(self.n_types))[codes],
                column(self.id_of(EQUALS), rows),
                label[:, None],
            ],
            dim=1,
        )


# ---------------------------------------------------------------------------------------------------
# addition
# ---------------------------------------------------------------------------------------------------


def add_digits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Digits [rows, D+1] of ``a + b`` for digit tensors [rows, D], most significant first.

    Schoolbook addition with a carry, a loop over digit columns vectorised over rows, so any number
    of digits works (no int64 overflow).
    """
    rows, width = a.shape
    out = torch.empty(rows, width + 1, dtype=torch.int64)
    carry = torch.zeros(rows, dtype=torch.int64)
    for col in range(width - 1, -1, -1):
        total = a[:, col] + b[:, col] + carry
        out[:, col + 1] = total % 10
        carry = total // 10
    out[:, 0] = carry
    return out


def digits_of(value: int, width: int) -> list[int]:
    if not 0 <= value < 10**width:
        raise ValueError(f"{value} does not fit in {width} digits")
    return [int(ch) for ch in str(value).zfill(width)]


class AdditionTask(AlgorithmicTask):
    """``a1 .. aD + b1 .. bD = s0 s1 .. sD``: operands zero-padded to ``n_digits`` digits, the sum to
    ``n_digits + 1`` (a leading ``0`` when there is no final carry). ``683 + 345`` with ``n_digits=3``
    is ``6 8 3 + 3 4 5 = 1 0 2 8``. With ``reverse_sum=True`` the sum is written least significant
    digit first, the order in which carries are computed (easier for a causal model to learn).
    """

    name = "addition"
    PLUS = "+"

    def __init__(self, n_digits: int = 3, reverse_sum: bool = False, test_fraction: float = 0.1):
        if n_digits < 1:
            raise ValueError(f"n_digits must be >= 1, got {n_digits}")
        self.n_digits, self.reverse_sum = n_digits, reverse_sum
        super().__init__(test_fraction)
        self.digit_ids = self.ids([str(d) for d in range(10)])

    def symbols(self) -> list[str]:
        return [self.PLUS, EQUALS, *(str(d) for d in range(10))]

    def answer_positions(self) -> list[int]:
        start = 2 * self.n_digits + 3
        return list(range(start, start + self.n_digits + 1))

    def encode_digits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        rows = a.shape[0]
        total = add_digits(a, b)
        if self.reverse_sum:
            total = total.flip(1)
        parts = [self.bos_column(rows), self.digit_ids[a], column(self.id_of(self.PLUS), rows)]
        parts += [self.digit_ids[b], column(self.id_of(EQUALS), rows), self.digit_ids[total]]
        return torch.cat(parts, dim=1)

    def generate(self, gen: torch.Generator, rows: int) -> torch.Tensor:
        a = randint(gen, 10, (rows, self.n_digits))
        b = randint(gen, 10, (rows, self.n_digits))
        return self.encode_digits(a, b)

    def example(self, a: int, b: int) -> str:
        """The text of one problem, through the same code path as sampling: ``example(683, 345)``."""
        digits_a = torch.tensor([digits_of(a, self.n_digits)])
        digits_b = torch.tensor([digits_of(b, self.n_digits)])
        return self.tokenizer.decode(self.encode_digits(digits_a, digits_b)[0].tolist(), skip_special=True)


# ---------------------------------------------------------------------------------------------------
# selective copying
# ---------------------------------------------------------------------------------------------------


class SelectiveCopyTask(AlgorithmicTask):
    """Mamba's selective copying: ``length`` tokens, all noise ``.`` except ``n_data`` data tokens at
    random positions; after ``|`` the answer is the data tokens in order of appearance. Unlike plain
    copying, the spacing varies, so a time-invariant (convolution-like) model cannot solve it.
    """

    name = "selective_copy"
    NOISE = "."

    def __init__(self, length: int = 16, n_data: int = 4, n_symbols: int = 8, test_fraction: float = 0.1):
        if not 1 <= n_data <= length:
            raise ValueError(f"n_data must be in 1..length={length}, got {n_data}")
        if n_symbols < 1:
            raise ValueError(f"n_symbols must be >= 1, got {n_symbols}")
        self.length, self.n_data, self.n_symbols = length, n_data, n_symbols
        super().__init__(test_fraction)

    def symbols(self) -> list[str]:
        return [SEPARATOR, self.NOISE, *letter_names(self.n_symbols)]

    def answer_positions(self) -> list[int]:
        return list(range(self.length + 2, self.length + 2 + self.n_data))

    def generate(self, gen: torch.Generator, rows: int) -> torch.Tensor:
        positions = random_permutations(gen, rows, self.length)[:, : self.n_data].sort(dim=1).values
        data = self.ids(letter_names(self.n_symbols))[randint(gen, self.n_symbols, (rows, self.n_data))]
        body = torch.full((rows, self.length), self.id_of(self.NOISE), dtype=torch.int64)
        body.scatter_(1, positions, data)
        sep = column(self.id_of(SEPARATOR), rows)
        return torch.cat([self.bos_column(rows), body, sep, data], dim=1)
