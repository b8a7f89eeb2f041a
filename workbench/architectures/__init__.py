"""Architectures, one module each, behind one registry.

``build_model(config)`` makes a fresh model from a JSON-able config whose ``architecture`` field names
the builder; every builder returns a ``HookedRootModule`` with the shared hook names (see ``hooked``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from workbench.architectures import lstm, mamba, mingru, rwkv, transformer, xlstm
from workbench.architectures.hooked import (
    HOOK_KINDS,
    HookedModel,
    SharedHookNames,
    hook_name,
    shared_hook_names,
)

ARCHITECTURES: dict[str, Callable[[dict], torch.nn.Module]] = {
    "transformer": transformer.build,
    "mingru": mingru.build,
    "lstm": lstm.build,
    "mamba": mamba.build,
    "rwkv": rwkv.build,
    "xlstm": xlstm.build,
}
DEFAULTS: dict[str, dict] = {
    "transformer": transformer.DEFAULTS,
    "mingru": mingru.DEFAULTS,
    "lstm": lstm.DEFAULTS,
    "mamba": mamba.DEFAULTS,
    "rwkv": rwkv.DEFAULTS,
    "xlstm": xlstm.DEFAULTS,
}


def architecture_names() -> list[str]:
    return sorted(ARCHITECTURES)


def check_architecture(name: str) -> str:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of: {', '.join(architecture_names())}")
    return name


def model_config(architecture: str, d_vocab: int, n_ctx: int, **overrides) -> dict:
    """A complete config: the architecture's defaults, the task's vocabulary and length, overrides."""
    check_architecture(architecture)
    unknown = set(overrides) - set(DEFAULTS[architecture]) - {"seed", "d_head"}
    if unknown:
        raise ValueError(
            f"unknown {architecture} config field(s) {sorted(unknown)}; "
            f"choose from: {', '.join(sorted(DEFAULTS[architecture]))}"
        )
    return {"architecture": architecture, **DEFAULTS[architecture], **overrides, "d_vocab": d_vocab, "n_ctx": n_ctx}


def build_model(config: dict) -> torch.nn.Module:
    """A fresh model; with ``seed`` in the config the initial weights are the same bytes every time,
    for every architecture, without disturbing the caller's random state."""
    if "architecture" not in config:
        raise ValueError(f"model config has no 'architecture' field; choose one of: {', '.join(architecture_names())}")
    builder = ARCHITECTURES[check_architecture(config["architecture"])]
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
    "count_parameters",
    "hook_name",
    "model_config",
    "shared_hook_names",
]
