"""Checkpoints that resume exactly, and that fail loudly when damaged.

A checkpoint is a folder ``checkpoints/step-XXXXXXXX/`` holding

    model.safetensors      model weights
    optimizer.safetensors  AdamW moments and step counts, plus the torch RNG state
    state.json             step, tokens seen, curves so far, the run's config and its fingerprint,
                           optimizer hyper-parameters, and the sha256 of both weight files

It is built under a temporary name and renamed into place, so a folder named ``step-*`` is always
complete; a kill -9 at any moment leaves the previous checkpoint intact. Loading verifies the
checksums, so a damaged file is an error that names it rather than a silently different run.

Resuming (:func:`resume_run`) compares the run's config with the checkpoint's: a difference is refused,
naming the fields, unless the caller lists the field as one a resume may change (the trainers' settings
that change how a run is optimised or saved, not what it trains); accepted changes are returned, and the
trainer notes them in the run's ``train.log`` (:func:`note_in_run_log`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from workbench.store.atomic import (
    CorruptArtifactError,
    atomic_write_json,
    load_safetensors,
    publish_dir,
    read_json,
    save_safetensors,
    sha256_file,
    staging_dir,
)

STEP_DIR = re.compile(r"^step-(\d{8})$")
WEIGHT_FILES = ("model.safetensors", "optimizer.safetensors")


def fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Checkpoint:
    step: int
    folder: Path
    state: dict
    model: dict[str, torch.Tensor]
    optimizer: dict


def optimizer_to_tensors(opt_state: dict) -> tuple[dict[str, torch.Tensor], list]:
    tensors = {}
    for idx, per_param in opt_state["state"].items():
        for key, value in per_param.items():
            tensors[f"state.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, opt_state["param_groups"]


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], param_groups: list) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": param_groups}


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict, keep: int = 2) -> Path:
    final = run_dir / "checkpoints" / f"step-{step:08d}"
    stage = staging_dir(final)
    save_safetensors({k: v.clone() for k, v in model.state_dict().items()}, stage / "model.safetensors")
    opt_tensors, param_groups = optimizer_to_tensors(optimizer.state_dict())
    opt_tensors["rng.torch"] = torch.get_rng_state()
    save_safetensors(opt_tensors, stage / "optimizer.safetensors")
    checksums = {name: sha256_file(stage / name) for name in WEIGHT_FILES}
    atomic_write_json(stage / "state.json", {**state, "step": step, "param_groups": param_groups,
                                             "checksums": checksums})
    publish_dir(stage, final)
    prune_checkpoints(run_dir, keep)
    return final


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for _, path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for leftover in (run_dir / "checkpoints").glob(".step-*.staging"):
        shutil.rmtree(leftover, ignore_errors=True)  # a run killed mid-write leaves one behind


def load_checkpoint(folder: Path) -> Checkpoint:
    state_path = folder / "state.json"
    if not state_path.is_file():
        raise CorruptArtifactError(f"checkpoint {folder} has no state.json; the checkpoint is damaged")
    state = read_json(state_path)
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            raise CorruptArtifactError(f"checkpoint file {path} is missing")
        expected = state.get("checksums", {}).get(name)
        if expected != sha256_file(path):
            raise CorruptArtifactError(
                f"checkpoint file {path} is corrupted (sha256 does not match state.json); "
                "delete the checkpoint folder to resume from an older one, or start a fresh run"
            )
    model = load_safetensors(folder / "model.safetensors")
    opt_tensors = load_safetensors(folder / "optimizer.safetensors")
    rng = opt_tensors.pop("rng.torch")
    optimizer = optimizer_from_tensors(opt_tensors, state["param_groups"])
    state["rng_torch"] = rng
    return Checkpoint(step=int(state["step"]), folder=folder, state=state, model=model, optimizer=optimizer)


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    found = list_checkpoints(run_dir)
    return load_checkpoint(found[-1][1]) if found else None


def config_changes(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted field, old value, new value) for each leaf that differs between two nested configs."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append((f"{prefix}{key}", a, b))
    return changes


def describe_changes(changes) -> list[str]:
    """:func:`config_changes`' tuples as text: ``train.lr: 0.001 -> 0.002``."""
    return [f"{name}: {a} -> {b}" for name, a, b in changes]


def describe_config_change(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested configs: ``train.lr: 0.001 -> 0.002``."""
    return describe_changes(config_changes(old, new, prefix))


LOG_FILE = "train.log"


def note_in_run_log(run_dir: Path, text: str) -> None:
    """One dated line appended to ``run_dir/train.log`` (a log only grows; nothing reads it back)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOG_FILE, "a", encoding="utf-8") as fh:
        fh.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} {text}\n")


def note_resume(run_dir: Path, start: int, changes: list[str]) -> str:
    """The note of a resume at ``start`` that changed settings (``resume_run``'s ``changes``), appended
    to the run's log and returned."""
    note = f"resumed at step {start} with changed settings: {'; '.join(changes)}"
    note_in_run_log(run_dir, note)
    return note


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN or infinite."""


DEFAULT_ADVICE = "Use a new run folder or --fresh."


def resume_run(run_dir: Path, config: dict, module: torch.nn.Module, optimizer, what: str = "checkpoint",
               restore_rng: bool = True, may_change: frozenset[str] = frozenset(),
               advice: str = DEFAULT_ADVICE) -> tuple[int, dict]:
    """Load the run folder's latest checkpoint into ``module`` and ``optimizer``: (step, saved state),
    or (0, an empty state) for a fresh run. A checkpoint of another config is refused, the differing
    fields named, unless every difference is a field in ``may_change`` (dotted: ``train.lr``); the
    accepted differences are then listed in the state's ``changes`` (``train.lr: 0.003 -> 0.001``)."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return 0, {"curves": [], "tokens": 0, "elapsed_s": 0.0, "changes": []}
    changes = []
    if ckpt.state.get("fingerprint") != fingerprint(config):
        # equal values that serialise differently (1 and 1.0) are no change
        changes = config_changes(ckpt.state.get("config", {}), config)
        refused = [c for c in changes if c[0] not in may_change]
        if refused:
            differences = "; ".join(describe_changes(refused[:8]))
            raise ValueError(
                f"run folder {run_dir} holds a {what} of a different config; refusing to resume. "
                f"Differences: {differences}. {advice}"
            )
    module.load_state_dict(ckpt.model)
    optimizer.load_state_dict(ckpt.optimizer)
    if restore_rng:
        torch.set_rng_state(ckpt.state["rng_torch"])
    return ckpt.step, {**ckpt.state, "changes": describe_changes(changes)}


def check_finite(loss: torch.Tensor, grad_norm: torch.Tensor, step: int, run_dir: Path, advice: str) -> None:
    """Raise :class:`TrainingDiverged` naming the last good checkpoint when the loss or gradient is not
    finite; nothing is written after it, so resuming starts from there."""
    if torch.isfinite(loss) and torch.isfinite(grad_norm):
        return
    found = list_checkpoints(run_dir)
    last = f"{found[-1][1]} (step {found[-1][0]})" if found else "none (no checkpoint was written yet)"
    what = f"loss {loss.item()}" if not torch.isfinite(loss) else f"gradient norm {grad_norm.item()}"
    raise TrainingDiverged(f"{what} at step {step}: training stopped. Last good checkpoint: {last}. {advice}")
