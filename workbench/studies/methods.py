"""The methods a study step can name, each an adapter from spec parameters to an intervention module.

A :class:`Method` declares its parameters with defaults (the default's type is the parameter's type;
``None`` admits anything) and a ``run(ctx) -> UnitResult`` that calls ``workbench.interventions`` and
returns a tidy table, a figure and a few summary numbers. :func:`check_step` refuses unknown methods and
parameters, naming the choices, before a study writes anything.

Prompt pairs come from the study's ``prompts`` block: either a task source ``{task, corrupt, n, split,
template}`` (``task`` defaults to the model card's evaluation task) or typed pairs ``{clean: [...],
corrupted: [...], answer: [...], contrast: [...]}`` (space-separated tokens; the last token of each prompt
predicts the answer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

PROMPT_KEYS = {"task": None, "corrupt": None, "n": 16, "split": "test", "template": None, "task_params": None,
               "clean": None, "corrupted": None, "answer": None, "contrast": None}
TYPED_KEYS = ("clean", "corrupted", "answer", "contrast")


@dataclass
class UnitResult:
    table: pd.DataFrame
    figure: go.Figure | None
    summary: dict


@dataclass
class UnitContext:
    """One (step, model) unit of a study: its model folder, prompt spec, parameters and seed."""

    model_path: Path
    prompts: dict
    params: dict
    seed: int
    log: Callable[[str], None] = field(default=lambda _: None)
    # model folder -> loaded bundle; a study passes one dict to all its units so each model loads once
    bundles: dict = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def bundle(self):
        from workbench.store.model_files import load_model_folder

        if self.model_path not in self.bundles:
            self.bundles[self.model_path] = load_model_folder(self.model_path)
        return self.bundles[self.model_path]

    @cached_property
    def pairs(self):
        from workbench.interventions.pairs import pairs_from_text, task_pairs
        from workbench.tasks import make_task
        from workbench.zoo.build import task_from_spec

        unknown = sorted(set(self.prompts) - set(PROMPT_KEYS))
        if unknown:
            raise ValueError(f"unknown prompts key(s) {unknown}; choose from: {', '.join(PROMPT_KEYS)}")
        p = {**PROMPT_KEYS, **self.prompts}
        if any(p[k] is not None for k in TYPED_KEYS):
            missing = [k for k in TYPED_KEYS if p[k] is None]
            if missing:
                raise ValueError(f"typed prompt pairs need {', '.join(TYPED_KEYS)}; missing {', '.join(missing)}")
            return pairs_from_text(self.bundle.tokenizer, *[list(p[k]) for k in TYPED_KEYS])
        if p["task"]:
            task = make_task(p["task"], **(p["task_params"] or {}))
        else:
            spec = self.bundle.card.get("eval_task") or self.bundle.card.get("task")
            if spec is None:
                raise ValueError(f"{self.model_path}/card.json names no task; give prompts: {{task: ...}}")
            task = task_from_spec(spec)
        if task.tokenizer.vocab != self.bundle.tokenizer.vocab:
            raise ValueError(f"task {task.name!r} does not share the vocabulary of model {self.model_path.name}")
        options = {"template": p["template"]} if p["template"] is not None else {}
        if task.name in ("recall", "recall_multi"):
            options = {"split": p["split"]}
        return task_pairs(task, int(p["n"]), self.seed, p["corrupt"], **options)

    def tokens(self, row: int = 0) -> list[str]:
        return self.bundle.tokenizer.tokens(self.pairs.clean[row])


@dataclass(frozen=True)
class Method:
    name: str
    params: dict
    run: Callable[[UnitContext], UnitResult]
    doc: str


METHODS: dict[str, Method] = {}


def method(name: str, doc: str, **params):
    """Register ``run`` under ``name`` with its parameters' defaults (``label`` is always accepted)."""
    def register(run):
        METHODS[name] = Method(name, {"label": None, **params}, run, doc)
        return run
    return register


def _type_ok(value, default) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool))


def check_step(name: str, params: dict, where: str) -> dict:
    """``params`` of a step, checked against the method's declared parameters."""
    load_adapters()
    if name not in METHODS:
        raise ValueError(f"unknown study method {name!r} in {where}; choose one of: {', '.join(sorted(METHODS))}")
    declared = METHODS[name].params
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for method {name!r} in {where}; "
                         f"choose from: {', '.join(sorted(declared))}")
    for key, value in params.items():
        if not _type_ok(value, declared[key]):
            raise ValueError(f"parameter {key!r} of method {name!r} in {where} expects "
                             f"{type(declared[key]).__name__}, got {value!r}")
    return {**{k: v for k, v in declared.items() if v is not None}, **params}


def load_adapters() -> None:
    from workbench.studies import adapters  # noqa: F401  (registers the methods)
