"""The conformance kit: the shared checks every architecture must pass, built-in or a user's.

Each check takes a tiny model (float64, eval mode) and returns a :class:`CheckResult` (name, status,
why). Statuses: ``passed``, ``failed``, ``approximate`` (the architecture declares its graphs
approximate, with the measured error) and ``n/a`` (the check does not apply: a model without carried
state). :func:`run_checks` runs them all on a registered architecture; a check that raises is a
failure whose reason is the error, so a broken plug-in gets a report card, not a traceback.

1. ``hooks``: ``run_with_cache`` holds every shared hook name (``hooked.shared_hook_names``) with a
   ``[batch, pos, ...]`` value, and the model declares gate-form hooks (``hook_*_gate``,
   ``hook_pattern``, ``hook_*_scale``; ``gate_form.gate_hook_names``).
2. ``causality``: changing token t changes no logit before t, and changes some logit from t on.
3. ``carried_state``: ``forward(tokens, state=..., return_state=True)`` in pieces (split after 1, 4, 9
   tokens) and one token at a time equals the full forward. A model whose forward takes no state is
   ``n/a`` (a Transformer recomputes its prefix).
4. ``gate_form``: with every gate frozen at the prompt's values and every ``hook_mlp_out`` held at its
   recorded value (what the local replacement model does), the map from ``blocks.{l}.hook_resid_pre``
   to the logits is affine, for every layer l: ``f(a x + b y) - f(0) = a (f(x) - f(0)) + b (f(y) - f(0))``
   on random x, y; and not constant. A model that declares itself approximate (step 5) gets
   ``approximate`` with the first deviation instead of ``failed``.
5. ``sum_identity``: the attribution graph of a random prompt, built with random untrained transcoders
   (``workbench.attribution``), has every node's incoming edges plus bias equal to its value. A model
   that declares itself approximate (``gate_form_note`` or ``linearization_note``) gets ``approximate``
   with the measured error instead of ``failed``.
6. ``state_patching``: patching any per-position hook inside the blocks at position t (gates, states,
   activations) changes no logit before t; patching a recurrent state hook (:func:`state_hook_names`)
   changes every logit after t (the patch carries forward).

The checks moved here from tests/test_architectures_common.py and tests/test_recurrent_basic.py,
which now call them. Loading a user's module and printing the card: :mod:`.conformance_card`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from workbench.architectures import ARCHITECTURES, DEFAULTS, build_model, check_architecture, model_config
from workbench.architectures.gate_form import frozen_gates, gate_hook_names
from workbench.architectures.hooked import hook_name, shared_hook_names

PASSING = ("passed", "approximate", "n/a")
VOCAB, N_CTX, SEQ = 24, 16, 11  # SEQ: a length no head count or width of a tiny model equals
# Sizes of a tiny model: each field the architecture's defaults have is set to at most this.
TINY_SIZES = {"n_layers": 2, "d_model": 16, "d_mlp": 32, "n_heads": 2, "d_state": 4, "d_conv": 3}
# Per-block hook endings that are recurrent states by convention (besides a model's ``state_hooks``).
STATE_ENDINGS = ("hook_state", "hook_state_num", "hook_state_den", "hook_C", "hook_c")


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # passed | failed | approximate | n/a
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status in PASSING


def _result(name: str, problems: list[str], ok_detail: str) -> CheckResult:
    return CheckResult(name, "failed", "; ".join(problems)) if problems else CheckResult(name, "passed", ok_detail)


def _store(cache) -> dict:
    return cache.cache_dict if hasattr(cache, "cache_dict") else cache


def prompt(model, batch: int = 2, length: int = SEQ, seed: int = 0) -> torch.Tensor:
    """Random token ids for ``model``: ``[batch, length]``, the same for the same seed."""
    return torch.randint(0, model.cfg.d_vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def tiny_config(name: str, **overrides) -> dict:
    """A complete config of a tiny ``name`` model: its defaults shrunk to :data:`TINY_SIZES`, then the
    ``TINY_CONFIG`` dict of the builder's module (where it has one), then ``overrides``."""
    defaults = DEFAULTS[check_architecture(name)]
    shrunk = {k: min(v, TINY_SIZES[k]) for k, v in defaults.items()
              if k in TINY_SIZES and isinstance(v, int) and not isinstance(v, bool)}
    module = sys.modules.get(getattr(ARCHITECTURES[name], "__module__", ""), None)
    declared = getattr(module, "TINY_CONFIG", {})
    return model_config(name, VOCAB, N_CTX, seed=0, **{**shrunk, **declared, **overrides})


def tiny_model(name: str, dtype: torch.dtype = torch.float64, **overrides) -> torch.nn.Module:
    return build_model(tiny_config(name, **overrides)).to(dtype).eval()


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-8) -> bool:
    """Equal up to float64 rounding, relative to the values' size."""
    scale = max(1.0, float(a.abs().max()) if a.numel() else 1.0)
    return a.shape == b.shape and bool(((a - b).abs() <= rel * scale).all())


def silent_gates(model, store: dict) -> list[str]:
    """Gate hooks the forward pass never calls: freezing needs every gate's value, so they break it."""
    return [n for n in gate_hook_names(model) if n not in store]


@torch.no_grad()
def _silent_gates_problem(model, toks: torch.Tensor) -> list[str]:
    _, cache = model.run_with_cache(toks, names_filter=gate_hook_names(model))
    silent = silent_gates(model, _store(cache))
    return [f"gate hooks never called in forward (freezing needs their values): {silent[:4]}"] if silent else []


# --- 1. hooks --------------------------------------------------------------------------------------
@torch.no_grad()
def check_hooks(model) -> CheckResult:
    toks = prompt(model)
    _, cache = model.run_with_cache(toks)
    store = _store(cache)
    names = shared_hook_names(model.cfg.n_layers)
    problems = []
    missing = [n for n in names if n not in store]
    if missing:
        problems.append(f"missing shared hooks {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    bad = [n for n in names if n in store and tuple(store[n].shape[:2]) != tuple(toks.shape)]
    if bad:
        problems.append(f"shared hooks without a [batch, pos, ...] value: {bad[:4]}")
    if not gate_hook_names(model):
        problems.append("no gate-form hooks (hook_*_gate, hook_pattern, hook_*_scale): not in gate form")
    problems += _silent_gates_problem(model, toks)
    return _result("hooks", problems, f"{len(names)} shared hooks, {len(gate_hook_names(model))} gate/scale hooks")


# --- 2. causality ---------------------------------------------------------------------------------
@torch.no_grad()
def check_causality(model, t: int = 6) -> CheckResult:
    toks = prompt(model)
    changed = toks.clone()
    changed[:, t] = (changed[:, t] + 1) % model.cfg.d_vocab
    a, b = model(toks), model(changed)
    problems = []
    if not _close(a[:, :t], b[:, :t]):
        moved = (a[:, :t] - b[:, :t]).abs().amax(dim=(0, 2))
        problems.append(f"changing token {t} changed logits at earlier positions "
                        f"{[i for i in range(t) if moved[i] > 0]} (by up to {float(moved.max()):.2e})")
    if _close(a[:, t:], b[:, t:]):
        problems.append(f"changing token {t} changed no logit at all: the model ignores its input")
    return _result("causality", problems, f"changing token {t} moves only positions >= {t}")


# --- 3. carried state -----------------------------------------------------------------------------
def takes_state(model) -> bool:
    try:
        with torch.no_grad():
            model(prompt(model, 1, 1), return_state=True)
    except TypeError:
        return False
    return True


@torch.no_grad()
def check_carried_state(model, splits: tuple[int, ...] = (1, 4, 9)) -> CheckResult:
    if not takes_state(model):
        return CheckResult("carried_state", "n/a", "forward takes no state= / return_state= (no carried state)")
    toks = prompt(model)
    full = model(toks)
    problems = []
    for k in splits:
        first, state = model(toks[:, :k], return_state=True)
        rest, _ = model(toks[:, k:], state=state, return_state=True)
        if not _close(torch.cat([first, rest], 1), full):
            problems.append(f"split after {k} tokens differs from the full forward")
    state, steps = None, []
    for t in range(toks.shape[1]):
        logits, state = model(toks[:, t:t + 1], state=state, return_state=True)
        steps.append(logits)
    stepped = torch.cat(steps, 1)
    if not _close(stepped, full):
        problems.append(f"token-by-token generation differs from the full forward by "
                        f"{float((stepped - full).abs().max()):.2e}")
    return _result("carried_state", problems, f"splits {list(splits)} and token-by-token equal the full forward")


# --- 4. gate-form linearity -----------------------------------------------------------------------
def _frozen_map(model, toks: torch.Tensor, layer: int, mlp_outs: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """u -> logits with ``u`` put at ``blocks.{layer}.hook_resid_pre`` and every MLP output held."""
    def f(u: torch.Tensor) -> torch.Tensor:
        hooks = [(hook_name("resid_pre", layer), lambda act, hook: u)]
        hooks += [(name, lambda act, hook, v=value: v) for name, value in mlp_outs.items()]
        with model.hooks(fwd_hooks=hooks):
            return model(toks)
    return f


@torch.no_grad()
def check_gate_form(model, a: float = 0.7, b: float = -1.3) -> CheckResult:
    toks = prompt(model)
    silent = _silent_gates_problem(model, toks)
    if silent:
        return CheckResult("gate_form", "failed", silent[0])
    n_layers = model.cfg.n_layers
    names = [hook_name("mlp_out", layer) for layer in range(n_layers)]
    _, cache = model.run_with_cache(toks, names_filter=names)
    mlp_outs = {name: _store(cache)[name] for name in names}
    gen = torch.Generator().manual_seed(1)
    dtype = next(model.parameters()).dtype
    problems = []
    with frozen_gates(model, toks):
        for layer in range(n_layers):
            f = _frozen_map(model, toks, layer, mlp_outs)
            shape = (*toks.shape, model.cfg.d_model)
            x, y = (torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2))
            zero = f(torch.zeros_like(x))
            fx, fy = f(x) - zero, f(y) - zero
            mixed = f(a * x + b * y) - zero
            if not _close(mixed, a * fx + b * fy, rel=1e-7):
                problems.append(f"layer {layer}: resid_pre -> logits is not affine with gates frozen "
                                f"(off by {float((mixed - a * fx - b * fy).abs().max()):.2e}): a data-dependent "
                                "factor or nonlinearity is not behind a hook_*_gate / hook_*_scale")
            elif _close(fx, torch.zeros_like(fx)):
                problems.append(f"layer {layer}: resid_pre does not reach the logits")
    note = approximation_note(model)
    if problems and note:
        return CheckResult("gate_form", "approximate", f"{problems[0]}; declared approximate: {note}")
    return _result("gate_form", problems, f"frozen resid_pre -> logits affine at all {n_layers} layers")


# --- 5. graph sum identity ------------------------------------------------------------------------
def random_transcoders(model, tokens: torch.Tensor, n_features: int = 24) -> list:
    """Untrained but non-trivial per-layer transcoders (random biases, so features differ)."""
    from workbench.dictionaries.models import DictionaryConfig, build_dictionary

    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    store = _store(cache)
    dicts = []
    for layer in range(model.cfg.n_layers):
        d_in, d_out = (store[hook_name(k, layer)].shape[-1] for k in ("mlp_in", "mlp_out"))
        d = build_dictionary(DictionaryConfig("transcoder", d_in=d_in, d_out=d_out, n_features=n_features,
                                              activation="topk", k=4, init_norm=1.0, seed=layer,
                                              input_hooks=[hook_name("mlp_in", layer)],
                                              output_hooks=[hook_name("mlp_out", layer)]))
        with torch.no_grad():
            d.b_enc.normal_(0, 0.3, generator=torch.Generator().manual_seed(100 + layer))
            d.b_dec.normal_(0, 0.1, generator=torch.Generator().manual_seed(200 + layer))
        dicts.append(d.eval())
    return dicts


def approximation_note(model) -> str | None:
    """Why the model's graphs are approximate, where it declares that (``gate_form_note``, or the
    attribution code's ``linearization_note``)."""
    return getattr(model, "gate_form_note", None) or getattr(model, "linearization_note", None)


def check_sum_identity(model) -> CheckResult:
    from workbench.attribution.attribute import APPROXIMATE_ABOVE, AttributionConfig, attribute

    toks = prompt(model, 1, 9, seed=3)
    silent = _silent_gates_problem(model, toks)
    if silent:
        return CheckResult("sum_identity", "failed", silent[0])
    dtype = next(model.parameters()).dtype
    dicts = [d.to(dtype) for d in random_transcoders(model, toks)]
    graph = attribute(model, dicts, toks, progress=False, config=AttributionConfig(batch_size=16))
    error, note = float(graph.metadata["identity_error"]), approximation_note(model)
    measured = f"incoming edges + bias miss the values by {error:.1e} (relative) over {graph.n_features} features"
    if note:
        return CheckResult("sum_identity", "approximate", f"{measured}; declared approximate: {note}")
    if graph.n_features == 0:
        return CheckResult("sum_identity", "failed", "no feature was active: the graph tests nothing")
    if error > APPROXIMATE_ABOVE:
        return CheckResult("sum_identity", "failed", f"{measured} > {APPROXIMATE_ABOVE:g}: some factor is not "
                           "behind a gate hook (or declare gate_form_note on the model)")
    return CheckResult("sum_identity", "passed", measured)


# --- 6. state patching ----------------------------------------------------------------------------
def state_hook_names(model) -> list[str]:
    """Native names of the recurrent state hooks: those a module lists in its ``state_hooks`` attribute
    (names relative to it, as ``derived_gate_hooks``) and the per-block hooks whose name ends in one of
    :data:`STATE_ENDINGS`."""
    declared = [f"{prefix}.{hook}" if prefix else hook for prefix, module in model.named_modules()
                for hook in getattr(module, "state_hooks", ()) if isinstance(hook, str)]
    by_name = [n for n in model.hook_dict if n.startswith("blocks.") and n.rsplit(".", 1)[-1] in STATE_ENDINGS]
    return list(dict.fromkeys(declared + by_name))


def positional_hooks(model, store: dict, shape: tuple[int, int]) -> list[str]:
    """Native hooks inside the blocks with a ``[batch, pos, ...]`` value, shared aliases excluded."""
    aliases = set(getattr(model, "hook_aliases", {}))
    return [n for n in model.hook_dict if n.startswith("blocks.") and n not in aliases and n in store
            and tuple(store[n].shape[:2]) == shape]


def _patch_at(t: int, value: torch.Tensor):
    def hook(act, hook):
        act = act.clone()
        act[:, t] = value
        return act
    return hook


@torch.no_grad()
def check_state_patching(model, t: int = 5) -> CheckResult:
    toks = prompt(model)
    clean, cache = model.run_with_cache(toks)
    store = _store(cache)
    states = set(state_hook_names(model))
    gen = torch.Generator().manual_seed(2)
    leaks, ignored, n_patched = [], [], 0
    for name in positional_hooks(model, store, tuple(toks.shape)):
        original = store[name][:, t]
        value = original + original.abs().mean().clamp_min(0.1) * torch.randn(
            original.shape, generator=gen, dtype=torch.float64).to(original.dtype)
        patched = model.run_with_hooks(toks, fwd_hooks=[(name, _patch_at(t, value))])
        n_patched += 1
        if not _close(patched[:, :t], clean[:, :t], rel=1e-9):
            leaks.append(name)
        if name in states:
            moved = (patched - clean).abs().amax(dim=(0, 2))
            if not (moved[t + 1:] > 1e-6).all():
                ignored.append(name)
    problems = []
    if leaks:
        problems.append(f"patching at position {t} changed earlier logits: {leaks[:4]}")
    if ignored:
        problems.append(f"a patched state does not carry to every later position: {ignored[:4]}")
    return _result("state_patching", problems, f"{n_patched} per-position hooks patched at {t}, "
                   f"{len(states)} of them states carrying forward")


CHECKS: dict[str, Callable[[torch.nn.Module], CheckResult]] = {
    "hooks": check_hooks, "causality": check_causality, "carried_state": check_carried_state,
    "gate_form": check_gate_form, "sum_identity": check_sum_identity, "state_patching": check_state_patching,
}


def run_checks(name: str, overrides: dict | None = None, checks: list[str] | None = None) -> list[CheckResult]:
    """Every check (or those named) on a tiny ``name`` model; a raising check or builder is a failure."""
    check_architecture(name)
    unknown = sorted(set(checks or ()) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown conformance check(s) {unknown}; choose from: {', '.join(CHECKS)}")
    with torch.random.fork_rng(devices=[]):  # deterministic, and the caller's random state untouched
        torch.manual_seed(0)
        try:
            model = tiny_model(name, **(overrides or {}))
        except Exception as err:  # noqa: BLE001 (a user's builder failing is the card's first line)
            return [CheckResult("build", "failed", f"{type(err).__name__}: {err}")]
        results = []
        for check in checks or list(CHECKS):
            try:
                results.append(CHECKS[check](model))
            except Exception as err:  # noqa: BLE001 (reported on the card, with the error)
                results.append(CheckResult(check, "failed", f"raised {type(err).__name__}: {err}"))
    return results


__all__ = ["CHECKS", "PASSING", "CheckResult", "approximation_note", "positional_hooks", "random_transcoders",
           "run_checks", "state_hook_names", "tiny_config", "tiny_model"]
