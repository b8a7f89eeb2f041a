"""Library programs in their tasks' causal-LM formats: compiled and trained models read the same rows.

A task row is ``<bos> t1 .. t_{T-1}``; a trained causal LM reads it whole (teacher forcing) and its
logits at position p predict token p + 1. The convention that makes a compiled program line up with it:

1. **Input**: ``xs = row[1:-1]``, the row after ``<bos>`` without its last token (that token is only
   ever predicted). The compiler's ``BOS`` stands where ``<bos>`` stood, so the compiled model's
   position p is the trained model's position p, and ``len(xs) == task.seq_len - 2`` is the program's
   ``max_seq_len``.
2. **Output**: the program's value at ``xs`` index i is its prediction of ``row[i + 2]``; the answer
   is read at ``xs`` indices ``answer_positions - 2`` and formatted as task tokens.

Per task (L = length, D = n_digits; indices into ``xs``):

- ``reverse`` -> ``reverse`` (tracr's, on the whole of xs = ``x1..xL | y1..y_{L-1}``, length 2L): index
  L + j holds ``xs[L - 1 - j]``, the (j + 1)-th answer token. Nothing task-specific in the program.
- ``induction`` -> ``induction`` = ``shift_by(L)``: index p holds ``xs[p - L]``. Causal.
- ``histogram`` -> ``histogram`` with ``offset=L``: tracr's histogram (letters never equal ``|`` or the
  count tokens), shifted L places so the count of x_{j+1} sits at index L + j. Counts become ``"3"``.
- ``sort`` -> ``sort`` (``sort_unique`` when ``distinct=True``) with ``prompt_len=L``: positions from
  the ``|`` on get keys below every number, so the L of them sort first and the sorted prompt lands at
  indices L..2L-1.
- ``fraction_prev`` -> ``frac_prevs`` of ``tokens == "x"``, read at the ``=`` (index L), where it is
  count / (L + 1). Nearest match: the bucket ``fK`` (K = floor(n_buckets * count / L + 1/2)) is
  computed from it by :func:`task_answer`, since a rounding Map on a numerical mean is the compiler's
  weakest spot and the comparison wants the share itself as a variable.
- ``dyck`` -> ``shuffle_dyck`` (prefix form) read at the ``=``: 1 -> ``T``, 0 -> ``F``. Causal.
- ``recall`` / ``recall_multi`` -> ``recall`` (find the earlier key, then the token two after it),
  read at each query key's index. Causal. Padded leading pairs (``min_pairs``) are ``<pad>`` tokens,
  which join the vocabulary.
- ``addition`` -> ``adder`` (or ``backdoor_adder``) with ``answer_at=2D+1``: s0 at the ``=``, s_j at
  the index of s_{j-1}; digits become ``"0"``..``"9"``. Only ``reverse_sum=False``: the sum's most
  significant digit comes first in the task, and the adder computes every digit at once.
  The adder is bidirectional (each carry looks right), so causal mode refuses it, as it must.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from workbench.rasp.library import LibraryProgram, make_program
from workbench.tasks import Task
from workbench.tasks.tokenizer import BOS


def _fraction_bucket(task: Task, share: float) -> str:
    count = round(share * (task.length + 1))  # read at the "=", which is one more position
    return f"f{(2 * task.n_buckets * count + task.length) // (2 * task.length)}"


def _addition_params(task: Task) -> dict:
    if task.reverse_sum:
        raise ValueError("addition with reverse_sum=True has no library program: the adder writes the "
                         "most significant digit first; use reverse_sum=False")
    return {"n_digits": task.n_digits, "answer_at": 2 * task.n_digits + 1}


def _recall_params(task: Task) -> dict:
    params = {"n_pairs": task.n_pairs, "n_keys": task.n_keys, "n_values": task.n_values}
    if task.name == "recall_multi":
        return params | {"n_queries": task.n_queries}
    return params | {"min_pairs": task.min_pairs}


_SAME = (lambda task, value: value)
# task name -> (default program, {program: params from the task}, value -> answer token)
BINDINGS: dict[str, tuple[str, dict[str, Callable[[Task], dict]], Callable[[Task, Any], Any]]] = {
    "reverse": ("reverse", {"reverse": lambda t: {"length": t.length, "n_symbols": t.n_symbols}}, _SAME),
    "induction": ("induction", {"induction": lambda t: {"length": t.length, "n_symbols": t.n_symbols}},
                  _SAME),
    "histogram": ("histogram", {"histogram": lambda t: {"length": t.length, "n_symbols": t.n_symbols,
                                                        "offset": t.length}}, lambda t, v: str(v)),
    "sort": ("sort", {name: (lambda t: {"length": t.length, "n_values": t.n_values, "prompt_len": t.length})
                      for name in ("sort", "sort_unique")}, _SAME),
    "fraction_prev": ("frac_prevs", {"frac_prevs": lambda t: {"length": t.length, "n_symbols": t.n_symbols}},
                      _fraction_bucket),
    "dyck": ("shuffle_dyck", {"shuffle_dyck": lambda t: {"length": t.length, "n_types": t.n_types}},
             lambda t, v: "T" if v == 1 else "F"),
    "recall": ("recall", {"recall": _recall_params}, _SAME),
    "recall_multi": ("recall", {"recall": _recall_params}, _SAME),
    "addition": ("adder", {"adder": _addition_params, "backdoor_adder": _addition_params},
                 lambda t, v: str(v) if isinstance(v, int) else v),
}


def _binding(task: Task):
    if task.name not in BINDINGS:
        raise ValueError(f"task {task.name!r} has no library program; "
                         f"tasks with one: {', '.join(sorted(BINDINGS))}")
    return BINDINGS[task.name]


def task_program(task: Task, name: str | None = None) -> LibraryProgram:
    """The library program in ``task``'s format (its default one, or ``name`` among those that fit)."""
    default, builders, _ = _binding(task)
    if name is None:  # repeated numbers need the tie-breaking sort; distinct ones sort as they are
        name = "sort_unique" if task.name == "sort" and task.distinct else default
    if name not in builders:
        raise ValueError(f"program {name!r} does not serve task {task.name!r}; "
                         f"choose one of: {', '.join(builders)}")
    return make_program(name, **builders[name](task))


def task_input(task: Task, row: Sequence[int]) -> list[str]:
    """The program's input for one task row of token ids: the row after ``<bos>``, without its last token."""
    tokens = task.tokenizer.tokens(row)
    if len(tokens) != task.seq_len or tokens[0] != BOS:
        raise ValueError(f"a {task.name!r} row has {task.seq_len} tokens starting with {BOS!r}; "
                         f"got {tokens[:3]}...")
    return tokens[1:-1]


def answer_indices(task: Task) -> list[int]:
    """Indices into the program's input (and output) where the answer tokens are predicted."""
    return [p - 2 for p in task.answer_positions()]


def answer_token(task: Task, value: Any) -> Any:
    """The task token the program's output ``value`` is written as (the binding's format)."""
    return _binding(task)[2](task, value)


def task_answer(task: Task, output: Sequence[Any]) -> list[Any]:
    """The task's answer tokens from the program's output on :func:`task_input`."""
    return [answer_token(task, output[i]) for i in answer_indices(task)]


def task_target(task: Task, row: Sequence[int]) -> list[str]:
    """The answer tokens the task itself holds in ``row``."""
    return task.tokenizer.tokens([row[p] for p in task.answer_positions()])
