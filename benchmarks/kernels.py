"""Kernels (sparse encode/decode, mLSTM, WKV, selective scan): the dispatcher's path against the plain reference, forward + backward.

One run times, for each operation, the path the dispatcher picks here (CPU: the fastest torch path;
GPU: the Triton kernels) against the dense pure-torch reference on the same inputs:

1. encode: ``x [N, d] @ W_enc [d, F] + b``, TopK(k), then backward of a weighted sum of the values;
2. decode: ``sum_j values[n, j] W_dec[indices[n, j]]`` for ``W_dec [F, d]``, then backward;
3. mlstm: the stabilised mLSTM over ``[B, T, H, d]`` (``--mlstm B,T,H,d``), forward + backward of a
   weighted sum of h~; the reference is the per-step recurrence.
4. wkv: RWKV-4's stabilised WKV over ``k, v [B, T, C]`` (``--wkv B,T,C``), forward + backward of a
   weighted sum of the output; the reference is the per-token loop (autograd through it);
5. scan: Mamba's selective scan, ``x [B, T, D]`` with state ``[D, N]`` (``--scan B,T,D,N``), forward +
   backward of a weighted sum of y; the reference is the per-token loop.

The ratio is reference time over dispatcher time (> 1: the dispatcher is faster). On a GPU (only where
CUDA is available) the Triton rows add the fraction of the device's copy bandwidth reached, measured in
the same run (``clone`` of a 1 GiB tensor), on the bytes each kernel must move at least. Where no GPU is
available the GPU section says so and prints no numbers: nothing is estimated.

    python benchmarks/kernels.py [--N 1024] [--d 256] [--F 8192] [--k 32] [--reps 3] [--mlstm 8,256,4,32]
        [--wkv 16,256,64] [--scan 16,256,128,16]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from workbench.kernels import dispatch


def timed(fn, reps: int, sync=lambda: None) -> float:
    fn()  # warm-up (allocations, first-launch compilation)
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - start) / reps


def make_inputs(N, d, F, k, device, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, d, generator=g).to(device, dtype)
    W_enc = (torch.randn(d, F, generator=g) / d**0.5).to(device, dtype).requires_grad_()
    b_enc = torch.zeros(F, device=device, dtype=dtype, requires_grad=True)
    W_dec = (torch.randn(F, d, generator=g) / d**0.5).to(device, dtype).requires_grad_()
    indices, values = dispatch.sparse_encode(x, W_enc.detach(), b_enc.detach(), k, backend="reference")
    return x.requires_grad_(), W_enc, b_enc, W_dec, indices, values.detach().requires_grad_()


def encode_step(inputs, k, backend):
    x, W_enc, b_enc = inputs[:3]
    _, values = dispatch.sparse_encode(x, W_enc, b_enc, k, backend=backend)
    values.float().sum().backward()


def decode_step(inputs, backend):
    W_dec, indices, values = inputs[3:]
    dispatch.sparse_decode(indices, values, W_dec, backend=backend).float().sum().backward()


def min_bytes(op, N, d, F, k, itemsize):
    """Bytes an ideal kernel moves (reads once, writes once), forward + backward."""
    if op == "encode":  # fwd: x, W_enc; out N*k; bwd: x, active W columns twice, grads
        return itemsize * (N * d + d * F + 2 * N * k + N * d + 2 * N * k * d)
    return itemsize * (2 * N * k + 3 * N * k * d + 2 * N * d)  # decode fwd + bwd over active rows


def bench(device, dtype, args, backend):
    inputs = make_inputs(args.N, args.d, args.F, args.k, device, dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for op, step in [("encode", lambda b: encode_step(inputs, args.k, b)), ("decode", lambda b: decode_step(inputs, b))]:
        fast = timed(lambda step=step: step(backend), args.reps, sync)
        ref = timed(lambda step=step: step("reference"), args.reps, sync)
        rows.append((op, ref, fast, min_bytes(op, args.N, args.d, args.F, args.k, inputs[0].element_size())))
    return rows


def mlstm_inputs(shape: str, device, dtype):
    batch, steps, heads, d = (int(x) for x in shape.split(","))
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(batch, steps, heads, d, generator=g) for _ in range(3)]
    gates = [3 * torch.randn(batch, steps, heads, generator=g) + shift for shift in (0.0, 1.0)]
    return [x.to(device, dtype).requires_grad_() for x in qkv + gates]


def mlstm_rows(args, device, dtype, backend, sync=lambda: None):
    """(op, reference s, path s, bytes): the mLSTM forward + backward; bytes: inputs, h~ and their
    gradients each moved once (the chunkwise kernels' ideal)."""
    inputs = mlstm_inputs(args.mlstm, device, dtype)
    weights = torch.randn(inputs[2].shape, device=device, dtype=dtype)

    def step(path):
        (dispatch.mlstm(*inputs, backend=path)[0] * weights).sum().backward()
    fast, ref = timed(lambda: step(backend), args.reps, sync), timed(lambda: step("reference"), args.reps, sync)
    nbytes = 2 * inputs[0].element_size() * (sum(x.numel() for x in inputs) + inputs[2].numel())
    return [("mlstm", ref, fast, nbytes)]


def scan_inputs(args, device, dtype):
    """WKV's (w, u, k, v) and the selective scan's (dt, x, A, B, C) at the sizes of ``--wkv``, ``--scan``."""
    g = torch.Generator().manual_seed(0)
    batch, steps, channels = (int(n) for n in args.wkv.split(","))
    wkv = [-torch.exp(torch.randn(channels, generator=g)), torch.randn(channels, generator=g),
           3 * torch.randn(batch, steps, channels, generator=g), torch.randn(batch, steps, channels, generator=g)]
    batch, steps, d_inner, d_state = (int(n) for n in args.scan.split(","))
    scan = [torch.nn.functional.softplus(torch.randn(batch, steps, d_inner, generator=g) - 2),
            torch.randn(batch, steps, d_inner, generator=g), -torch.arange(1.0, d_state + 1).repeat(d_inner, 1),
            torch.randn(batch, steps, d_state, generator=g), torch.randn(batch, steps, d_state, generator=g)]
    return ([t.to(device, dtype).requires_grad_() for t in wkv], [t.to(device, dtype).requires_grad_() for t in scan])


def scan_rows(args, device, dtype, backend, sync=lambda: None):
    """(op, reference s, path s, bytes) for WKV and the selective scan, forward + backward. Bytes: the
    inputs, outputs and their gradients each moved once (states stay on chip; WKV's per-position
    states, which its backward reads, and the scan's chunk checkpoints are not counted)."""
    wkv, scan = scan_inputs(args, device, dtype)
    rows = []
    for op, inputs, call in [("wkv", wkv, dispatch.wkv), ("scan", scan, dispatch.selective_scan)]:
        weights = torch.randn(inputs[3 if op == "wkv" else 1].shape, device=device, dtype=dtype)

        def step(path, inputs=inputs, call=call, weights=weights):
            (call(*inputs, backend=path)[0] * weights).sum().backward()
        fast, ref = timed(lambda: step(backend), args.reps, sync), timed(lambda: step("reference"), args.reps, sync)
        per_row = inputs[1].numel() if op == "scan" else inputs[2].numel()  # elements of one [B, T, *] input
        moved = 8 * per_row if op == "wkv" else 8 * per_row + 6 * inputs[3].numel()
        rows.append((op, ref, fast, moved * inputs[1].element_size()))
    return rows


def copy_bandwidth() -> float:
    big = torch.empty(2**28, dtype=torch.float32, device="cuda")
    seconds = timed(lambda: big.clone(), 5, torch.cuda.synchronize)
    return 2 * big.numel() * 4 / seconds  # bytes read + written per second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in [("N", 1024), ("d", 256), ("F", 8192), ("k", 32), ("reps", 3)]:
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--mlstm", default="8,256,4,32", help="mLSTM sizes B,T,H,d")
    parser.add_argument("--wkv", default="16,256,64", help="WKV sizes B,T,C")
    parser.add_argument("--scan", default="16,256,128,16", help="selective-scan sizes B,T,D,N")
    args = parser.parse_args()
    print(f"N={args.N} d={args.d} F={args.F} k={args.k} reps={args.reps} threads={torch.get_num_threads()} "
          f"load={os.getloadavg()[0]:.2f}")
    print("\nCPU, float32: dispatcher (torch path) vs reference, forward + backward")
    print(f"{'op':8} {'reference ms':>13} {'dispatcher ms':>14} {'ratio':>7}")
    cpu_rows = bench("cpu", torch.float32, args, None) + mlstm_rows(args, "cpu", torch.float32, None)
    for op, ref, fast, _ in cpu_rows + scan_rows(args, "cpu", torch.float32, None):
        print(f"{op:8} {ref * 1e3:13.1f} {fast * 1e3:14.1f} {ref / fast:7.2f}")
    print("\nGPU: Triton vs reference, forward + backward")
    if not torch.cuda.is_available():
        print("no GPU available in this run: GPU rows left empty")
        return
    peak = copy_bandwidth()
    print(f"device: {torch.cuda.get_device_name()}; measured copy bandwidth {peak / 1e9:.0f} GB/s")
    print(f"{'op':8} {'dtype':9} {'reference ms':>13} {'triton ms':>10} {'ratio':>7} {'of copy bw':>10}")
    for dtype in (torch.float32, torch.bfloat16):
        rows = bench("cuda", dtype, args, "triton") + mlstm_rows(args, "cuda", dtype, "triton", torch.cuda.synchronize)
        rows += scan_rows(args, "cuda", dtype, "triton", torch.cuda.synchronize)
        for op, ref, fast, nbytes in rows:
            print(f"{op:8} {str(dtype)[6:]:9} {ref * 1e3:13.2f} {fast * 1e3:10.2f} {ref / fast:7.2f} "
                  f"{nbytes / fast / peak:10.0%}")


if __name__ == "__main__":
    main()
