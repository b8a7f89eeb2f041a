"""Data-parallel dictionary training with torch.distributed: one process per device, the activation
source sharded across them, the same weights as one process on the same global batches.

Launch with ``torchrun`` (``python -m torch.distributed.run --nproc_per_node N ...``), which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. The algorithm:

1. :func:`init_from_env` starts the process group from those variables: ``gloo`` when training on
   the CPU, ``nccl`` on CUDA (each process takes GPU ``LOCAL_RANK``). Without ``WORLD_SIZE`` > 1 it
   returns a one-process :class:`Comm` whose collectives do nothing.
2. Data order is fixed by ``data_shards`` ``D`` (a training setting), not by the process count ``W``
   (``D`` must be a multiple of ``W``). The source is split into ``D`` parts with ``source.shard(v,
   D)``: an activation store gives part ``v`` its shard files ``v, v+D, ...`` (or, when it has fewer
   files than ``D``, rows ``v::D`` of every file); in-memory activations give rows ``v::D``; live
   activations give sequence chunks ``v::D``. Process ``r`` owns the contiguous parts
   ``[r*D/W, (r+1)*D/W)`` and reads nothing else.
3. Step ``s``'s global minibatch is the concatenation, in part order, of minibatch ``s`` of every
   part's own shuffled stream (``batch_size / D`` rows each). A one-process run with the same ``D``
   builds exactly that concatenation, so both see the same global batches.
4. Each process weights its mean-over-rows loss by ``n_r / N`` (its rows over the global rows) and
   the gradients are summed across processes in one flat ``all_reduce``: the gradient of the global
   batch's mean loss. Batch-wide statistics are global: AuxK's normaliser, BatchTopK's threshold (the
   ``k * N``-th largest activation over all processes), the dead-feature "fired" mask and row count.
5. Everything after the gradient (decoder-norm projection, clipping, Adam, resampling on the gathered
   global batch with a shared seed) then runs identically on every process, so the weights stay
   identical without being broadcast.
6. Only rank 0 writes checkpoints and the final dictionary (atomically, as in one process); the others
   wait at a barrier. On start every process resumes from the same checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


class Comm:
    """The collectives the trainer needs; with one process every one is the identity."""

    def __init__(self, rank: int = 0, world: int = 1, device: str | torch.device = "cpu"):
        self.rank, self.world, self.device = rank, world, torch.device(device)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def views(self, data_shards: int) -> range:
        """The source parts this process reads (step 2)."""
        if data_shards < 1 or data_shards % self.world:
            raise ValueError(f"data_shards ({data_shards}) must be a positive multiple of the number of "
                             f"processes ({self.world}); choose one of: "
                             f"{', '.join(str(self.world * m) for m in (1, 2, 4))}")
        per = data_shards // self.world
        return range(self.rank * per, (self.rank + 1) * per)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """In-place sum over processes."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def total(self, n: int) -> int:
        """``n`` summed over processes (row counts)."""
        if not self.distributed:
            return n
        return int(self.sum_(torch.tensor([n], dtype=torch.int64, device=self.device)).item())

    def mean_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over dim 0 of the global batch (one process: ``x.mean(0)``, bit for bit)."""
        if not self.distributed:
            return x.mean(0)
        return self.sum_(x.sum(0)) / self.total(x.shape[0])

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Every process's rows of ``x`` concatenated in rank order (row counts may differ)."""
        if not self.distributed:
            return x
        sizes = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.int64, device=self.device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes, strict=True)])

    def sum_grads_and(self, params: list[torch.nn.Parameter], extra: torch.Tensor) -> torch.Tensor:
        """Sum every parameter's gradient across processes (one flat all_reduce) and, in the same
        buffer, the 1-d tensor ``extra``; returns the summed ``extra``."""
        if not self.distributed:
            return extra
        # a parameter without a gradient has none on every process (the graph is the same), and must
        # keep none: Adam would move it on a zero gradient
        params = [p for p in params if p.grad is not None]
        flat = self.sum_(torch.cat([p.grad.reshape(-1) for p in params] + [extra.reshape(-1)]))
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        return flat[offset:]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every process."""
        if not self.distributed:
            return obj
        box = [obj if self.is_writer else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]


def current_comm(device: str | torch.device | None = None) -> Comm:
    """The :class:`Comm` of an already started process group, or a one-process one."""
    if dist.is_available() and dist.is_initialized():
        return Comm(dist.get_rank(), dist.get_world_size(), _process_device(device))
    return Comm(0, 1, device or "cpu")


def _process_device(device: str | torch.device | None) -> torch.device:
    device = torch.device(device or "cpu")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_from_env(device: str | torch.device | None = None) -> Comm:
    """Step 1: start the process group from torchrun's environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return current_comm(device)
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch with torchrun "
                         "(python -m torch.distributed.run --nproc_per_node N ...)")
    target = _process_device(device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return current_comm(target)


def shutdown() -> None:
    """Leave the process group (end of a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def source_parts(source, data_shards: int, comm: Comm) -> list:
    """This process's parts of ``source`` (step 2); the source itself when unsharded."""
    views = comm.views(data_shards)
    if data_shards == 1:
        return [source]
    if not hasattr(source, "shard"):
        raise TypeError(f"activation source {type(source).__name__} cannot be split into data_shards="
                        f"{data_shards} parts; use an ActivationStore, TensorActivations or LiveActivations")
    return [source.shard(v, data_shards) for v in views]


def global_minibatches(parts: list, batch_size: int, data_shards: int, seed: int, start_batch: int,
                       hooks: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """This process's share of every global minibatch (step 3): its parts' minibatches concatenated."""
    if batch_size % data_shards:
        raise ValueError(f"batch_size ({batch_size}) must be divisible by data_shards ({data_shards}): every "
                         "part contributes batch_size / data_shards rows")
    per_part = batch_size // data_shards
    streams = [part.minibatches(per_part, seed=seed, start_batch=start_batch, hooks=hooks) for part in parts]
    if len(streams) == 1:
        yield from streams[0]
        return
    while True:
        batches = [next(s) for s in streams]
        yield {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


@contextmanager
def batch_wide(dictionary, comm: Comm):
    """Make BatchTopK choose its threshold over the global batch (step 4) while training."""
    activation = dictionary.activation
    if not comm.distributed or not hasattr(activation, "batch_comm"):
        yield
        return
    activation.batch_comm = comm
    try:
        yield
    finally:
        activation.batch_comm = None


__all__ = ["Comm", "batch_wide", "current_comm", "global_minibatches", "init_from_env", "shutdown",
           "source_parts"]
