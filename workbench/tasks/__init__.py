"""The task suite: algorithmic generators and the toyworld corpus, behind one registry.

``make_task("recall", n_pairs=4)`` builds a task; ``make_task(t.name, **t.params())`` rebuilds an
equal one (same vocabulary, same samples), which is how a model's card names its task.
Every task's format is documented in its module: :mod:`.algorithmic`, :mod:`.sequences`,
:mod:`.toyworld`.
"""

from __future__ import annotations

import functools
import inspect

from workbench.fields import Field, check_values, fields_from_defaults
from workbench.tasks.algorithmic import (
    HistogramTask,
    InductionTask,
    RecallMultiTask,
    RecallTask,
    ReverseTask,
    SortTask,
)
from workbench.tasks.base import Batch, Task, answer_hits, exact_match, masked_token_loss
from workbench.tasks.bigram import bigram_perplexity
from workbench.tasks.sequences import AdditionTask, DyckTask, FractionPrevTask, SelectiveCopyTask
from workbench.tasks.tokenizer import Tokenizer
from workbench.tasks.toyworld import ToyworldTask

_TASK_CLASSES: tuple[type[Task], ...] = (
    RecallTask,
    RecallMultiTask,
    InductionTask,
    ReverseTask,
    SortTask,
    HistogramTask,
    FractionPrevTask,
    DyckTask,
    AdditionTask,
    SelectiveCopyTask,
    ToyworldTask,
)
TASKS: dict[str, type[Task]] = {cls.name: cls for cls in sorted(_TASK_CLASSES, key=lambda c: c.name)}


def task_names() -> list[str]:
    return sorted(TASKS)


def task_param_names(name: str) -> list[str]:
    """The keyword arguments a task accepts (its constructor's parameters)."""
    cls = _task_class(name)
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


@functools.cache
def task_fields(name: str) -> dict[str, Field]:
    """Each parameter's type and range (:mod:`workbench.fields`): from the default task's ``params()``,
    and the constructor's defaults for parameters ``params()`` leaves out."""
    cls = _task_class(name)
    signature = inspect.signature(cls.__init__).parameters
    defaults = {p: signature[p].default for p in task_param_names(name)} | cls().params()
    return fields_from_defaults(defaults)


def _task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(task_names())}")
    return TASKS[name]


def make_task(name: str, **params) -> Task:
    """Build a registered task; unknown names and parameters are errors that list the choices."""
    cls = _task_class(name)
    accepted = task_param_names(name)
    unknown = [p for p in params if p not in accepted]
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for task {name!r}; "
            f"accepted: {', '.join(accepted)}"
        )
    return cls(**check_values(task_fields(name), params, f"task {name!r}: "))


__all__ = [
    "TASKS",
    "Batch",
    "Task",
    "Tokenizer",
    "answer_hits",
    "bigram_perplexity",
    "exact_match",
    "make_task",
    "masked_token_loss",
    "task_fields",
    "task_names",
    "task_param_names",
]
