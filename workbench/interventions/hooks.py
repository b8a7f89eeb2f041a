"""Hook names and indices for interventions, checked before anything runs.

Every intervention names a hook (shared, native or state; see ``architectures/hooked.py``) and picks
sites inside its value: positions (dim 1 of every hook value, ``[batch, pos, ...]``), heads and
channels. This module turns those user inputs into checked, normalised values:

1. :func:`resolve_hook`: a shared or native name -> the native hook-point name in ``model.hook_dict``
   (aliases are followed). An unknown name is a ``KeyError`` listing the nearest names
   (``difflib.get_close_matches`` over every hook-point name and alias of the model).
2. :func:`check_index` / :func:`check_indices`: an index (or list of indices) into a dimension of size
   ``size``; negative indices count from the end as in Python and are returned non-negative. Out of
   range is a ``ValueError`` naming the dimension, the value and the valid range.
   :func:`check_positions`, :func:`check_heads`, :func:`check_channels` are the same for the three
   dimensions interventions use (``None`` means "all").
3. :func:`hook_shapes`: the value shape of named hooks on given tokens, from one cached forward pass
   (how a caller learns the number of heads or channels a hook carries).
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Iterable, Sequence

import torch


def hook_names_of(model) -> list[str]:
    """Every name a hook can be reached by: the model's aliases (shared names) then its hook points."""
    aliases = list(getattr(model, "hook_aliases", {}))
    return list(dict.fromkeys(aliases + list(model.hook_dict)))


def resolve_hook(model, name: str) -> str:
    """The native hook-point name behind ``name`` (a shared alias or a native name).

    Raises ``KeyError`` naming ``name`` and the nearest hook names of this model.
    """
    if not isinstance(name, str):
        raise TypeError(f"hook name must be a string; got {type(name).__name__} {name!r}")
    native = getattr(model, "hook_aliases", {}).get(name, name)
    if native in model.hook_dict:
        return native
    names = hook_names_of(model)
    nearest = difflib.get_close_matches(name, names, n=6, cutoff=0.5)
    if not nearest:  # fall back to names sharing the hook's last part (hook_state, hook_resid_pre, ...)
        nearest = [n for n in names if n.split(".")[-1] == name.split(".")[-1]][:6]
    hint = f"nearest: {', '.join(nearest)}" if nearest else f"{len(names)} hooks, e.g. {', '.join(names[:6])}"
    raise KeyError(f"model has no hook named {name!r}; {hint}")


def check_index(value: int, size: int, what: str) -> int:
    """``value`` as a non-negative index into a dimension ``what`` of ``size`` (negatives from the end)."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.is_floating_point()):
        raise ValueError(f"{what} must be an integer; got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer; got {value!r}") from None
    if not -size <= value < size:
        span = f"0..{size - 1} (or -{size}..-1)" if size else "none: the dimension is empty"
        raise ValueError(f"{what} {value} out of range: {size} {what}s, valid {span}")
    return value % size


def check_indices(values: int | Iterable[int] | None, size: int, what: str) -> list[int]:
    """A list of checked non-negative indices; ``None`` means every index ``0..size-1``."""
    if values is None:
        return list(range(size))
    if isinstance(values, torch.Tensor):
        values = values.reshape(-1).tolist()
    if not isinstance(values, Iterable):
        values = [values]
    return [check_index(v, size, what) for v in values]


def check_positions(positions: int | Iterable[int] | None, n_pos: int) -> list[int]:
    """Positions (dim 1 of a hook value) checked against a prompt of ``n_pos`` tokens."""
    return check_indices(positions, n_pos, "position")


def check_heads(heads: int | Iterable[int] | None, n_heads: int) -> list[int]:
    """Head indices checked against ``n_heads``."""
    return check_indices(heads, n_heads, "head")


def check_channels(channels: int | Iterable[int] | None, n_channels: int) -> list[int]:
    """Channel indices (the last dimension of a hook value, or the one named) checked against ``n_channels``."""
    return check_indices(channels, n_channels, "channel")


def check_layers(layers: int | Iterable[int] | None, n_layers: int) -> list[int]:
    """Layer indices checked against ``n_layers``."""
    return check_indices(layers, n_layers, "layer")


@torch.no_grad()
def hook_shapes(model, tokens: torch.Tensor, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of each hook's value on ``tokens`` (one forward pass, only those hooks cached).

    Keys are the names as given (shared or native).
    """
    natives = {name: resolve_hook(model, name) for name in names}
    shapes: dict[str, tuple[int, ...]] = {}

    def record(act, hook):
        shapes[hook.name] = tuple(act.shape)

    model.run_with_hooks(tokens, fwd_hooks=[(n, record) for n in dict.fromkeys(natives.values())])
    return {name: shapes[native] for name, native in natives.items()}


__all__ = [
    "check_channels",
    "check_heads",
    "check_index",
    "check_indices",
    "check_layers",
    "check_positions",
    "hook_names_of",
    "hook_shapes",
    "resolve_hook",
]
