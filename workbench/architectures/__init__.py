"""Architectures, one module each, behind one registry.

``build_model(config)`` makes a fresh model from a JSON-able config whose ``architecture`` field names
the builder; every builder returns a ``HookedRootModule`` with the shared hook names (see ``hooked``).

Every architecture, built-in or a user's, enters through :func:`register_architecture` (a name, a
builder and its defaults); a user's package may also name a module under the ``workbench.architectures``
entry-point group, which is imported (and so registers itself) on first use of the registry.

A config's fields are typed and range-checked (:mod:`workbench.fields`) whether they come from code
(``model_config``), the command line or a model folder's ``config.json``. A config read back must hold
the fields that decide the model's size and function (:data:`REQUIRED_FIELDS`, where the architecture
has them); the others are optional variant settings: a missing one takes its architecture's default,
with a warning naming it.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import torch

from workbench.architectures import ebt, gyro, lstm, mamba, mingru, rwkv, tokenformer, transformer, xlstm
from workbench.architectures.hooked import (
    HOOK_KINDS,
    HookedModel,
    SharedHookNames,
    hook_name,
    shared_hook_names,
)
from workbench.fields import Field, activations, check_values, fields_from_defaults

ARCHITECTURES: dict[str, Callable[[dict], torch.nn.Module]] = {}
DEFAULTS: dict[str, dict] = {}
ENTRY_POINT_GROUP = "workbench.architectures"


def register_architecture(name: str, build: Callable[[dict], torch.nn.Module], defaults: dict, *,
                          replace: bool = False) -> None:
    """Make ``name`` buildable: ``build(config) -> HookedModel`` and the config ``defaults`` (every
    field the builder reads besides ``d_vocab``, ``n_ctx`` and ``seed``). A name already taken is an
    error unless ``replace`` (a user reloading their own module)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"architecture name must be an identifier-like string, got {name!r}")
    if name in ARCHITECTURES and not replace and ARCHITECTURES[name] is not build:
        raise ValueError(f"architecture {name!r} is already registered; pass replace=True to swap it")
    if not callable(build) or not isinstance(defaults, dict):
        raise TypeError(f"register_architecture({name!r}) needs a callable builder and a dict of defaults")
    ARCHITECTURES[name] = build
    DEFAULTS[name] = dict(defaults)


for _module in (transformer, mingru, lstm, mamba, rwkv, xlstm, tokenformer, ebt, gyro):
    register_architecture(_module.__name__.rsplit(".", 1)[1], _module.build, _module.DEFAULTS)

# What every config read back must name, where its architecture has the field: the sizes of every
# weight and the activation (which no weight's shape reveals). Every other field is optional.
REQUIRED_FIELDS = ("d_vocab", "n_ctx", "n_layers", "d_model", "d_mlp", "n_heads", "act_fn")
EXTRA_FIELDS = {"seed": None, "d_head": 1}  # accepted beside DEFAULTS: the build seed, the transformer's head width


_plugins_loaded = False


def load_plugins() -> None:
    """Load the ``workbench.architectures`` entry points once (first use of the registry). An entry
    point names a module (importing it registers; one that only defines ``build`` and ``DEFAULTS`` is
    registered under the entry point's name) or a callable (called). A failing plug-in is skipped with
    a warning naming it: it never breaks the built-ins."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True  # before loading: a plug-in may itself use the registry
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
            if not isinstance(loaded, types.ModuleType):
                loaded()
            elif point.name not in ARCHITECTURES and hasattr(loaded, "build") and hasattr(loaded, "DEFAULTS"):
                register_architecture(point.name, loaded.build, loaded.DEFAULTS)
        except Exception as err:  # noqa: BLE001 (any failure of a user's package, reported, not raised)
            warnings.warn(f"architecture plug-in {point.name!r} ({point.value}) failed to load and is skipped: "
                          f"{type(err).__name__}: {err}", stacklevel=2)


def architecture_names() -> list[str]:
    load_plugins()
    return sorted(ARCHITECTURES)


def check_architecture(name: str) -> str:
    load_plugins()
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of: {', '.join(architecture_names())}")
    return name


def model_fields(architecture: str) -> dict[str, Field]:
    """Each config field's type and range (:mod:`workbench.fields`), ``d_vocab`` and ``n_ctx`` included."""
    defaults = {**DEFAULTS[check_architecture(architecture)], "d_vocab": 1, "n_ctx": 1, **EXTRA_FIELDS}
    return fields_from_defaults(defaults, {"act_fn": activations(architecture)})


def model_config(architecture: str, d_vocab: int, n_ctx: int, **overrides) -> dict:
    """A complete config: the architecture's defaults, the task's vocabulary and length, overrides."""
    check_architecture(architecture)
    unknown = set(overrides) - set(DEFAULTS[architecture]) - set(EXTRA_FIELDS)
    if unknown:
        raise ValueError(
            f"unknown {architecture} config field(s) {sorted(unknown)}; "
            f"choose from: {', '.join(sorted(DEFAULTS[architecture]))}"
        )
    config = {"architecture": architecture, **DEFAULTS[architecture], **overrides, "d_vocab": d_vocab, "n_ctx": n_ctx}
    return check_values(model_fields(architecture), config, f"{architecture} config: ")


def complete_config(config: dict, source: str | Path | None = None) -> dict:
    """``config`` checked: every required field present, every value of its type and range; an absent
    optional field takes the architecture's default with a warning. Errors name ``source`` when given."""
    where = f"{source}: " if source else "model config: "
    if not isinstance(config, dict):
        raise ValueError(f"{where}a model config is a JSON object, not {type(config).__name__}")  # noqa: TRY004
    load_plugins()
    if "architecture" not in config:
        raise ValueError(f"{where}no 'architecture' field; choose one of: {', '.join(architecture_names())}")
    if config["architecture"] not in ARCHITECTURES:
        raise ValueError(f"{where}unknown architecture {config['architecture']!r}; "
                         f"choose one of: {', '.join(architecture_names())}")
    arch = config["architecture"]
    known = {**DEFAULTS[arch], "d_vocab": None, "n_ctx": None}
    missing = [name for name in known if name not in config]
    required = [name for name in missing if name in REQUIRED_FIELDS]
    if required:
        raise ValueError(f"{where}{arch} config lacks the required field(s) {required}")
    if missing:
        filled = ", ".join(f"{name}={DEFAULTS[arch][name]!r}" for name in missing)
        warnings.warn(f"{where}{arch} config lacks the optional field(s) {missing}; using the defaults {filled}",
                      stacklevel=3)
    return check_values(model_fields(arch), {**{k: DEFAULTS[arch][k] for k in missing}, **config}, where)


def build_model(config: dict, source: str | Path | None = None) -> torch.nn.Module:
    """A fresh model; with ``seed`` in the config the initial weights are the same bytes every time,
    for every architecture, without disturbing the caller's random state. ``source`` (the config's
    file) is named in errors about the config."""
    config = complete_config(config, source)
    builder = ARCHITECTURES[config["architecture"]]
    if config.get("seed") is None:
        return builder(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        return builder(config)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ARCHITECTURES",
    "HOOK_KINDS",
    "HookedModel",
    "SharedHookNames",
    "architecture_names",
    "build_model",
    "complete_config",
    "count_parameters",
    "hook_name",
    "load_plugins",
    "model_config",
    "model_fields",
    "register_architecture",
    "shared_hook_names",
]
