"""Word-level tokenizer shared by every task.

A vocabulary is an ordered list of token strings; text is split on whitespace. Two special tokens
always come first, so their ids are the same for every task: ``<pad>`` = 0 and ``<bos>`` = 1.
The tokenizer is saved as JSON next to each model, so a model can be read without its task code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

PAD = "<pad>"
BOS = "<bos>"
SPECIALS = (PAD, BOS)


class Tokenizer:
    """Maps whitespace-separated words to ids and back; unknown words are an error, never <unk>."""

    def __init__(self, tokens: Iterable[str]):
        vocab = list(SPECIALS)
        seen = set(vocab)
        for tok in tokens:
            if not tok or any(ch.isspace() for ch in tok):
                raise ValueError(f"token {tok!r} is empty or holds white space; tokens are single words")
            if tok not in seen:
                seen.add(tok)
                vocab.append(tok)
        self.vocab: list[str] = vocab
        self.index: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return self.index[PAD]

    @property
    def bos_id(self) -> int:
        return self.index[BOS]

    def encode(self, text: str | Sequence[str]) -> list[int]:
        words = text.split() if isinstance(text, str) else list(text)
        unknown = [w for w in words if w not in self.index]
        if unknown:
            sample = ", ".join(repr(w) for w in unknown[:5])
            raise ValueError(
                f"unknown token(s) {sample} for this vocabulary of {self.vocab_size} tokens; "
                f"known tokens include: {', '.join(self.vocab[2:22])} ..."
            )
        return [self.index[w] for w in words]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
            if skip_special and self.vocab[i] in SPECIALS:
                continue
            out.append(self.vocab[i])
        return " ".join(out)

    def tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.vocab[int(i)] for i in ids]

    def to_json(self) -> str:
        return json.dumps({"vocab": self.vocab}, indent=0)

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        vocab = json.loads(text)["vocab"]
        if list(vocab[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"tokenizer JSON must start with the special tokens {SPECIALS}")
        return cls(vocab[len(SPECIALS) :])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.vocab == other.vocab

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"
