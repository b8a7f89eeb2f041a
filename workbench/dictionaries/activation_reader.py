"""Reading activations: a stored activation folder, or tensors in memory, as shuffled minibatches.

Every activation source yields dicts ``{hook name: [rows, width]}`` of token rows through
``minibatches(batch_size, seed, start_batch)``; the trainer needs nothing else.

Deterministic shuffling across shards, epoch ``e`` (generator seeded from ``(seed, e)``):

1. Permute the order of the shards.
2. Walk that order in windows of ``window_shards`` shards (default: all, a full global shuffle; a
   smaller window bounds memory to that many shards).
3. Concatenate a window's rows with the rows left over from the previous window, permute them, and
   yield full minibatches; keep the remainder for the next window.
4. At the end of the epoch yield the remainder as one short minibatch, so every row is seen exactly
   once per epoch: an epoch is ``ceil(rows / batch_size)`` minibatches.

Minibatch ``start_batch`` of the endless stream is reached by skipping whole epochs by count, then
the first minibatches of that epoch, so a resumed trainer reads the same rows it would have.

Parts for data-parallel training (``source.shard(index, count)``, see :mod:`.distributed`): part
``index`` of a store holds its shard files ``index, index + count, ...`` when the store has at least
``count`` files, else rows ``index::count`` of every file; part ``index`` of in-memory activations
holds rows ``index::count``. A part is a source of its own (the same shuffling, on its rows only).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from workbench.store.atomic import CorruptArtifactError, load_safetensors, read_json

MANIFEST = "manifest.json"
STORE_FORMAT = "workbench-activations/1"
ROW_META = ("token_id", "position", "sequence_index")  # per-row bookkeeping stored beside the hooks


def mix_seed(*parts: int) -> int:
    """One 62-bit seed from several integers (order matters)."""
    h = 17
    for p in parts:
        h = (h * 1_000_003 + int(p) * 7919 + 11) % (2**62)
    return h


def _take(rows: dict[str, torch.Tensor], index) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in rows.items()}


def _cat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _epoch_minibatches(shard_rows: list[int], load_shard: Callable[[int], dict], batch_size: int,
                       seed: int, epoch: int, window_shards: int) -> Iterator[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(mix_seed(seed, epoch))
    order = torch.randperm(len(shard_rows), generator=generator).tolist()
    carry: dict[str, torch.Tensor] | None = None
    for start in range(0, len(order), window_shards):
        parts = [load_shard(i) for i in order[start:start + window_shards]]
        rows = _cat(parts if carry is None else [carry, *parts])
        n = next(iter(rows.values())).shape[0]
        rows = _take(rows, torch.randperm(n, generator=generator))
        full = n - n % batch_size
        for s in range(0, full, batch_size):
            yield _take(rows, slice(s, s + batch_size))
        carry = _take(rows, slice(full, n))
    if carry is not None and next(iter(carry.values())).shape[0] > 0:
        yield carry


def shuffled_minibatches(shard_rows: list[int], load_shard: Callable[[int], dict], batch_size: int, seed: int,
                         start_batch: int = 0, window_shards: int | None = None,
                         epochs: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """The endless (or ``epochs``-long) shuffled stream of the module docstring, from ``start_batch``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}")
    total = sum(shard_rows)
    if total == 0:
        raise ValueError("the activation source holds no rows")
    per_epoch = math.ceil(total / batch_size)
    window = len(shard_rows) if window_shards is None else max(1, window_shards)
    epoch, skip = divmod(start_batch, per_epoch)
    while epochs is None or epoch < epochs:
        for i, batch in enumerate(_epoch_minibatches(shard_rows, load_shard, batch_size, seed, epoch, window)):
            if i >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


class ActivationStore:
    """A finished activation folder (see :mod:`.activations` for the layout), read-only."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / MANIFEST).is_file():
            raise FileNotFoundError(f"no activation store at {self.folder} (no {MANIFEST})")
        self.manifest = read_json(self.folder / MANIFEST)
        if self.manifest.get("format") != STORE_FORMAT:
            raise CorruptArtifactError(f"{self.folder / MANIFEST} has format {self.manifest.get('format')!r}; "
                                       f"expected {STORE_FORMAT!r}")
        done, planned = len(self.manifest["shards"]), self.manifest["plan"]["n_shards"]
        if not self.manifest.get("complete"):
            raise RuntimeError(f"activation store {self.folder} is incomplete ({done} of {planned} shards); "
                               "run collect_activations again with the same arguments to finish it")
        self.part: tuple[int, int] | None = None  # (index, count) for a data-parallel part, see shard()

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def widths(self) -> dict[str, int]:
        return dict(self.manifest["widths"])

    @property
    def shard_rows(self) -> list[int]:
        return [s["rows"] for s in self.manifest["shards"]]

    @property
    def n_rows(self) -> int:
        return int(self.manifest["n_tokens"])

    def fingerprint(self) -> dict:
        return {"store": self.manifest["fingerprint"], "rows": self.n_rows}

    def shard(self, index: int, count: int) -> ActivationStore:
        """Part ``index`` of ``count`` (module docstring): the same store reading only its files or rows."""
        if self.part is not None:
            raise ValueError(f"activation store {self.folder} is already part {self.part[0]} of {self.part[1]}")
        if not 0 <= index < count:
            raise ValueError(f"part index {index} out of range for {count} parts")
        part = copy.copy(self)
        part.part = (index, count)
        return part

    def _part_files(self) -> tuple[list[int], slice]:
        """(the store shards this part reads, the rows it keeps of each)."""
        files = list(range(len(self.manifest["shards"])))
        if self.part is None:
            return files, slice(None)
        index, count = self.part
        return (files[index::count], slice(None)) if len(files) >= count else (files, slice(index, None, count))

    def check_hooks(self, hooks: list[str]) -> list[str]:
        missing = [h for h in hooks if h not in self.manifest["hooks"]]
        if missing:
            raise KeyError(f"activation store {self.folder} holds no hook {missing[0]!r}; "
                           f"it holds: {', '.join(self.hooks)}")
        return hooks

    def load_shard(self, index: int, hooks: list[str] | None = None, row_meta: bool = False) -> dict[str, torch.Tensor]:
        entry = self.manifest["shards"][index]
        path = self.folder / entry["file"]
        tensors = load_safetensors(path)
        wanted = self.check_hooks(hooks or self.hooks) + (list(ROW_META) if row_meta else [])
        for name in wanted:
            t = tensors.get(name)
            if t is None or t.shape[0] != entry["rows"]:
                got = "absent" if t is None else f"{t.shape[0]} rows"
                raise CorruptArtifactError(f"shard {path} tensor {name!r} is {got}; the manifest says "
                                           f"{entry['rows']} rows; the shard is damaged, delete it and collect again")
        return {name: tensors[name] for name in wanted}

    def minibatches(self, batch_size: int, seed: int, start_batch: int = 0, hooks: list[str] | None = None,
                    window_shards: int | None = None, epochs: int | None = None,
                    row_meta: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Shuffled minibatches of ``hooks`` (default all), deterministic in ``seed`` (module docstring)."""
        hooks = self.check_hooks(hooks or self.hooks)
        files, rows = self._part_files()
        counts = [len(range(self.shard_rows[f])[rows]) for f in files]

        def load(i: int) -> dict[str, torch.Tensor]:
            tensors = self.load_shard(files[i], hooks, row_meta)
            return tensors if self.part is None else {k: v[rows].contiguous() for k, v in tensors.items()}
        return shuffled_minibatches(counts, load, batch_size, seed, start_batch, window_shards, epochs)


class TensorActivations:
    """Activations already in memory (synthetic data, a small run) behind the same interface."""

    def __init__(self, tensors: dict[str, torch.Tensor], name: str = "in-memory"):
        rows = {t.shape[0] for t in tensors.values()}
        if len(rows) != 1 or any(t.dim() != 2 for t in tensors.values()):
            shapes = {k: tuple(v.shape) for k, v in tensors.items()}
            raise ValueError(f"in-memory activations must be 2-d [rows, width] with equal rows; got {shapes}")
        self.tensors, self.name = tensors, name

    @property
    def hooks(self) -> list[str]:
        return list(self.tensors)

    @property
    def widths(self) -> dict[str, int]:
        return {k: v.shape[1] for k, v in self.tensors.items()}

    @property
    def n_rows(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def fingerprint(self) -> dict:
        return {"in_memory": self.name, "rows": self.n_rows, "widths": self.widths}

    def shard(self, index: int, count: int) -> TensorActivations:
        """Part ``index`` of ``count``: rows ``index::count`` (module docstring)."""
        if not 0 <= index < count:
            raise ValueError(f"part index {index} out of range for {count} parts")
        return TensorActivations({k: v[index::count].contiguous() for k, v in self.tensors.items()},
                                 name=f"{self.name} part {index}/{count}")

    def minibatches(self, batch_size: int, seed: int, start_batch: int = 0, hooks: list[str] | None = None,
                    epochs: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        missing = [h for h in (hooks or []) if h not in self.tensors]
        if missing:
            raise KeyError(f"in-memory activations {self.name!r} hold no hook {missing[0]!r}; they hold: "
                           f"{', '.join(self.hooks)}")
        chosen = {h: self.tensors[h] for h in (hooks or self.hooks)}
        return shuffled_minibatches([self.n_rows], lambda _: chosen, batch_size, seed, start_batch, None, epochs)
