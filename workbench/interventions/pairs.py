"""Clean / corrupted prompt pairs for patching, with the answer and a contrast answer.

A :class:`PromptPairs` holds ``N`` pairs of equal-length prompts: ``clean [N, T]`` and ``corrupted
[N, T]`` token ids, the ``answer`` the clean prompt should give and the ``contrast`` the corrupted one
should give (``[N]`` ids), and ``positions [N]``, the position whose logits predict the answer (the
prompt's last token). A one-token change makes each pair, so lengths are equal by construction;
:func:`pairs_from_text` checks typed pairs and names both lengths when they differ.

Sources (every one deterministic: the same seed gives the same pairs):

1. :func:`recall_pairs` (``recall`` / ``recall_multi`` tasks): ``<bos> k1 > v1 ... kn > vn ? q``.
   ``corrupt="key"``: the query ``q`` becomes another key of the prompt whose value differs (contrast =
   that value); ``corrupt="value"``: the value stored under ``q`` becomes another value (contrast =
   the new value). Clean rows are the task's own samples (``task.sample(split, n, seed)``).
2. :func:`toyworld_pairs` (``toyworld``): one template of a fact kind, filled with a fact and with a
   second fact of the same kind whose subject has as many tokens and whose answer starts with a
   different token ("... containing dallas is" -> austin; "... containing seattle is" -> olympia).
   Facts are drawn with a ``torch.Generator(seed)``.
3. :func:`induction_pairs` (``induction``): ``<bos> x1..xL | x1..xk`` predicts ``x(k+1)``; the
   corrupted prompt changes ``x(k+1)`` in the first half, which flips the copied answer.
4. :func:`task_pairs`: the source by task name (and ``corrupt``), for studies and the CLI.
5. :meth:`PromptPairs.pad_left`: prepend ``<pad>`` tokens to reach a length (positions shift), e.g. to
   run several sources at one length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench.tasks.algorithmic import InductionTask, RecallTask
from workbench.tasks.base import Task
from workbench.tasks.tokenizer import Tokenizer
from workbench.tasks.toyworld_world import KINDS, TEMPLATE_TEXTS

RECALL_CORRUPTIONS = ("key", "value")
# The slot a toyworld pair changes, per kind (the others stay: a translation keeps its language).
SUBJECT_SLOTS = {"city_state": "city", "capital": "state", "two_hop": "city", "profession": "person",
                 "antonym_en": "word", "antonym_vel": "word", "antonym_zor": "word", "translation": "word",
                 "acronym": "org"}


@dataclass(frozen=True)
class PromptPairs:
    """``N`` clean / corrupted prompt pairs of one length ``T`` (module docstring)."""

    clean: torch.Tensor  # int64 [N, T]
    corrupted: torch.Tensor  # int64 [N, T]
    answer: torch.Tensor  # int64 [N], the clean prompt's answer
    contrast: torch.Tensor  # int64 [N], the corrupted prompt's answer
    positions: torch.Tensor  # int64 [N], where the answer is predicted
    clean_text: list[str] = field(default_factory=list)
    corrupted_text: list[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self):
        if self.clean.dim() != 2 or self.corrupted.dim() != 2:
            raise ValueError(f"prompt pairs need [N, T] tokens; got clean {tuple(self.clean.shape)}, "
                             f"corrupted {tuple(self.corrupted.shape)}")
        if self.clean.shape[1] != self.corrupted.shape[1]:
            raise ValueError(f"clean prompts have {self.clean.shape[1]} tokens but corrupted prompts have "
                             f"{self.corrupted.shape[1]}; patching needs equal lengths")
        n, t = self.clean.shape
        for name in ("corrupted", "answer", "contrast", "positions"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} rows but clean has {n}")
        if n and not (0 <= int(self.positions.min()) and int(self.positions.max()) < t):
            raise ValueError(f"answer positions {self.positions.tolist()} out of range 0..{t - 1}")

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def n_pos(self) -> int:
        return self.clean.shape[1]

    def __getitem__(self, idx) -> PromptPairs:
        rows = torch.arange(len(self))[idx].reshape(-1)
        pick = [self.clean_text[i] for i in rows] if self.clean_text else []
        pick_c = [self.corrupted_text[i] for i in rows] if self.corrupted_text else []
        return PromptPairs(self.clean[rows], self.corrupted[rows], self.answer[rows], self.contrast[rows],
                           self.positions[rows], pick, pick_c, self.source)

    def pad_left(self, length: int, pad_id: int = 0) -> PromptPairs:
        """Step 5: ``<pad>`` tokens prepended to reach ``length`` tokens (answer positions shift)."""
        extra = length - self.n_pos
        if extra < 0:
            raise ValueError(f"cannot pad {self.n_pos}-token prompts to {length} tokens")
        pad = torch.full((len(self), extra), pad_id, dtype=self.clean.dtype)
        return PromptPairs(torch.cat([pad, self.clean], 1), torch.cat([pad, self.corrupted], 1), self.answer,
                           self.contrast, self.positions + extra, self.clean_text, self.corrupted_text,
                           self.source)


def _text(tokenizer: Tokenizer, tokens: torch.Tensor) -> list[str]:
    return [tokenizer.decode(row.tolist()) for row in tokens]


def _build(tokenizer: Tokenizer, clean, corrupted, answer, contrast, source: str) -> PromptPairs:
    n, t = clean.shape
    return PromptPairs(clean, corrupted, torch.as_tensor(answer).long(), torch.as_tensor(contrast).long(),
                       torch.full((n,), t - 1, dtype=torch.int64), _text(tokenizer, clean),
                       _text(tokenizer, corrupted), source)


def pairs_from_text(tokenizer: Tokenizer, clean: list[str], corrupted: list[str], answers: list[str],
                    contrasts: list[str]) -> PromptPairs:
    """Typed pairs (each prompt's last token predicts the answer); unequal lengths are an error."""
    if not len(clean) == len(corrupted) == len(answers) == len(contrasts):
        raise ValueError(f"need as many corrupted prompts, answers and contrasts as clean prompts; got "
                         f"{len(clean)}, {len(corrupted)}, {len(answers)}, {len(contrasts)}")
    rows_a = [[tokenizer.bos_id, *tokenizer.encode(text)] for text in clean]
    rows_b = [[tokenizer.bos_id, *tokenizer.encode(text)] for text in corrupted]
    for i, (a, b) in enumerate(zip(rows_a, rows_b, strict=True)):
        if len(a) != len(b):
            raise ValueError(f"pair {i}: the clean prompt has {len(a)} tokens (with <bos>) but the corrupted "
                             f"prompt has {len(b)}; patching needs equal lengths")
    lengths = sorted({len(a) for a in rows_a})
    if len(lengths) > 1:
        raise ValueError(f"prompts of different pairs have different lengths {lengths}; give one length")
    ids = [tokenizer.encode([w])[0] for w in answers], [tokenizer.encode([w])[0] for w in contrasts]
    return _build(tokenizer, torch.tensor(rows_a), torch.tensor(rows_b), *ids, "text")


def _pick_other(gen: torch.Generator, allowed: torch.Tensor) -> torch.Tensor:
    """Per row, a uniform index among ``allowed [N, K]`` (True entries); -1 where a row has none."""
    score = torch.rand(allowed.shape, generator=gen).masked_fill(~allowed, -1.0)
    best = score.argmax(1)
    return torch.where(allowed.any(1), best, torch.full_like(best, -1))


def recall_pairs(task: RecallTask, n: int, seed: int = 0, corrupt: str = "key", split: str = "test") -> PromptPairs:
    """Step 1: recall prompts ``<bos> k > v ... ? q`` (27 tokens with 8 pairs) and their corruptions."""
    if corrupt not in RECALL_CORRUPTIONS:
        raise ValueError(f"unknown recall corruption {corrupt!r}; choose one of: {', '.join(RECALL_CORRUPTIONS)}")
    single = RecallTask(n_pairs=task.n_pairs, n_keys=task.n_keys, n_values=task.n_values,
                        test_fraction=task.test_fraction)  # recall_multi: its prompt up to the first query
    gen = torch.Generator().manual_seed(seed)
    rows = single.sample(split, 2 * n + 16, seed).tokens  # spare rows: a key corruption can be impossible
    prompt, answer = rows[:, :-1].clone(), rows[:, -1]
    keys, values = prompt[:, 1:-2:3], prompt[:, 3:-2:3]  # [R, n_pairs]
    queried = (keys == prompt[:, -1:]).float().argmax(1)
    corrupted = prompt.clone()
    if corrupt == "key":
        other = _pick_other(gen, values != answer[:, None])
        keep = other >= 0
        other = other.clamp_min(0)
        corrupted[:, -1] = keys.gather(1, other[:, None]).squeeze(1)
        contrast = values.gather(1, other[:, None]).squeeze(1)
    else:
        value_ids = single.value_ids
        other = _pick_other(gen, value_ids[None, :] != answer[:, None])
        keep = other >= 0
        contrast = value_ids[other.clamp_min(0)]
        corrupted[torch.arange(len(rows)), 3 + 3 * queried] = contrast
    if int(keep.sum()) < n:
        raise ValueError(f"only {int(keep.sum())} of the {n} recall pairs asked for can be corrupted by {corrupt}")
    idx = keep.nonzero().squeeze(1)[:n]
    return _build(single.tokenizer, prompt[idx], corrupted[idx], answer[idx], contrast[idx], f"recall:{corrupt}")


def toyworld_pairs(task: Task, kind: str, n: int, seed: int = 0, template: int = 0) -> PromptPairs:
    """Step 2: one template of a fact kind, the subject swapped for one with another answer."""
    from workbench.tasks.toyworld import kind_facts

    if kind not in SUBJECT_SLOTS:
        facts_kinds = [k for k in KINDS if k in SUBJECT_SLOTS]
        raise ValueError(f"toyworld kind {kind!r} has no prompt pairs; choose one of: {', '.join(facts_kinds)}")
    answer_slot, texts = TEMPLATE_TEXTS[kind]
    if not 0 <= template < len(texts):
        raise ValueError(f"template {template} out of range: kind {kind!r} has {len(texts)} templates "
                         f"(0..{len(texts) - 1})")
    subject, text, tok = SUBJECT_SLOTS[kind], texts[template], task.tokenizer
    facts = kind_facts(kind)

    def render(fact) -> list[int]:
        words = [" ".join(fact[w[1:-1]]) if w.startswith("{") else w for w in text.split()]
        return [tok.bos_id, *tok.encode(" ".join(words))]

    def compatible(a, b) -> bool:
        same_rest = all(a[s] == b[s] for s in a if s not in (subject, answer_slot))
        return same_rest and len(a[subject]) == len(b[subject]) and a[answer_slot][0] != b[answer_slot][0]

    gen = torch.Generator().manual_seed(seed)
    clean, corrupted, answer, contrast = [], [], [], []
    for i in torch.randint(len(facts), (n,), generator=gen).tolist():
        options = [j for j, other in enumerate(facts) if compatible(facts[i], other)]
        j = options[int(torch.randint(len(options), (1,), generator=gen))]
        clean.append(render(facts[i]))
        corrupted.append(render(facts[j]))
        answer.append(tok.encode([facts[i][answer_slot][0]])[0])
        contrast.append(tok.encode([facts[j][answer_slot][0]])[0])
    return _build(tok, torch.tensor(clean), torch.tensor(corrupted), answer, contrast, f"toyworld:{kind}")


def induction_pairs(task: InductionTask, n: int, seed: int = 0, copied: int | None = None,
                    split: str = "test") -> PromptPairs:
    """Step 3: ``<bos> x1..xL | x1..xk`` -> ``x(k+1)``; the corruption changes ``x(k+1)`` in the prefix."""
    length = task.length
    copied = length // 2 if copied is None else copied
    if not 0 <= copied < length:
        raise ValueError(f"copied tokens {copied} out of range 0..{length - 1} for induction length {length}")
    rows = task.sample(split, n, seed).tokens
    prompt = rows[:, : length + 2 + copied].clone()
    answer = rows[:, length + 2 + copied]
    symbols = task.ids(task.input_names())
    other = _pick_other(torch.Generator().manual_seed(seed), symbols[None, :] != answer[:, None])
    contrast = symbols[other]
    corrupted = prompt.clone()
    corrupted[:, 1 + copied] = contrast
    return _build(task.tokenizer, prompt, corrupted, answer, contrast, "induction")


def task_pairs(task: Task, n: int, seed: int = 0, corrupt: str | None = None, **options) -> PromptPairs:
    """Step 4: pairs for ``task``: recall (``corrupt`` key/value), toyworld (``corrupt`` = the kind,
    default two_hop; ``template=``), induction."""
    if isinstance(task, RecallTask):
        return recall_pairs(task, n, seed, corrupt or "key", **options)
    if task.name == "toyworld":
        return toyworld_pairs(task, corrupt or "two_hop", n, seed, **options)
    if isinstance(task, InductionTask) and task.name == "induction":
        return induction_pairs(task, n, seed, **options)
    raise ValueError(f"task {task.name!r} has no prompt-pair source; choose one of: recall, recall_multi, "
                     "toyworld, induction")


__all__ = [
    "RECALL_CORRUPTIONS",
    "SUBJECT_SLOTS",
    "PromptPairs",
    "induction_pairs",
    "pairs_from_text",
    "recall_pairs",
    "task_pairs",
    "toyworld_pairs",
]
