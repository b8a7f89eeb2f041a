"""Every kernel against its pure-torch reference (values and gradients), the dispatcher, the read counter.

Triton runs here in its CPU interpreter. ``triton.jit`` reads ``TRITON_INTERPRET`` when a function is
defined: triton's own library functions (``tl.max``, ``tl.argmax``...) when triton is first imported,
the workbench's kernels when ``workbench.kernels.gemm`` / ``.sparse`` are imported. So the variable is
set by ``tests/triton_interpreted.py``, imported before the kernels. Run alone, that is early enough. In a whole-suite
run, other test modules have already imported triton (transformer_lens imports it) without the
variable, so the Triton-backend tests are skipped in-process and
:func:`test_interpreted_kernels_in_a_child_process` runs them (``-k triton``) in a child process with
``TRITON_INTERPRET=1``; either way they run.
Shapes are tiny and deliberately ragged (not multiples of the 16/32 blocks).
"""

import pytest
import torch
from triton_interpreted import IN_PROCESS, TRITON, in_child_only, run_triton_tests_in_child

from workbench.kernels import dispatch, gemm

DTYPES = [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)]  # (dtype, relative tolerance)
ENCODE_CASES = [  # (rows, d, features, k, mode): ragged everywhere; 70 features span three F tiles
    (5, 7, 37, 3, "topk"),
    (19, 33, 70, 4, "jumprelu"),
    (17, 20, 40, 5, "plain"),
]


def close(a, b, rtol):
    a, b = a.float(), b.float()
    assert torch.allclose(a, b, rtol=rtol, atol=rtol * max(1.0, b.abs().max().item())), (a - b).abs().max()


def dense(indices, values, n_features):
    return torch.zeros(indices.shape[0], n_features).scatter_add(1, indices, values.float())


def encode_inputs(N, d, F, mode, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g).to(dtype)
    W = torch.randn(d, F, generator=g).to(dtype)
    b = (0.1 * torch.randn(F, generator=g)).to(dtype)
    threshold = (2.0 + torch.rand(F, generator=g)) * d**0.5 if mode == "jumprelu" else None  # 2-3 sigma
    return x, W, b, threshold


def run_encode(backend, x, W, b, k, threshold, relu):
    leaves = [t.clone().requires_grad_() for t in (x, W, b)]
    indices, values = dispatch.sparse_encode(*leaves, k, threshold=threshold, relu=relu, backend=backend)
    weights = torch.randn(x.shape[0], W.shape[1], generator=torch.Generator().manual_seed(1))
    (values.float() * weights.gather(1, indices)).sum().backward()
    return indices, values, [t.grad for t in leaves]


@pytest.mark.parametrize("dtype,rtol", DTYPES)
@pytest.mark.parametrize("N,d,F,k,mode", ENCODE_CASES)
@pytest.mark.parametrize("backend", [TRITON, "torch"])
def test_sparse_encode_matches_reference(backend, N, d, F, k, mode, dtype, rtol):
    x, W, b, threshold = encode_inputs(N, d, F, mode, dtype)
    relu = mode != "plain"
    ref_i, ref_v, ref_grads = run_encode("reference", x, W, b, k, threshold, relu)
    idx, val, grads = run_encode(backend, x, W, b, k, threshold, relu)
    assert idx.shape == (N, k) and idx.dtype == torch.int64 and val.dtype == dtype
    close(dense(idx, val, F), dense(ref_i, ref_v, F), rtol)
    for got, want in zip(grads, ref_grads):
        assert want.abs().sum() > 0  # the comparison is not vacuous
        close(got, want, rtol)
    if mode == "jumprelu":  # the threshold bites: some rows have fewer than k active features
        assert 0 < (ref_v != 0).sum() < N * k


@pytest.mark.skipif(not IN_PROCESS, reason="needs the interpreter; run in a child process instead")
def test_triton_sparse_encode_selects_the_top_k_of_the_dense_preactivations():
    x, W, b, _ = encode_inputs(9, 6, 50, "topk", torch.float32)
    pre = x @ W + b
    idx, val = dispatch.sparse_encode(x, W, b, 4, relu=False, backend="triton")
    assert torch.equal(idx.sort(1).values, pre.topk(4).indices.sort(1).values)
    close(val, pre.gather(1, idx), 1e-5)


@pytest.mark.parametrize("dtype,rtol", DTYPES)
@pytest.mark.parametrize("N,F,k,d_out", [(5, 37, 3, 11), (19, 70, 4, 40), (33, 20, 20, 1)])
@pytest.mark.parametrize("backend", [TRITON, "torch"])
def test_sparse_decode_matches_reference(backend, N, F, k, d_out, dtype, rtol):
    g = torch.Generator().manual_seed(3)
    indices = torch.rand(N, F, generator=g).argsort(1)[:, :k].contiguous()
    values = torch.randn(N, k, generator=g).to(dtype)
    W = torch.randn(F, d_out, generator=g).to(dtype)
    grad_y = torch.randn(N, d_out, generator=g)
    results = {}
    for name in ("reference", backend):
        v, w = values.clone().requires_grad_(), W.clone().requires_grad_()
        y = dispatch.sparse_decode(indices, v, w, backend=name)
        (y.float() * grad_y).sum().backward()
        results[name] = (y, v.grad, w.grad)
    for got, want in zip(results[backend], results["reference"]):
        assert got.dtype == dtype and want.abs().sum() > 0
        close(got, want, rtol)
    inactive = torch.ones(F, dtype=torch.bool)
    inactive[indices.flatten()] = False
    assert (results[backend][2][inactive] == 0).all()  # the backward writes active rows only


@pytest.mark.parametrize("backend", [TRITON, "torch", "reference"])
def test_sparse_decode_sums_repeated_features_and_keeps_leading_dims(backend):
    W = torch.arange(12.0).reshape(4, 3)
    indices = torch.tensor([[[1, 1], [0, 3]]])
    values = torch.tensor([[[2.0, 0.5], [1.0, -1.0]]])
    want = torch.stack([2.5 * W[1], W[0] - W[3]])[None]
    assert torch.equal(dispatch.sparse_decode(indices, values, W, backend=backend), want)


@pytest.mark.parametrize("dtype,rtol", DTYPES)
@pytest.mark.parametrize("M,K,N", [(3, 3, 3), (37, 45, 19), (16, 64, 33)])
@pytest.mark.skipif(not IN_PROCESS, reason="needs the interpreter; run in a child process instead")
def test_triton_gemm_matches_reference(M, K, N, dtype, rtol):
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(M, K, generator=g).to(dtype), torch.randn(K, N, generator=g).to(dtype)
    grad_c = torch.randn(M, N, generator=g)
    results = {}
    for name in ("reference", "triton"):
        la, lb = a.clone().requires_grad_(), b.clone().requires_grad_()
        c = dispatch.matmul(la, lb, backend=name)
        (c.float() * grad_c).sum().backward()
        results[name] = (c, la.grad, lb.grad)
    for got, want in zip(results["triton"], results["reference"]):
        close(got, want, rtol)


def test_gemm_read_counter_reproduces_the_lectures_3x3_example():
    assert gemm.count_reads(3, 3, 3, tile=3) == (54, 18)
    assert gemm.count_reads(3, 3, 3, tile=1).tiled == 54  # 1x1 tiles: no reuse, the naive count
    a, b = torch.randn(3, 3), torch.randn(3, 3)
    c, reads = gemm.tiled_matmul_model(a, b, tile=3)
    assert reads == 18
    close(c, a @ b, 1e-5)
    for M, K, N, tile in [(5, 7, 3, 2), (8, 8, 8, 4), (6, 9, 4, 5)]:  # ragged edges too
        a, b = torch.randn(M, K), torch.randn(K, N)
        c, reads = gemm.tiled_matmul_model(a, b, tile)
        assert reads == gemm.count_reads(M, N, K, tile).tiled
        close(c, a @ b, 1e-5)
    assert gemm.count_reads(8, 8, 8, 4) == (1024, 256)  # 2MNK / T


def test_dispatcher_chooses_paths_and_names_bad_backends(monkeypatch):
    x = torch.zeros(2, 3)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert dispatch.resolve_backend(x) == "torch"  # CPU: the fastest torch path
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    assert dispatch.resolve_backend(x) == "reference"
    assert dispatch.resolve_backend(x, "torch") == "torch"  # the argument wins over the variable
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda'.*choose one of: auto, triton"):
        dispatch.resolve_backend(x)
    monkeypatch.setattr(gemm, "INTERPRETED", False)
    with pytest.raises(ValueError, match="'triton' needs CUDA tensors"):
        dispatch.resolve_backend(x, "triton")


def test_dispatcher_rejects_bad_shapes():
    x, W, b, _ = encode_inputs(2, 3, 5, "topk", torch.float32)
    with pytest.raises(ValueError, match="1 <= k <= 5"):
        dispatch.sparse_encode(x, W, b, 6)
    with pytest.raises(ValueError, match=r"x \[..., 3\]"):
        dispatch.sparse_encode(x[:, :2], W, b, 2)
    with pytest.raises(ValueError, match="int64 indices"):
        dispatch.sparse_decode(torch.zeros(2, 2, dtype=torch.int32), torch.zeros(2, 2), W.t())


@in_child_only
def test_interpreted_kernels_in_a_child_process():
    run_triton_tests_in_child(__file__, 20)
