"""Help with typing a prompt in a model's own vocabulary: search the vocabulary, example prompts drawn
from the model's task, and near matches for a word the vocabulary lacks. Plain Python, no streamlit:
the build form (``graph_sources._prompt_box``) and the Features page's "activations on my text" box use it.

Example prompts (:func:`example_prompts`):

1. The tasks are the model card's ``task`` and, when it differs, its ``eval_task`` (a recall model is
   trained on ``recall_multi`` and measured on ``recall``).
2. A toyworld task gives one prompt per kind of a short list it holds: a fact (``capital``, else
   ``city_state``, ...), a two-hop question, an antonym, a word problem. Any other task gives one prompt.
3. Each prompt is row 0 of the task's *test* split (with ``seed``), cut before its last answer token: the
   model is asked to produce that answer. Prompts whose words the model's vocabulary lacks are left out.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from workbench.tasks.tokenizer import SPECIALS

SEARCH_LIMIT = 60
# toyworld kinds offered as examples, in this order: (kind, what the example is)
TOYWORLD_EXAMPLES = (("capital", "a toyworld fact"), ("city_state", "a toyworld fact"),
                     ("two_hop", "a two-hop question"), ("antonym_en", "an antonym"),
                     ("arithmetic", "a word problem"))
TASK_EXAMPLES = {"recall": "a recall prompt", "recall_multi": "a recall prompt (several queries)"}


def search_vocabulary(vocab: Sequence[str], query: str, limit: int = SEARCH_LIMIT) -> tuple[list[str], int]:
    """(up to ``limit`` tokens matching ``query``, how many match in all): whole-token matches first, then
    tokens starting with it, then tokens containing it; case-insensitive. Special tokens are left out;
    an empty query matches every token, in vocabulary order."""
    tokens = [t for t in vocab if t not in SPECIALS]
    wanted = query.strip().casefold()
    if not wanted:
        return tokens[:limit], len(tokens)
    ranked = []
    for i, token in enumerate(tokens):
        folded = token.casefold()
        rank = 0 if folded == wanted else 1 if folded.startswith(wanted) else 2 if wanted in folded else None
        if rank is not None:
            ranked.append((rank, i, token))
    ranked.sort()
    return [token for _, _, token in ranked[:limit]], len(ranked)


def near_matches(word: str, vocab: Sequence[str], n: int = 3) -> list[str]:
    """Up to ``n`` vocabulary tokens close to ``word``: the same word in another case first, then
    difflib's closest (ratio >= 0.6) on the lower-cased forms."""
    tokens = [t for t in vocab if t not in SPECIALS]
    same_case = [t for t in tokens if t.casefold() == word.casefold() and t != word]
    by_folded: dict[str, str] = {}
    for token in tokens:
        by_folded.setdefault(token.casefold(), token)
    close = difflib.get_close_matches(word.casefold(), list(by_folded), n=n + len(same_case), cutoff=0.6)
    out = same_case + [by_folded[c] for c in close if by_folded[c] not in same_case]
    return out[:n]


def unknown_words(prompt: str, vocab: Sequence[str]) -> dict[str, list[str]]:
    """Each word of ``prompt`` (split on white space) that ``vocab`` lacks, with its near matches, in order."""
    known = set(vocab)
    return {word: near_matches(word, vocab) for word in dict.fromkeys(prompt.split()) if word not in known}


def unknown_words_message(unknown: dict[str, list[str]]) -> str:
    """One line per unknown word: ``'Austin' is not in the vocabulary; did you mean 'austin'?``."""
    lines = []
    for word, close in unknown.items():
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "; no close match: search the vocabulary"
        lines.append(f"{word!r} is not in the model's vocabulary{hint}")
    return "\n".join(lines)


def _task_prompt(name: str, params: dict, seed: int) -> str:
    """Row 0 of the task's test split, cut before its last answer token (step 3)."""
    from workbench.tasks import make_task

    task = make_task(name, **params)
    batch = task.sample("test", 1, seed)
    answers = batch.answer_mask[0].nonzero().flatten()
    end = int(answers[-1]) if len(answers) else batch.tokens.shape[1] - 1
    return task.tokenizer.decode(batch.tokens[0, :end].tolist())


def _task_specs(card: dict) -> list[dict]:
    specs = []
    for field in ("task", "eval_task"):
        spec = card.get(field)
        if isinstance(spec, dict) and spec.get("name") and spec not in specs:
            specs.append(dict(spec))
    return specs


def _examples_of(spec: dict, seed: int) -> list[tuple[str, str]]:
    name = str(spec.pop("name"))
    if name != "toyworld":
        label = TASK_EXAMPLES.get(name, f"a {name} prompt")
        return [(label, _task_prompt(name, spec, seed))]
    kinds = spec.get("kinds") or [kind for kind, _ in TOYWORLD_EXAMPLES]
    kinds = kinds.split(",") if isinstance(kinds, str) else list(kinds)
    out, labels = [], set()
    for kind, label in TOYWORLD_EXAMPLES:
        if kind in kinds and label not in labels:  # one fact is enough: capital, else city_state
            labels.add(label)
            out.append((label, _task_prompt(name, spec | {"kinds": [kind]}, seed)))
    return out


def example_prompts(card: dict, vocab: Sequence[str] | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """(what it is, prompt) pairs from the model's own task (module docstring); [] for a card naming no
    task the workbench knows. With ``vocab`` only prompts made of its tokens are kept."""
    known = set(vocab) if vocab is not None else None
    out: list[tuple[str, str]] = []
    for spec in _task_specs(card):
        try:
            found = _examples_of(spec, seed)
        except (ValueError, KeyError, TypeError):  # a task the workbench does not know, or bad parameters
            continue
        for label, prompt in found:
            fits = known is None or all(w in known for w in prompt.split())
            if fits and prompt and prompt not in [p for _, p in out]:
                out.append((label, prompt))
    return out


__all__ = ["example_prompts", "near_matches", "search_vocabulary", "unknown_words", "unknown_words_message"]
