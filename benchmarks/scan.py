"""Parallel form vs step-by-step recurrence: training forward+backward tokens/s at T = 256.

For every recurrent architecture, the same model (default config, batch ``--batch``) is timed two ways
in one run:

1. parallel: ``model(tokens)`` over the whole sequence (scans, the mLSTM parallel form...), then
   backward of the mean logit;
2. step-by-step: ``model(tokens[:, t:t+1], state=s, return_state=True)`` for t = 0..T-1, carrying the
   state (the generation path, one token at a time), then the same backward.

Both compute the same function (tests check it); the ratio is parallel tokens/s over step-by-step
tokens/s (target >= 10x for the parallelisable ones; LSTM and sLSTM are sequential by nature). The
shared ``linear_scan`` primitive is timed against ``linear_scan_sequential`` the same way.

Neither path attaches hooks, so Mamba runs its fused selective scan in both (mamba.py, "Fused selective
scan"); runs that hook its decays or states (caching them, freezing gates, patching) take the
materialised path, which is not timed here. The header quotes the load average: on a shared machine
the ratio moves with it (OpenMP threads stalled by other processes slow every parallel region).

    python benchmarks/scan.py [--T 256] [--batch 16] [--reps 3] [--archs rwkv mamba ...]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from workbench.architectures import build_model, model_config
from workbench.architectures.scan import linear_scan, linear_scan_sequential

RECURRENT = ("mingru", "mamba", "rwkv", "xlstm", "lstm")


def timed(fn, reps: int) -> float:
    fn()  # warm-up (allocations, lazy init)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def parallel_step(model, tokens):
    model.zero_grad(set_to_none=True)
    model(tokens).float().mean().backward()


def sequential_step(model, tokens):
    model.zero_grad(set_to_none=True)
    state, outs = None, []
    for t in range(tokens.shape[1]):
        logits, state = model(tokens[:, t : t + 1], state=state, return_state=True)
        outs.append(logits)
    torch.cat(outs, 1).float().mean().backward()


def bench_arch(arch: str, T: int, batch: int, reps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(model_config(arch, d_vocab=64, n_ctx=T, seed=0))
    tokens = torch.randint(0, 64, (batch, T))
    fast = timed(lambda: parallel_step(model, tokens), reps)
    slow = timed(lambda: sequential_step(model, tokens), max(1, reps // 2))
    return batch * T / fast, batch * T / slow


def bench_scan(T: int, batch: int, reps: int) -> tuple[float, float]:
    a = torch.rand(batch, T, 128, 16, requires_grad=True)
    b = torch.randn(batch, T, 128, 16, requires_grad=True)

    def run(scan):
        a.grad = b.grad = None
        scan(a, b).sum().backward()

    return timed(lambda: run(linear_scan), reps), timed(lambda: run(linear_scan_sequential), reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--archs", nargs="*", default=list(RECURRENT))
    args = parser.parse_args()
    # The load matters: on a shared 2-core machine, other processes stall the OpenMP threads of every
    # parallel region, and the ratio moves with them; quote it with the result.
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, T={args.T}, batch={args.batch}, "
          f"load average {load}")
    fast, slow = bench_scan(args.T, args.batch, args.reps)
    print(f"{'linear_scan [B,T,128,16]':28s} parallel {1e3 * fast:9.1f} ms  sequential {1e3 * slow:9.1f} ms"
          f"  ratio {slow / fast:6.1f}x")
    print(f"{'architecture':14s} {'parallel tok/s':>15s} {'step-by-step tok/s':>19s} {'ratio':>8s}")
    for arch in args.archs:
        par, seq = bench_arch(arch, args.T, args.batch, args.reps)
        print(f"{arch:14s} {par:15,.0f} {seq:19,.0f} {par / seq:7.1f}x")


if __name__ == "__main__":
    main()
