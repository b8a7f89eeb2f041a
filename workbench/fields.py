"""Typed config fields: one place that says what each ``key=value`` may hold, for every config.

The model configs (an architecture's ``DEFAULTS``), the train config (``TrainConfig``) and the task
parameters (``task.params()``) are plain values; this module gives each field a :class:`Field` (its
type and range) and checks values against it, from the command line (``--set``, ``--train``,
``--task-param``), from a JSON file, or from code.

1. A field's type is its default's type (int, float, bool, str, list); a float field accepts ints.
2. Its range comes from :data:`RULES` when the name is listed there; otherwise an int is a count or a
   size and so positive, a float is any finite number, a string is free unless the caller names its
   choices (``act_fn``: the activations the architecture implements).
3. :meth:`Field.check` takes a value (from JSON or code) and returns it normalised (ints in a float
   field become floats); :meth:`Field.parse` takes command-line text. Both raise ``ValueError`` naming
   the field, what it expects and what it got: ``d_model expects a positive integer, got 'abc'``.
4. :func:`parse_assignments` turns ``["d_model=128"]`` into ``{"d_model": 128}`` through the fields,
   prefixing errors with the option and the item (``--set d_model=abc: d_model expects ...``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

_INT = re.compile(r"[+-]?\d+")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True)
class Field:
    """What one config field may hold: ``kind`` (int, float, bool, str, list, or None for anything),
    an optional range ``[low, high]`` (ends excluded with ``open_low``/``open_high``), string
    ``choices``, literal values accepted as they are (``also``: None, ``"auto"``), and a list's ``item``."""

    kind: type | None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple = ()
    also: tuple = ()
    item: Field | None = None

    def expects(self) -> str:
        if self.kind is None:
            return "any value"
        base = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
                list: f"a list, each item {self.item.expects() if self.item else 'any value'}"}[self.kind]
        if self.kind is int and self.low in (0, 1) and self.high is None:
            base = "a positive integer" if self.low == 1 else "a non-negative integer"
        elif self.kind in (int, float) and (self.low is not None or self.high is not None):
            base += f" {self._range()}"
        if self.choices:
            base = f"one of: {', '.join(map(str, self.choices))}"
        extras = [json.dumps(a) if a is None else repr(a) for a in self.also]
        return " or ".join([base, *extras])

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        return f"{'<' if self.open_high else '<='} {self.high:g}"

    def _in_range(self, x: float) -> bool:
        low_ok = self.low is None or (x > self.low if self.open_low else x >= self.low)
        return low_ok and (self.high is None or (x < self.high if self.open_high else x <= self.high))

    def _is_also(self, value: Any) -> bool:
        return any(value is a or (type(value) is type(a) and value == a) for a in self.also)

    def check(self, name: str, value: Any) -> Any:
        """``value`` normalised, or ``ValueError``: ``{name} expects {what}, got {value!r}``."""
        if self.kind is None or self._is_also(value):
            return value
        out = self._normalise(name, value)
        if out is _BAD:
            raise ValueError(f"{name} expects {self.expects()}, got {value!r}")
        return out

    def _normalise(self, name: str, value: Any) -> Any:
        if self.kind is bool:
            return value if isinstance(value, bool) else _BAD
        if self.kind is list:
            if isinstance(value, str) and self.item is not None and self.item.kind is str:
                return value  # "a,b": the owner splits a comma list itself
            if not isinstance(value, list | tuple):
                return _BAD
            return [self.item.check(f"{name}[{i}]", v) for i, v in enumerate(value)] if self.item else list(value)
        if self.kind is str:
            return value if isinstance(value, str) and (not self.choices or value in self.choices) else _BAD
        if isinstance(value, bool) or not isinstance(value, int | float):
            return _BAD
        if self.kind is int and not isinstance(value, int):
            return _BAD
        number = float(value) if self.kind is float else value
        return number if math.isfinite(number) and self._in_range(number) else _BAD

    def parse(self, name: str, text: str) -> Any:
        """The value command-line ``text`` stands for, checked; errors quote the text as given."""
        try:
            return self.check(name, self._from_text(text.strip()))
        except ValueError:
            raise ValueError(f"{name} expects {self.expects()}, got {text!r}") from None

    def _from_text(self, text: str) -> Any:
        if None in self.also and text.lower() in ("null", "none"):
            return None
        if text in self.also or self.kind is str:
            return text
        if self.kind is None:
            return _json_or_text(text)
        if self.kind is bool:
            return True if text.lower() in _TRUE else False if text.lower() in _FALSE else _BAD
        if self.kind is int:
            return int(text) if _INT.fullmatch(text) else _BAD
        if self.kind is float:
            try:
                return float(text)
            except ValueError:
                return _BAD
        value = _json_or_text(text)  # a list: JSON ("[1, 2]") or comma-separated ("1,2")
        if isinstance(value, list):
            return value
        parts = [p.strip() for p in text.split(",") if p.strip()]
        return [self.item._from_text(p) if self.item else p for p in parts]


_BAD = object()  # "not a value of this field"; turned into the one error message by the caller


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


POSITIVE_INT = Field(int, low=1)
NON_NEGATIVE_INT = Field(int, low=0)
FINITE = Field(float)
POSITIVE = Field(float, low=0, open_low=True)
NON_NEGATIVE = Field(float, low=0)
PROBABILITY = Field(float, low=0, high=1)
FRACTION_BELOW_ONE = Field(float, low=0, high=1, open_high=True)

# Fields whose range is not the default of their type (rule 2), by name: a name means the same
# thing in every config that has it.
RULES: dict[str, Field] = {
    # train config
    "seed": Field(int, low=0, also=(None,)),
    "warmup_steps": NON_NEGATIVE_INT,
    "lr": POSITIVE,
    "min_lr_ratio": PROBABILITY,
    "weight_decay": NON_NEGATIVE,
    "beta1": FRACTION_BELOW_ONE,
    "beta2": FRACTION_BELOW_ONE,
    "grad_clip": POSITIVE,
    # model configs
    "d_head": POSITIVE_INT,
    "dt_rank": Field(int, low=1, also=("auto",)),
    "slstm_at": Field(list, item=NON_NEGATIVE_INT),
    "conv_kernel": NON_NEGATIVE_INT,
    "init": Field(str, choices=("reference", "legacy")),  # xLSTM, Mamba: the initialisation scheme  # 0: no short conv (minGRU, LSTM); xLSTM's conv needs >= 1 and says so
    "proj_factor": POSITIVE,
    "ffn_proj_factor": POSITIVE,
    "norm": Field(str, choices=("layer", "rms")),
    "normalization_type": Field(str, choices=("LN", "LNPre", "RMS", "RMSPre"), also=(None,)),
    "positional_embedding_type": Field(str, choices=("standard", "rotary", "shortformer", "alibi")),
    # task parameters
    "test_fraction": FRACTION_BELOW_ONE,
    "noop_prob": PROBABILITY,
    "min_pairs": Field(int, low=1, also=(None,)),
    "kinds": Field(list, item=Field(str), also=(None,)),
}

# The activations each MLP implements: the workbench's own MLP (every BlockLM architecture) and
# transformer_lens's (the transformer).
BLOCK_ACTIVATIONS = ("gelu", "relu", "silu")


def activations(architecture: str) -> tuple[str, ...]:
    if architecture == "transformer":
        from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS

        return tuple(SUPPORTED_ACTIVATIONS)
    return BLOCK_ACTIVATIONS


def field_for(name: str, default: Any, choices: tuple = ()) -> Field:
    """Rule 1 and 2: the field called ``name`` whose default is ``default``."""
    if name in RULES:
        return RULES[name]
    if choices:
        return Field(str, choices=tuple(choices))
    if isinstance(default, bool):
        return Field(bool)
    if isinstance(default, int):
        return POSITIVE_INT
    if isinstance(default, float):
        return FINITE
    if isinstance(default, str):
        return Field(str)
    if isinstance(default, list | tuple):
        return Field(list, item=field_for(name, default[0]) if default else None)
    return Field(None)


def fields_from_defaults(defaults: dict, choices: dict[str, tuple] | None = None) -> dict[str, Field]:
    choices = choices or {}
    return {name: field_for(name, value, choices.get(name, ())) for name, value in defaults.items()}


def check_values(fields: dict[str, Field], values: dict, where: str = "") -> dict:
    """``values`` with every field that ``fields`` knows checked and normalised; names it does not know
    pass through (the config's own unknown-field check lists the choices). ``where`` prefixes errors."""
    out = dict(values)
    for name, value in values.items():
        if name in fields:
            try:
                out[name] = fields[name].check(name, value)
            except ValueError as err:
                raise ValueError(f"{where}{err}") from None
    return out


def parse_assignments(items: list[str] | None, option: str, fields: dict[str, Field] | None = None,
                      what: str = "field") -> dict:
    """``["d_model=128", "act_fn=relu"]`` -> ``{"d_model": 128, "act_fn": "relu"}``, each value parsed
    as its field's type. With ``fields`` an unknown name is an error listing the known ones; without,
    values are read as JSON when they parse (the untyped fallback for callers with no field specs)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{option} {item!r} is not of the form key=value")
        key, raw = (part.strip() for part in item.split("=", 1))
        if fields is None:
            out[key] = _json_or_text(raw)
            continue
        if key not in fields:
            raise ValueError(f"{option} {item}: unknown {what} {key!r}; choose from: {', '.join(fields)}")
        try:
            out[key] = fields[key].parse(key, raw)
        except ValueError as err:
            raise ValueError(f"{option} {item}: {err}") from None
    return out
