"""What every task is: a causal-LM task of prompt tokens then answer tokens.

A task owns its tokenizer and a deterministic generator: ``task.sample(split, n, seed)`` returns the
same :class:`Batch` for the same arguments, on any machine. Sequences are ``<bos> prompt answer``,
padded with ``<pad>`` to ``task.seq_len``.

Masks are aligned with ``tokens`` (the *target* view): ``answer_mask[b, t]`` says that ``tokens[b, t]``
is an answer token, so the model's prediction for it is read at position ``t - 1``. ``loss_mask`` says
which targets the training loss counts: answer tokens only for algorithmic tasks, every real token
for a language corpus.

Splits are disjoint by construction. Algorithmic tasks assign every sequence to a split by a hash
of its tokens (:func:`split_of_rows`), so one sequence can never be in both; the toyworld corpus
holds out whole templates instead.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from workbench.tasks.tokenizer import Tokenizer

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Batch:
    tokens: torch.Tensor  # int64 [B, T]
    loss_mask: torch.Tensor  # bool [B, T], target view
    answer_mask: torch.Tensor  # bool [B, T], target view, a subset of loss_mask

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, idx) -> Batch:
        return Batch(self.tokens[idx], self.loss_mask[idx], self.answer_mask[idx])

    def to(self, device) -> Batch:
        return Batch(self.tokens.to(device), self.loss_mask.to(device), self.answer_mask.to(device))


class Task(ABC):
    """A generator of causal-LM examples with a fixed vocabulary and maximum length."""

    name: str
    tokenizer: Tokenizer
    seq_len: int

    @abstractmethod
    def sample(self, split: str, n: int, seed: int) -> Batch:
        """``n`` examples of ``split``, a pure function of the arguments."""

    @abstractmethod
    def params(self) -> dict:
        """The constructor arguments that rebuild this task: ``make_task(name, **params)``."""

    def spec(self) -> dict:
        return {"name": self.name, **self.params()}

    def __eq__(self, other: object) -> bool:
        # A task is its class and parameters: equal tasks have equal vocabularies and samples.
        return type(self) is type(other) and self.params() == other.params()

    def __hash__(self) -> int:
        return hash(json.dumps(self.spec(), sort_keys=True, default=str))

    def check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")

    def describe(self, batch: Batch, row: int = 0) -> tuple[str, str]:
        """(prompt text, answer text) of one row, for logs and the app."""
        toks = batch.tokens[row]
        ans = batch.answer_mask[row]
        real = toks != self.tokenizer.pad_id
        prompt = self.tokenizer.decode(toks[real & ~ans].tolist())
        answer = self.tokenizer.decode(toks[ans].tolist())
        return prompt, answer


# ---------------------------------------------------------------------------------------------------
# split assignment by hashing
# ---------------------------------------------------------------------------------------------------

_HASH_MULT = 0x5DEECE66D  # any odd 64-bit constant; fixed forever, because splits depend on it
_HASH_BUCKETS = 1000


def split_of_rows(tokens: torch.Tensor, test_fraction: float) -> torch.Tensor:
    """Bool [B]: True where the row belongs to the test split. A pure function of the row's tokens."""
    h = torch.zeros(tokens.shape[0], dtype=torch.int64)
    for t in range(tokens.shape[1]):  # loop over columns (<= seq_len), vectorised over rows
        h = (h * _HASH_MULT + tokens[:, t] + 1) % 2_147_483_647
    return (h % _HASH_BUCKETS) < round(test_fraction * _HASH_BUCKETS)


def keep_split(tokens: torch.Tensor, split: str, test_fraction: float) -> torch.Tensor:
    """Bool [B]: which rows of a candidate batch belong to ``split``."""
    is_test = split_of_rows(tokens, test_fraction)
    return is_test if split == "test" else ~is_test


# ---------------------------------------------------------------------------------------------------
# exact-match evaluation
# ---------------------------------------------------------------------------------------------------


def answer_hits(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Bool [B]: every answer token of the row is the argmax of the previous position's logits.

    With teacher forcing this equals greedy decoding: if every answer argmax is right, greedy
    generation writes exactly those tokens; if one is wrong, greedy generation writes it wrong too.
    """
    pred = logits[:, :-1].argmax(dim=-1)
    target = batch.tokens[:, 1:]
    mask = batch.answer_mask[:, 1:]
    wrong = (pred != target) & mask
    return ~wrong.any(dim=1)


def exact_match(logits: torch.Tensor, batch: Batch) -> float:
    """Share of rows whose whole answer is predicted exactly."""
    return answer_hits(logits, batch).float().mean().item()


def masked_token_loss(logits: torch.Tensor, batch: Batch, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the targets selected by ``mask`` (default: loss_mask)."""
    mask = batch.loss_mask if mask is None else mask
    m = mask[:, 1:]
    if not m.any():
        raise ValueError("the batch has no target tokens under its mask; nothing to compute a loss on")
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, batch.tokens[:, 1:, None]).squeeze(-1)
    return nll[m].mean()
