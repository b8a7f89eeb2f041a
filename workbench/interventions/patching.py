"""Activation patching of any hook (shared, native, recurrent state) on every architecture.

A :class:`Site` is one hook at one position (or all) and, optionally, one index along one of its value
dimensions (a head of ``attn.hook_z``, a channel of ``mixer.ssm.hook_state``). A *run* patches a
tuple of sites together. Directions: ``denoise`` runs the corrupted prompts with clean values patched
in; ``noise`` runs the clean prompts with corrupted values patched in. Algorithm:

1. Resolve every hook name (:func:`~workbench.interventions.hooks.resolve_hook`: an unknown name lists
   the nearest ones) and check every position, head and channel against the hook's value shape on
   these prompts (errors name the dimension, the value and the valid range).
2. Run the batched engine (:mod:`~workbench.interventions.patch_engine`): all runs stacked along the
   batch, chunked, the layers and positions before each patch reused from the base pass, the last
   layer computed at the answer position alone where it can be (:mod:`.patch_answer`), answer
   logits ``[runs, N, V]``.
3. Score each run with a metric (``logit_diff``, ``answer_prob``, ``kl``; :mod:`.metrics`) per prompt,
   beside the unpatched clean and corrupted values of the same metric, so that
   :meth:`PatchResult.normalised` gives 0 = corrupted run, 1 = clean run.

Entry points: :func:`patch` (one run, e.g. a hook at chosen layers and positions), :func:`patch_runs`
(any list of runs), and the sweeps :func:`sweep_layer_position` (every layer x position of a hook
family such as ``resid_pre`` or ``blocks.{l}.mixer.hook_state``), :func:`sweep_heads` (every layer x
head) and :func:`sweep_channels` (every layer x channel of a state or activation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workbench.architectures.hooked import BLOCK_HOOKS, hook_name
from workbench.interventions.hooks import (
    check_index,
    check_indices,
    check_layers,
    check_positions,
    hook_shapes,
    resolve_hook,
)
from workbench.interventions.metrics import metric
from workbench.interventions.pairs import PromptPairs
from workbench.interventions.patch_engine import FULL_CONTEXT_HOOKS, PatchEngine

DIRECTIONS = ("denoise", "noise")


@dataclass(frozen=True)
class Site:
    """One patched place: ``hook``'s value at ``position`` (None: all), at ``index`` along ``dim``
    (None: the whole per-position value). ``what`` names the indexed dimension in errors."""

    hook: str
    position: int | None = None
    index: int | None = None
    dim: int = -1
    what: str = "channel"


@dataclass(frozen=True)
class PatchResult:
    """Metric values of patched runs: ``values [*grid, N]`` per prompt, ``clean`` / ``corrupted [N]``."""

    values: torch.Tensor
    clean: torch.Tensor
    corrupted: torch.Tensor
    axes: tuple[str, ...]
    labels: tuple[list, ...]
    metric: str
    direction: str

    def mean(self) -> torch.Tensor:
        """``[*grid]``: the metric averaged over prompts."""
        return self.values.mean(-1)

    def normalised(self) -> torch.Tensor:
        """``[*grid]``: ``(mean - corrupted) / (clean - corrupted)`` of prompt means (0 corrupted, 1 clean)."""
        span = self.clean.mean() - self.corrupted.mean()
        return (self.mean() - self.corrupted.mean()) / span if span != 0 else torch.full_like(self.mean(), torch.nan)

    def table(self):
        """A long pandas table: one row per grid cell, with the mean and the normalised score."""
        import pandas as pd

        grid = torch.cartesian_prod(*[torch.arange(len(lab)) for lab in self.labels]).reshape(-1, len(self.axes))
        mean, norm = self.mean().reshape(-1), self.normalised().reshape(-1)
        rows = [{**{ax: self.labels[a][int(cell[a])] for a, ax in enumerate(self.axes)},
                 "metric": self.metric, "direction": self.direction, "value": float(mean[i]),
                 "normalised": float(norm[i])} for i, cell in enumerate(grid)]
        return pd.DataFrame(rows)


def _check_site(model, site: Site, shapes: dict[str, tuple], n_pos: int) -> Site:
    """Step 1 for one site: the native hook name, non-negative position / index / dim."""
    native = resolve_hook(model, site.hook)
    if native not in shapes:
        raise ValueError(f"hook {site.hook!r} does not fire in this model's forward pass; it cannot be patched")
    shape = shapes[native]
    position = None if site.position is None else check_positions(site.position, n_pos)[0]
    if position is not None and (len(shape) < 2 or shape[1] != n_pos or native.endswith(FULL_CONTEXT_HOOKS)):
        raise ValueError(f"hook {site.hook!r} has no position dimension at dim 1 (value shape {list(shape)}); "
                         "patch it at every position (position=None)")
    if site.index is None:
        return Site(native, position, None, -1, site.what)
    dim = check_index(site.dim, len(shape), "dimension")
    if dim < 2:
        raise ValueError(f"dim {site.dim} of hook {site.hook!r} is the batch or position dimension; "
                         f"index a dimension 2..{len(shape) - 1} of its value shape {list(shape)}")
    return Site(native, position, check_index(site.index, shape[dim], site.what), dim, site.what)


def patch_runs(model, pairs: PromptPairs, runs: Sequence[Sequence[Site]], direction: str = "denoise",
               metric_name: str = "logit_diff", chunk_rows: int = 256, band: int | None = None):
    """Steps 1-3: ``(values [R, N], clean [N], corrupted [N], answer logits [R, N, V])``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown patching direction {direction!r}; choose one of: {', '.join(DIRECTIONS)}")
    score = metric(metric_name)
    if not runs or any(not run for run in runs):
        raise ValueError("every patched run needs at least one site")
    natives = [resolve_hook(model, site.hook) for run in runs for site in run]
    base, source = (pairs.corrupted, pairs.clean) if direction == "denoise" else (pairs.clean, pairs.corrupted)
    engine = PatchEngine(model, base, source, pairs.positions, natives)
    checked = [tuple(_check_site(model, site, engine.shapes, pairs.n_pos) for site in run) for run in runs]
    logits = engine.run(checked, chunk_rows, band)
    clean_logits, corrupted_logits = (engine.source_logits, engine.base_logits) if direction == "denoise" \
        else (engine.base_logits, engine.source_logits)
    args = (pairs.answer, pairs.contrast, clean_logits)
    return score(logits, *args), score(clean_logits, *args), score(corrupted_logits, *args), logits


def patch(model, pairs: PromptPairs, hook: str, layers: int | Sequence[int] | None = None,
          positions: int | Sequence[int] | None = None, index: int | None = None, dim: int = -1,
          direction: str = "denoise", metric_name: str = "logit_diff") -> PatchResult:
    """One run patching ``hook`` (a name, or a per-layer kind/template with ``layers``) at ``positions``
    (all when None), optionally one ``index`` along ``dim``, all together."""
    names = _layer_names(model, hook, layers) if layers is not None or "{l}" in hook or hook in BLOCK_HOOKS \
        else [hook]
    pos = [None] if positions is None else (positions if isinstance(positions, Sequence) else [positions])
    run = tuple(Site(name, p, index, dim) for name in names for p in pos)
    values, clean, corrupted, _ = patch_runs(model, pairs, [run], direction, metric_name)
    return PatchResult(values[0], clean, corrupted, (), (), metric_name, direction)


def _layer_names(model, hook: str, layers) -> list[str]:
    """``resid_pre`` / ``blocks.{l}.mixer.hook_state`` -> one name per layer."""
    chosen = check_layers(layers, model.cfg.n_layers)
    if hook in BLOCK_HOOKS:
        return [hook_name(hook, layer) for layer in chosen]
    if "{l}" not in hook:
        raise ValueError(f"hook {hook!r} is not per layer: give a shared kind ({', '.join(BLOCK_HOOKS)}) "
                         "or a template with {l}, e.g. 'blocks.{l}.mixer.hook_state'")
    return [hook.replace("{l}", str(layer)) for layer in chosen]


def _sweep(model, pairs, grid: list[list[Site]], axes, labels, direction, metric_name, chunk_rows, band):
    values, clean, corrupted, _ = patch_runs(model, pairs, [tuple(g) for g in grid], direction, metric_name,
                                             chunk_rows, band)
    shape = [len(lab) for lab in labels]
    return PatchResult(values.reshape(*shape, len(pairs)), clean, corrupted, axes, tuple(labels), metric_name,
                       direction)


def sweep_layer_position(model, pairs: PromptPairs, hook: str = "resid_pre", layers=None, positions=None,
                         direction: str = "denoise", metric_name: str = "logit_diff", chunk_rows: int = 256,
                         band: int | None = None) -> PatchResult:
    """Every layer x position of a hook family: ``values [layers, positions, N]``. ``hook="state"``
    patches every recurrent state hook of a layer together (the whole carried state at a position), over
    the layers that have one."""
    pos = check_positions(positions, pairs.n_pos)
    if hook == "state":
        from workbench.interventions.causal_tracing import state_hooks

        groups = [(layer, state_hooks(model, layer)) for layer in check_layers(layers, model.cfg.n_layers)]
        groups = [(layer, hooks) for layer, hooks in groups if hooks]
        if not groups:
            raise ValueError("hook 'state': this model has no recurrent state hooks to patch")
        grid = [[Site(h, p) for h in hooks] for _, hooks in groups for p in pos]
        chosen = [layer for layer, _ in groups]
    else:
        grid = [[Site(name, p)] for name in _layer_names(model, hook, layers) for p in pos]
        chosen = check_layers(layers, model.cfg.n_layers)
    return _sweep(model, pairs, grid, ("layer", "position"), [chosen, pos], direction, metric_name, chunk_rows,
                  band)


def _index_sweep(model, pairs, hook, layers, indices, dim, position, what, direction, metric_name, chunk_rows,
                 band):
    names = _layer_names(model, hook, layers)
    native = resolve_hook(model, names[0])
    shape = hook_shapes(model, pairs.clean[:1], [native])[native]
    size = shape[check_index(dim, len(shape), "dimension")]
    chosen = check_indices(indices, size, what)
    grid = [[Site(name, position, i, dim, what)] for name in names for i in chosen]
    return _sweep(model, pairs, grid, ("layer", what), [check_layers(layers, model.cfg.n_layers), chosen],
                  direction, metric_name, chunk_rows, band)


def sweep_heads(model, pairs: PromptPairs, hook: str = "blocks.{l}.attn.hook_z", layers=None, heads=None,
                dim: int = 2, position: int | None = None, direction: str = "denoise",
                metric_name: str = "logit_diff", chunk_rows: int = 256, band: int | None = None) -> PatchResult:
    """Every layer x head (``dim`` of the hook's value): ``values [layers, heads, N]``."""
    return _index_sweep(model, pairs, hook, layers, heads, dim, position, "head", direction, metric_name,
                        chunk_rows, band)


def sweep_channels(model, pairs: PromptPairs, hook: str, layers=None, channels=None, dim: int = -1,
                   position: int | None = None, direction: str = "denoise", metric_name: str = "logit_diff",
                   chunk_rows: int = 256, band: int | None = None) -> PatchResult:
    """Every layer x channel (``dim``, default the last) of a state or activation: ``[layers, channels, N]``."""
    return _index_sweep(model, pairs, hook, layers, channels, dim, position, "channel", direction, metric_name,
                        chunk_rows, band)


__all__ = [
    "DIRECTIONS",
    "PatchResult",
    "Site",
    "patch",
    "patch_runs",
    "sweep_channels",
    "sweep_heads",
    "sweep_layer_position",
]
