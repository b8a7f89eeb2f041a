"""Collecting activations from a model of any architecture: stored in shards, or streamed live.

What is collected: for each hook (``blocks.{l}.hook_mlp_in`` / ``hook_mlp_out`` for transcoders,
``hook_resid_pre`` / ``hook_resid_post`` for SAEs, any hook the model has), one row per *real* token
(``tokens != pad``), in the order (sequence, position). Widths are read from the cached tensors, never
from ``cfg.d_model``: RWKV's ``hook_mlp_in`` is ``[x_t, x_{t-1}]``, twice as wide.

A store folder::

    manifest.json              format, the collection spec and its fingerprint (model config and weights
                               sha256, task, split, seed, hooks, dtype, sizes), widths, the size plan,
                               the finished shards (file, rows, sequence range, sha256), complete flag
    shard-00000.safetensors    {hook: [rows, width]} plus token_id, position, sequence_index per row

Collection (:func:`collect_activations`):

1. Check every hook exists (an error names the missing hook and lists the model's hooks of its kind);
   probe the widths with one forward pass.
2. Plan: shard ``k`` holds sequences ``[k * shard_sequences, ...)`` sampled with a seed derived from
   ``(seed, k)``, so it depends on nothing else; count each shard's real tokens (sampling is cheap) and
   compute the bytes on disk. Report the plan, and refuse it if it exceeds ``max_bytes``.
3. If the folder already holds a manifest of a different spec, refuse and list the differences.
4. For each shard not already listed in the manifest with a matching sha256: run the model over it in
   ``batch_size`` chunks through ``run_with_cache(names_filter=hooks)`` under ``torch.no_grad()``,
   keep the real-token rows, write the shard atomically, then rewrite the manifest atomically. A
   killed run resumes at the first unfinished shard and writes the same bytes.
5. Mark the manifest complete.

Live mode (:class:`LiveActivations`) runs the same extraction on fresh chunks of sequences and yields
minibatches without storing anything.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from workbench.architectures.hooked import BLOCK_HOOKS, hook_name
from workbench.dictionaries.activation_reader import (
    MANIFEST,
    STORE_FORMAT,
    ActivationStore,
    mix_seed,
)
from workbench.store.atomic import (
    atomic_write_json,
    clean_stale_temporaries,
    read_json,
    save_safetensors,
    sha256_file,
)
from workbench.tasks.base import Task
from workbench.training.checkpoint import describe_config_change

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ROW_META_BYTES = 8 + 4 + 8  # token_id int64, position int32, sequence_index int64
HEADER_BYTES_PER_TENSOR = 128  # safetensors' JSON header entry, an over-estimate
SHARD_SALT, LIVE_SALT = 0x5A4D, 0x11FE
log = logging.getLogger(__name__)


class HookNotFound(LookupError):
    """A model lacks a hook that was asked for."""


def transcoder_hooks(layers: list[int]) -> list[str]:
    """``mlp_in`` and ``mlp_out`` of each layer, in layer order."""
    return [hook_name(kind, layer) for layer in layers for kind in ("mlp_in", "mlp_out")]


def layer_hooks(kind: str, layers: list[int]) -> list[str]:
    if kind not in BLOCK_HOOKS:
        raise ValueError(f"unknown per-layer hook kind {kind!r}; choose one of: {', '.join(BLOCK_HOOKS)}")
    return [hook_name(kind, layer) for layer in layers]


def check_model_hooks(model, hooks: list[str]) -> None:
    """Raise :class:`HookNotFound` naming the first missing hook and the model's hooks of that kind."""
    available = set(model.hook_names())
    for name in hooks:
        if name not in available:
            kind = name.rsplit("hook_", 1)[-1]
            same_kind = model.hook_names(kind) or model.hook_names()
            arch = type(model).__name__
            raise HookNotFound(f"model {arch} has no hook {name!r}; its hooks of kind {kind!r} are: "
                               f"{', '.join(same_kind)}")


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def real_token_rows(model, tokens: torch.Tensor, hooks: list[str], pad_id: int,
                    widths: dict[str, int] | None = None, positions: bool = False) -> dict[str, torch.Tensor]:
    """``{hook: [real tokens, width]}`` on the CPU for one batch of sequences, rows in (sequence,
    position) order; ``widths`` (when given) must match what the model produces. With ``positions``
    the dict also holds ``"position"``: each row's position in its sequence (0 is ``<bos>``)."""
    with torch.no_grad(), _eval_mode(model):
        _, cache = model.run_with_cache(tokens.to(model_device(model)), names_filter=list(hooks))
    mask = tokens != pad_id
    rows = {}
    for name in hooks:
        act = cache[name]
        if act.dim() != 3 or tuple(act.shape[:2]) != tuple(tokens.shape):
            raise ValueError(f"hook {name!r} gave activations of shape {tuple(act.shape)}; expected "
                             f"[batch {tokens.shape[0]}, positions {tokens.shape[1]}, width]")
        if widths is not None and act.shape[-1] != widths[name]:
            raise ValueError(f"hook {name!r} has width {act.shape[-1]}; the store expects {widths[name]}")
        rows[name] = act[mask.to(act.device)].detach().cpu()
    if positions:
        rows["position"] = torch.arange(tokens.shape[1], dtype=torch.int32).expand_as(tokens)[mask]
    return rows


def weights_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown activation dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def shard_tokens(task: Task, split: str, seed: int, index: int, n_sequences: int, shard_sequences: int) -> torch.Tensor:
    count = min(shard_sequences, n_sequences - index * shard_sequences)
    return task.sample(split, count, mix_seed(seed, index, SHARD_SALT)).tokens


@dataclass
class StorePlan:
    widths: dict[str, int]
    rows_per_shard: list[int]
    bytes: int

    @property
    def n_shards(self) -> int:
        return len(self.rows_per_shard)

    @property
    def n_tokens(self) -> int:
        return sum(self.rows_per_shard)

    def describe(self) -> str:
        return (f"{self.n_shards} shard(s), {self.n_tokens:,} token rows, {len(self.widths)} hook(s) of widths "
                f"{sorted(set(self.widths.values()))}: about {self.bytes / 2**20:,.1f} MiB on disk")


def plan_activation_store(model, task: Task, hooks: list[str], n_sequences: int, shard_sequences: int = 256,
                          split: str = "train", seed: int = 0, dtype: str = "float32") -> StorePlan:
    """Steps 1-2 of the module docstring: check hooks, probe widths, count rows, compute bytes."""
    if n_sequences < 1 or shard_sequences < 1:
        raise ValueError(f"n_sequences and shard_sequences must be positive; got {n_sequences}, {shard_sequences}")
    check_model_hooks(model, hooks)
    first = shard_tokens(task, split, seed, 0, n_sequences, shard_sequences)[:1]
    probe = real_token_rows(model, first, hooks, task.tokenizer.pad_id)
    widths = {name: int(rows.shape[-1]) for name, rows in probe.items()}
    n_shards = math.ceil(n_sequences / shard_sequences)
    rows = [int((shard_tokens(task, split, seed, k, n_sequences, shard_sequences) != task.tokenizer.pad_id).sum())
            for k in range(n_shards)]
    row_bytes = sum(widths.values()) * _dtype(dtype).itemsize + ROW_META_BYTES
    header = HEADER_BYTES_PER_TENSOR * (len(hooks) + 3)
    return StorePlan(widths, rows, sum(r * row_bytes + header for r in rows))


def _spec_fingerprint(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _shard_done(folder: Path, entry: dict) -> bool:
    path = folder / entry["file"]
    return path.is_file() and sha256_file(path) == entry["sha256"]


def _write_shard(folder: Path, model, task: Task, spec: dict, widths: dict[str, int], index: int) -> dict:
    """Step 4 for one shard: extract, write atomically, return its manifest entry."""
    tokens = shard_tokens(task, spec["split"], spec["seed"], index, spec["n_sequences"], spec["shard_sequences"])
    pad_id, hooks = task.tokenizer.pad_id, spec["hooks"]
    chunks = [real_token_rows(model, tokens[s:s + spec["batch_size"]], hooks, pad_id, widths)
              for s in range(0, tokens.shape[0], spec["batch_size"])]
    dtype = _dtype(spec["dtype"])
    tensors = {name: torch.cat([c[name] for c in chunks]).to(dtype) for name in hooks}
    mask = tokens != pad_id
    first_sequence = index * spec["shard_sequences"]
    tensors["token_id"] = tokens[mask]
    tensors["position"] = torch.arange(tokens.shape[1], dtype=torch.int32).expand_as(tokens)[mask]
    tensors["sequence_index"] = (torch.arange(tokens.shape[0]) + first_sequence)[:, None].expand_as(tokens)[mask]
    name = f"shard-{index:05d}.safetensors"
    # one metadata key only: safetensors writes a multi-key metadata map in random order (not same bytes)
    save_safetensors(tensors, folder / name, {"format": STORE_FORMAT})
    return {"index": index, "file": name, "rows": int(mask.sum()), "sha256": sha256_file(folder / name),
            "sequences": [first_sequence, first_sequence + tokens.shape[0]]}


def _existing_shards(folder: Path, spec: dict, fingerprint: str) -> dict[int, dict]:
    """Step 3: the verified shards of an earlier run of the same spec; refuse a different spec."""
    if not (folder / MANIFEST).is_file():
        return {}
    old = read_json(folder / MANIFEST)
    if old.get("fingerprint") != fingerprint:
        changes = describe_config_change(old.get("collection", {}), spec)
        raise ValueError(f"activation folder {folder} holds a store of a different collection; refusing to mix. "
                         f"Differences: {'; '.join(changes[:8]) or 'unknown'}. Use another folder or delete it.")
    return {e["index"]: e for e in old.get("shards", []) if _shard_done(folder, e)}


def collect_activations(model, task: Task, folder: str | Path, hooks: list[str], n_sequences: int, *,
                        shard_sequences: int = 256, batch_size: int = 32, split: str = "train", seed: int = 0,
                        dtype: str = "float32", model_config: dict | None = None, model_name: str | None = None,
                        max_bytes: int | None = None, progress: bool = True,
                        report: Callable[[str], None] | None = None) -> ActivationStore:
    """Write (or finish) an activation store; the steps are in the module docstring."""
    folder = Path(folder)
    plan = plan_activation_store(model, task, hooks, n_sequences, shard_sequences, split, seed, dtype)
    (report or log.info)(f"activation store {folder}: {plan.describe()}")
    if max_bytes is not None and plan.bytes > max_bytes:
        raise ValueError(f"activation store {folder} would take {plan.bytes:,} bytes, over max_bytes={max_bytes:,}; "
                         "collect fewer sequences or hooks, or use dtype 'bfloat16'")
    spec = {"model": {"name": model_name, "config": model_config, "weights_sha256": weights_sha256(model)},
            "task": task.spec(), "split": split, "seed": seed, "hooks": list(hooks), "dtype": dtype,
            "n_sequences": n_sequences, "shard_sequences": shard_sequences, "batch_size": batch_size,
            "pad_id": task.tokenizer.pad_id}
    fingerprint = _spec_fingerprint(spec)
    done = _existing_shards(folder, spec, fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(folder, recursive=False)  # shards of a killed earlier run are large
    manifest = {"format": STORE_FORMAT, "fingerprint": fingerprint, "collection": spec, "hooks": list(hooks),
                "widths": plan.widths, "dtype": dtype, "n_tokens": plan.n_tokens, "seed": seed,
                "plan": {"n_shards": plan.n_shards, "rows_per_shard": plan.rows_per_shard, "bytes": plan.bytes},
                "shards": [], "complete": False}
    bar = tqdm(total=plan.n_shards, disable=not progress, desc="activations", unit="shard", dynamic_ncols=True)
    for index in range(plan.n_shards):
        entry = done.get(index) or _write_shard(folder, model, task, spec, plan.widths, index)
        if entry["rows"] != plan.rows_per_shard[index]:
            raise RuntimeError(f"shard {index} of {folder} has {entry['rows']} rows; the plan counted "
                               f"{plan.rows_per_shard[index]}: the task's sampling is not deterministic")
        manifest["shards"].append(entry)
        atomic_write_json(folder / MANIFEST, manifest)
        bar.update(1)
    bar.close()
    manifest["bytes"] = sum((folder / e["file"]).stat().st_size for e in manifest["shards"])
    manifest["complete"] = True
    atomic_write_json(folder / MANIFEST, manifest)
    return ActivationStore(folder)


class LiveActivations:
    """Activations streamed from the model as they are needed; nothing is stored.

    Chunk ``i`` is ``chunk_sequences`` sequences sampled with a seed derived from ``(seed, i)``; its
    real-token rows are permuted (generator seeded from ``(seed, i)``) and appended to the stream,
    which is cut into minibatches of ``batch_size`` rows. Minibatch ``start_batch`` is found by counting
    real tokens of the skipped chunks (no forward pass), so resuming costs no model time. Part
    ``index`` of ``count`` (:meth:`shard`, for data-parallel training) reads chunks ``index::count``.
    """

    def __init__(self, model, task: Task, hooks: list[str], split: str = "train", chunk_sequences: int = 32,
                 model_config: dict | None = None):
        check_model_hooks(model, hooks)
        self.model, self.task, self.split, self.chunk_sequences = model, task, split, chunk_sequences
        self.hooks, self.model_config = list(hooks), model_config
        probe = real_token_rows(model, task.sample(split, 1, 0).tokens, self.hooks, task.tokenizer.pad_id)
        self.widths = {name: int(rows.shape[-1]) for name, rows in probe.items()}
        self.part = (0, 1)  # (index, count): this source reads chunks index::count

    def fingerprint(self) -> dict:
        return {"live": {"model_config": self.model_config, "weights_sha256": weights_sha256(self.model),
                         "task": self.task.spec(), "split": self.split, "hooks": self.hooks,
                         "chunk_sequences": self.chunk_sequences}}

    def shard(self, index: int, count: int) -> LiveActivations:
        """Part ``index`` of ``count``: the chunks ``index::count`` of this stream."""
        if self.part != (0, 1) or not 0 <= index < count:
            raise ValueError(f"cannot take part {index} of {count} of live activations that are part {self.part}")
        part = copy.copy(self)
        part.part = (index, count)
        return part

    def _chunk_id(self, index: int) -> int:
        return index * self.part[1] + self.part[0]

    def _chunk_tokens(self, seed: int, index: int) -> torch.Tensor:
        chunk = self._chunk_id(index)
        return self.task.sample(self.split, self.chunk_sequences, mix_seed(seed, chunk, LIVE_SALT)).tokens

    def minibatches(self, batch_size: int, seed: int, start_batch: int = 0, hooks: list[str] | None = None,
                    positions: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Minibatches of ``batch_size`` rows; with ``positions`` each also holds ``"position"``."""
        hooks = hooks or self.hooks
        missing = [h for h in hooks if h not in self.hooks]
        if missing:
            raise HookNotFound(f"live activations were set up without hook {missing[0]!r}; they have: {self.hooks}")
        pad_id, skip, index = self.task.tokenizer.pad_id, start_batch * batch_size, 0
        while (n := int((self._chunk_tokens(seed, index) != pad_id).sum())) <= skip:
            skip, index = skip - n, index + 1
        buffer: dict[str, torch.Tensor] | None = None
        while True:
            rows = real_token_rows(self.model, self._chunk_tokens(seed, index), hooks, pad_id, self.widths,
                                   positions)
            n = next(iter(rows.values())).shape[0]
            order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, self._chunk_id(index))))
            rows = {k: v[order][skip:] for k, v in rows.items()}
            skip, index = 0, index + 1
            buffer = rows if buffer is None else {k: torch.cat([buffer[k], rows[k]]) for k in rows}
            while next(iter(buffer.values())).shape[0] >= batch_size:
                yield {k: v[:batch_size] for k, v in buffer.items()}
                buffer = {k: v[batch_size:] for k, v in buffer.items()}
