"""A study spec: a small YAML file that says which models, which prompts, which interventions.

::

    name: recall-patching            # folder and catalog name (a name, not a path)
    seed: 0                          # every sampler and noise draw derives from it
    models: [transformer-recall, models/mamba-recall]   # zoo names or model folders
    prompts: {task: recall, kind: key, n: 32}           # prompt-pair source (see ``pairs``)
    quick: {prompts: {n: 4}}         # overrides merged in by ``wb study run --quick``
    steps:
      - method: patch                # one of workbench.studies.methods.METHODS
        hook: resid_pre              # the method's own parameters, checked against its defaults
        direction: denoise
      - method: patch
        prompts: {corrupt: value}    # a step may change the study's prompt source

Loading checks every key: an unknown top-level key, method or method parameter is an error naming it
and the choices, before anything runs or is written. The spec's canonical JSON hashes to the study's
identity, so a resumed run never mixes results of two different specs.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

TOP_LEVEL_KEYS = ("name", "seed", "models", "prompts", "quick", "steps", "description")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")


@dataclass(frozen=True)
class Step:
    method: str
    params: dict
    prompts: dict = field(default_factory=dict)  # this step's changes to the study's prompt source

    @property
    def label(self) -> str:
        return self.params.get("label") or self.method


@dataclass(frozen=True)
class StudySpec:
    name: str
    seed: int
    models: list[str]
    prompts: dict
    steps: list[Step]
    description: str = ""
    quick: dict = field(default_factory=dict)
    source: str = ""

    def canonical(self) -> dict:
        return {"name": self.name, "seed": self.seed, "models": self.models, "prompts": self.prompts,
                "steps": [{"method": s.method, **s.params, **({"prompts": s.prompts} if s.prompts else {})}
                          for s in self.steps]}

    def digest(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def quick_version(self) -> StudySpec:
        """The spec with its ``quick`` overrides merged in (smaller prompt sets, fewer samples)."""
        prompts = {**self.prompts, **self.quick.get("prompts", {})}
        step_over = self.quick.get("steps", {})
        steps = [Step(s.method, {**s.params, **step_over.get(s.method, {})}, s.prompts) for s in self.steps]
        return StudySpec(f"{self.name}-quick", self.seed, self.quick.get("models", self.models), prompts, steps,
                         self.description, {}, self.source)


def _unknown(keys, allowed, where: str) -> None:
    bad = sorted(set(keys) - set(allowed))
    if bad:
        raise ValueError(f"unknown key(s) {bad} in {where}; choose from: {', '.join(sorted(allowed))}")


def _check_name(name) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(f"study name {name!r} must be letters, digits, '-', '_' or '.', starting with a letter "
                         "or digit (it names a folder)")
    return name


def parse_spec(data: dict, source: str = "<spec>") -> StudySpec:
    """Validate a loaded YAML mapping (see the module docstring) into a :class:`StudySpec`."""
    from workbench.studies.methods import PROMPT_KEYS, check_step

    if not isinstance(data, dict):
        raise ValueError(f"study spec {source} must be a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")  # noqa: TRY004 (a bad spec file)
    _unknown(data, TOP_LEVEL_KEYS, f"study spec {source}")
    for required in ("name", "models", "steps"):
        if required not in data:
            raise ValueError(f"study spec {source} lacks {required!r}")
    models = data["models"] if isinstance(data["models"], list) else [data["models"]]
    if not models or not all(isinstance(m, str) for m in models):
        raise ValueError(f"study spec {source}: 'models' must be a list of zoo names or model folders")
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"study spec {source}: 'seed' must be an integer, got {seed!r}")  # noqa: TRY004 (a bad spec file)
    if not isinstance(data["steps"], list) or not data["steps"]:
        raise ValueError(f"study spec {source}: 'steps' must be a non-empty list of {{method: ..., ...}}")
    steps = []
    for i, raw in enumerate(data["steps"]):
        if not isinstance(raw, dict) or "method" not in raw:
            raise ValueError(f"study spec {source}: step {i} must be a mapping with a 'method'")
        params = {k: v for k, v in raw.items() if k not in ("method", "prompts")}
        step_prompts = raw.get("prompts") or {}
        if not isinstance(step_prompts, dict):
            raise ValueError(f"study spec {source}: 'prompts' of step {i} must be a mapping")  # noqa: TRY004
        _unknown(step_prompts, PROMPT_KEYS, f"'prompts' of step {i} of {source}")
        steps.append(Step(raw["method"], check_step(raw["method"], params, f"step {i} of {source}"), step_prompts))
    quick = data.get("quick") or {}
    _unknown(quick, ("prompts", "steps", "models"), f"'quick' of {source}")
    prompts = data.get("prompts") or {}
    if not isinstance(prompts, dict):
        raise ValueError(f"study spec {source}: 'prompts' must be a mapping like {{task: recall, n: 32}}")  # noqa: TRY004 (a bad spec file)
    _unknown(prompts, PROMPT_KEYS, f"'prompts' of {source}")
    _unknown(quick.get("prompts") or {}, PROMPT_KEYS, f"'quick: prompts' of {source}")
    return StudySpec(_check_name(data["name"]), seed, models, prompts, steps, str(data.get("description", "")),
                     quick, source)


def load_spec(path: str | Path) -> StudySpec:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no study spec at {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"study spec {path} is not valid YAML: {err}") from None
    return parse_spec(data, str(path))
