"""Mamba (Gu & Dao 2023): the selective state-space mixer, in gate form.

Per layer, with d_inner = expand * d_model, N = d_state, R = dt_rank (names as in the reference
implementation, mamba_simple.py / selective_scan_ref):

    [x, z] = in_proj(u)                          (no bias)
    x      = conv(x)                             depthwise causal, width d_conv, with bias
    x      = x * sigmoid(x)                      sigmoid: mixer.hook_conv_gate       [B, T, d_inner]
    dt     = softplus(dt_proj(x_proj_dt(x)))     mixer.ssm.hook_dt_gate              [B, T, d_inner]
    B, C   = x_proj_B(x), x_proj_C(x)            mixer.ssm.hook_B_gate, hook_C_gate  [B, T, N]
    A      = -exp(A_log)                         [d_inner, N]; S4D-real init A[d, n] = -(n + 1)
    decay  = exp(dt A)            (ZOH for A)    mixer.ssm.hook_decay_gate           [B, T, d_inner, N]
    h_t    = decay_t h_{t-1} + (dt_t x_t) B_t    mixer.ssm.hook_state                [B, T, d_inner, N]
    y_t    = h_t C_t + D x_t                     (sum over N; D a learned skip, init 1)
    out    = out_proj(y * silu(z))               silu(z): mixer.hook_out_gate        (no bias)

Choices, as the reference implementation makes them: B is discretised as dt * B (Euler), not with the
exact ZOH (dt A)^{-1}(exp(dt A) - 1) dt B; dt_rank = ceil(d_model / 16) when "auto"; dt_proj's weight
uniform in +-dt_rank^-0.5 and its bias the inverse softplus of dt drawn log-uniformly in [0.001, 0.1]
(floored at 1e-4), so the initial time steps span two decades; D = 1; no biases on in/out/x
projections, a bias on the conv. The residual outputs are rescaled at init as the reference's
``_init_weights(rescale_prenorm_residual=True)``: out_proj's weight (PyTorch's default draw) divided by
sqrt(n_residuals_per_layer * n_layers), with 2 residual branches per layer here (mixer and MLP, as the
reference's MambaLMHeadModel counts them when a block has an MLP), and the MLP's output weight with it;
the MLP's biases start at 0 (the reference zeroes every Linear bias except dt_proj's). ``init: "legacy"``
skips this rescale (the scheme before issue #16, kept so older zoo entries rebuild to their cards). ``A_log`` and
``D`` carry ``_no_weight_decay`` as in the reference
(a trainer that honours it keeps weight decay from pulling the decay rates toward A = -1).

Gate form: every data-dependent factor is hooked (conv gate, dt, B, C, decay, out gate). Frozen, the
map u -> out is linear: x is linear in u, the SSM input (dt x) B is linear in x for fixed dt and B, the
scan is linear for a fixed decay, h C + D x is linear for fixed C, and y * silu(z) is linear in y for a
fixed silu(z). (z itself then no longer matters: silu(z) is the whole factor.)

Parallel form, three paths computing the same function. While a hook reads or changes the decay or the
states (``hook_decay_gate``, ``hook_state``: caching them, patching), the decays and states are
materialised as ``[B, T, d_inner, N]`` tensors behind their hooks and scanned with
:func:`~workbench.architectures.scan.patchable_linear_scan`. Otherwise (training, generation, gate
freezing, any run that leaves those two hooks alone) :func:`selective_scan` computes the same outputs
without them (below), or, when every batch row has the same dt, B and C, :func:`shared_kernel_scan`
does ("Shared coefficients", below). :meth:`MambaMixer.forward_sequential` is the one-token-at-a-time
recurrence (the reference's ``step``), which the tests hold equal to all of them.

Fused selective scan. The materialised path is memory bound: for training it writes and reads the
decays, inputs, states and their gradients, each ``[B, T, d_inner, N]`` (34 MB at the benchmark's
16 x 256 x 128 x 16 in float32), several times over; the state is 16x the layer's activations. The
fused path never builds them. Time is cut into chunks of a few positions (``CHUNK_ELEMENTS``); a chunk's
decays ``exp(dt A)`` and inputs ``B (dt x)`` go into two reused ``[chunk, B, N, d_inner]`` buffers that
stay in cache, the recurrence runs through the chunk in place one position at a time (each step one
fused multiply-add over ``[B, N, d_inner]``), and ``y = C h`` is contracted at once per chunk. Only the
state entering each chunk is kept; the backward pass recomputes a chunk's decays and states from it,
runs ``g_t = C_t dL/dy_t + exp(dt_{t+1} A) g_{t+1}`` backwards through the chunk, and contracts g and h
into the gradients of dt, x, A, B, C and h0. Nothing larger than a chunk's buffers is built, and
only ``[B, N, d_inner]`` per chunk is kept for backward; the decays are computed as
``2^(dt A log2 e)`` (torch's exp2 is ~3x cheaper than its exp on this CPU; equal up to rounding).
Double backward goes through the materialised form. At the benchmark's size (benchmarks/scan.py,
T = 256, batch 16, one thread) the scan's forward+backward went from ~490 ms to ~38 ms per layer and
the whole model's training step ~5.5x faster; the tests hold the two paths and the recurrence equal in
float64, gradients included (tests/test_mamba_scan.py, tests/test_recurrent_basic.py). The fused scan's
code lives in ``workbench/kernels/selective_scan.py`` (its torch path) and :func:`selective_scan` reaches
it through the kernel dispatcher, which runs the Triton kernel instead on a GPU.

Shared coefficients. Attribution (workbench/attribution/attribute.py) runs the frozen model on a batch
of copies of one prompt, and gate freezing hands every copy the prompt's dt, B and C expanded over the
batch (batch stride 0): only x differs between rows, so the scan is one linear map per channel, the
same for every row: ``y[b, t, d] = sum_{s <= t} K[t, s, d] x[b, s, d]`` with ``K[t, s, d] = sum_n
C_t[n] exp(A[d, n] (S_t - S_s)[d]) dt_s[d] B_s[n]``, S the cumulative sum of dt; h0 adds
``sum_n C_t[n] exp(A[d, n] S_t[d]) h0[b, d, n]``, and ``h_T[b, d, n] = sum_s exp(A[d, n] (S_T - S_s)[d])
dt_s[d] B_s[n] x[b, s, d] + exp(A[d, n] S_T[d]) h0[b, d, n]``.
:func:`shared_kernel_scan` builds ``K [d_inner, T, T]`` once from the first row and applies it as one
batched matmul over d_inner; autograd's backward is the transposed matmul, ``b T^2 d_inner``
multiply-adds at matmul speed instead of a scan through ``b T d_inner N`` states, and attribution
repeats that backward once per batch of 64 targets on the retained graph. K is built in blocks of
rows (16 at d_inner = 128, N = 16, ``KERNEL_BLOCK_ELEMENTS``): the diagonal block term by term, its
exponent set to 0 above the diagonal before the exponential (so nothing overflows), and the columns
before the block as a rank-N matmul through the block's start R, ``exp(A (S_t - R)) exp(A (R - S_s))``,
both exponents <= 0; S is summed in float64 so that ``S_t - S_s`` keeps its digits. The blocks are
plain torch ops under checkpointing: a backward pass that wants dt, B, C or A recomputes them and
autograd differentiates them, one that wants only x (attribution's) never touches them, and nothing
of size ``[T, T, d_inner, N]`` exists at once. The path runs when dt, B and C all have batch 1 or
batch stride 0, x has batch > 1, neither ``hook_decay_gate`` nor ``hook_state`` is hooked,
``d_inner T^2 <= KERNEL_MAX_ELEMENTS`` (T <= 512 at d_inner = 128) and batch >= T / 8 if x requires
grad (T / 4 for a forward pass alone): K costs ~T^2 to build where the scan costs ~batch T per pass,
and at those ratios one forward plus one backward pass is about even with the fused scan, every
further backward pass on the graph a gain. Measured (one thread, d_inner = 128, N = 16, batch 64):
at T = 256 the forward pass took 58 ms against the fused scan's 57 ms and a backward pass to x 21 ms
against 88 ms; at T = 64, 8 and 2 ms against 15 and 21 ms. In ``benchmarks/attribution.py --archs
mamba`` (batch 64, one thread) our time went from 0.34 / 2.62 / 65.9 s to 0.10 / 1.21 / 15.2 s at
16 / 64 / 256 tokens, 6.6-11.5x faster than one backward pass per row (was 3.2-4.6x); of one batch's
backward pass at 256 tokens (112 ms) the kernel's matmuls and transposes are now ~30 ms, the rest the
model's linear maps, depthwise conv and gates. The tests hold this path equal to the other two in
float64, gradients included (tests/test_mamba_shared_kernel.py).

State patching propagates: patching ``mixer.ssm.hook_state`` at position t replaces h_t, and the
states after t are recomputed from it (scan.py, "Patchable states"), so outputs at t and later change
and outputs before t do not. dt, B, C and the decay do not depend on h, so the continuation is exact.
A backward hook there sees the total derivative dL/dh_t (scan.py, "Gradients at a state hook").

Carried state: ``(conv window [B, d_conv - 1, d_inner], h [B, d_inner, N])``.

An MLP sub-block follows the mixer (BlockLM's default). The Mamba block has none (its gated in/out
projections play that part); we add one because transcoders replace a position-wise map
(hook_mlp_in -> hook_mlp_out), and so that every architecture's blocks differ in the mixer alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformer_lens.hook_points import HookPoint

from workbench.architectures.components import (
    BLOCK_DEFAULTS,
    ArchConfig,
    BlockLM,
    CausalConv1d,
    silu_gate_form,
)
from workbench.architectures.gate_form import batch_shared
from workbench.architectures.scan import patchable_linear_scan
from workbench.kernels import dispatch
from workbench.kernels.selective_scan import selective_scan_materialised as _materialised  # noqa: F401 (the tests' reference)

DEFAULTS = {
    **BLOCK_DEFAULTS,
    "expand": 2,  # d_inner = expand * d_model
    "d_state": 16,  # N
    "d_conv": 4,
    "dt_rank": "auto",  # ceil(d_model / 16)
    "init": "reference",  # or "legacy": no residual rescale (the scheme before issue #16; module docstring)
}

DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4  # the reference implementation's dt initialisation


# Positions per chunk of the fused scan: about this many state elements per thread (so that the chunk's
# few [chunk, B, N, d_inner] buffers stay near the core's 1 MiB L2 cache on the machines we time on).
CHUNK_ELEMENTS = 1 << 18
LOG2_E = 1.4426950408889634
# The shared-coefficient path (module docstring, "Shared coefficients"): a diagonal block's decays
# [rows, rows, d_inner, N] hold at most this many elements (rows = 16 at d_inner = 128, N = 16: the
# fastest here), and the kernel [d_inner, T, T] is built only up to this size (T = 512 at d_inner = 128).
KERNEL_BLOCK_ELEMENTS = 1 << 19
KERNEL_MAX_ELEMENTS = 1 << 25


def _is_hooked(hook: HookPoint) -> bool:
    """Whether anything can read or change the hook's value (as :func:`~.scan.hook_patch_mask` asks)."""
    return bool(hook._forward_hooks or hook._backward_hooks)


def _use_shared_kernel(dt: torch.Tensor, x: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> bool:
    """Whether :func:`shared_kernel_scan` pays off here (module docstring, "Shared coefficients")."""
    batch, steps, d_inner = x.shape
    shared = batch_shared(dt) and batch_shared(B) and batch_shared(C)
    if batch < 2 or not shared or d_inner * steps * steps > KERNEL_MAX_ELEMENTS:
        return False
    backward = torch.is_grad_enabled() and x.requires_grad
    return (8 if backward else 4) * batch >= steps


def _kernel_block(S: torch.Tensor, dt: torch.Tensor, A2: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  t0: int, t1: int) -> torch.Tensor:
    """Rows ``t0 <= t < t1`` of the scan's kernel ``K[t, s, d] = sum_n C[t, n] exp(A[d, n] (S[t, d] - S[s, d]))
    dt[s, d] B[s, n]`` (``s <= t``; 0 above the diagonal), as ``[d_inner, t1 - t0, T]``. ``S`` is the
    cumulative sum of dt (float64), ``A2 = A log2 e``. Columns ``t0 <= s < t1`` (the diagonal block) are
    computed term by term; columns ``s < t0`` factor through ``R = S[t0 - 1]`` as
    ``exp(A (S_t - R)) exp(A (R - S_s))`` (both exponents <= 0), a rank-N matmul per d_inner."""
    steps, d_inner = dt.shape
    rows = t1 - t0
    pos = torch.arange(t0, t1, device=dt.device)
    causal = pos[:, None] >= pos  # [rows, rows]
    # masked before the exponential: above the diagonal A (S_t - S_s) > 0 could overflow
    gap = torch.where(causal[..., None], S[t0:t1, None] - S[None, t0:t1], 0).to(dt.dtype)  # [rows, rows, d_inner]
    CB = C[t0:t1, None, :] * B[None, t0:t1, :] * causal[..., None]  # [rows, rows, N]
    diagonal = torch.matmul(torch.exp2(gap[..., None] * A2), CB[..., None]).squeeze(-1) * dt[t0:t1]
    parts = [diagonal.permute(2, 0, 1)]  # [d_inner, rows, rows]
    if t0 > 0:
        R = S[t0 - 1]
        P = torch.exp2((S[t0:t1] - R).to(dt.dtype)[..., None] * A2) * C[t0:t1, None, :]  # [rows, d_inner, N]
        Q = torch.exp2((R - S[:t0]).to(dt.dtype)[..., None] * A2) * (dt[:t0, :, None] * B[:t0, None, :])
        parts.insert(0, torch.bmm(P.transpose(0, 1), Q.permute(1, 2, 0)))  # [d_inner, rows, t0]
    if t1 < steps:
        parts.append(dt.new_zeros(d_inner, rows, steps - t1))
    return torch.cat(parts, dim=2)


class _Transposed(torch.autograd.Function):
    """``m.t().contiguous()`` for a matrix, whose backward is a contiguous transpose too: the kernel's
    matmuls run over d_inner, and handing them (and taking back from them) gradients as strided views
    of ``[B, T, d_inner]`` would make each matmul copy its operands matrix by matrix (slower than the
    matmul's own arithmetic at T = 256)."""

    @staticmethod
    def forward(ctx, m):
        return m.t().contiguous()

    @staticmethod
    def backward(ctx, grad):
        return grad.t().contiguous()


def shared_kernel_scan(dt: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`selective_scan` for coefficients shared by every batch row (dt, B, C of batch 1 or expanded
    to the batch with stride 0; x per row): the scan's kernel ``K [d_inner, T, T]`` is built once from the
    first row and applied as one batched matmul over d_inner (module docstring, "Shared coefficients").
    Plain torch ops throughout, so autograd gives every gradient; the kernel's blocks are checkpointed
    (recomputed by a backward pass that wants dt, A, B or C, never kept)."""
    dt, B, C = dt[0], B[0], C[0]
    steps, d_inner = dt.shape
    d_state = A.shape[1]
    A2 = A * LOG2_E  # [d_inner, N]
    S = dt.to(torch.float64).cumsum(0)  # [T, d_inner]; float64 so that S_t - S_s keeps its digits
    rows = max(1, math.isqrt(KERNEL_BLOCK_ELEMENTS // (d_inner * d_state)))  # a diagonal block's decays
    build = _kernel_block
    if torch.is_grad_enabled() and any(t.requires_grad for t in (dt, A, B, C)):
        def build(*args):
            return checkpoint(_kernel_block, *args, use_reentrant=False, preserve_rng_state=False)
    K = torch.cat([build(S, dt, A2, B, C, t0, min(t0 + rows, steps)) for t0 in range(0, steps, rows)], dim=1)
    batch = x.shape[0]
    x_d = _Transposed.apply(x.reshape(batch * steps, d_inner)).view(d_inner, batch, steps)  # [d_inner, batch, T]
    y = torch.bmm(x_d, K.transpose(1, 2))  # [d_inner, batch, T (t)]
    # h_T = sum_s exp(A (S_T - S_s)) dt_s B_s x_s (+ exp(A S_T) h0)
    gap = (S[-1] - S).to(dt.dtype)  # [T, d_inner]
    to_end = torch.exp2(gap[..., None] * A2) * (dt[..., None] * B[:, None, :])  # [T, d_inner, N]
    h_last = torch.bmm(x_d, to_end.transpose(0, 1)).transpose(0, 1)  # [batch, d_inner, N]
    if h0 is not None:
        from_start = torch.exp2(S.to(dt.dtype)[..., None] * A2)  # [T, d_inner, N]: exp(A S_t)
        y = y + torch.matmul(h0.transpose(0, 1), (from_start * C[:, None, :]).permute(1, 2, 0))
        h_last = h_last + from_start[-1] * h0
    return _Transposed.apply(y.reshape(d_inner, batch * steps)).view(batch, steps, d_inner), h_last


def selective_scan(dt: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_n C h [B, T, d_inner], h_T [B, d_inner, N])`` for the selective SSM (module docstring),
    fused: the path taken when no hook reads the ``[B, T, d_inner, N]`` decays or states."""
    batch, steps, d_inner = x.shape
    per_position = batch * d_inner * A.shape[1]
    chunk = max(1, min(steps, CHUNK_ELEMENTS * torch.get_num_threads() // per_position))
    # The kernel dispatcher: the chunked torch path on the CPU (chunks sized to the cache here), the
    # Triton kernel with its own checkpoint interval on a GPU (workbench/kernels/selective_scan.py).
    return dispatch.selective_scan(dt, x, A, B, C, h0, chunk=None if x.is_cuda else chunk)


class SelectiveSSM(nn.Module):
    """x [B, T, d_inner] -> y [B, T, d_inner] through the selective scan (module docstring)."""

    def __init__(self, d_inner: int, d_state: int, dt_rank: int):
        super().__init__()
        self.dt_rank, self.d_state = dt_rank, d_state
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -dt_rank**-0.5, dt_rank**-0.5)
            log_dt = torch.rand(d_inner) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)
            dt = log_dt.exp().clamp(min=DT_FLOOR)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        s4d_real = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)  # A = -(1..N)
        self.A_log = nn.Parameter(torch.log(s4d_real))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        for name in ("dt", "B", "C", "decay"):
            setattr(self, f"hook_{name}_gate", HookPoint())
        # exp(dt A) is fixed once dt is: gate freezing leaves this hook alone, so the fused scan still runs
        self.derived_gate_hooks = ("hook_decay_gate",)
        self.hook_state = HookPoint()

    def selection(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The input-dependent dt [.., d_inner], B [.., N], C [.., N] (no hooks)."""
        dt_low, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt_low)), B, C

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None):
        dt, B, C = self.selection(x)
        dt, B, C = self.hook_dt_gate(dt), self.hook_B_gate(B), self.hook_C_gate(C)
        if x.shape[1] and not (_is_hooked(self.hook_decay_gate) or _is_hooked(self.hook_state)):
            scan = shared_kernel_scan if _use_shared_kernel(dt, x, B, C) else selective_scan
            y, h_last = scan(dt, x, -torch.exp(self.A_log), B, C, h0)
            return y + self.D * x, h_last
        decay = self.hook_decay_gate(torch.exp(dt.unsqueeze(-1) * -torch.exp(self.A_log)))
        inp = (dt * x).unsqueeze(-1) * B.unsqueeze(2)  # [B, T, d_inner, N]
        states = patchable_linear_scan(self.hook_state, decay, inp, h0)
        y = (states * C.unsqueeze(2)).sum(-1) + self.D * x
        return y, states[:, -1]


class MambaMixer(nn.Module):
    def __init__(self, cfg: ArchConfig):
        super().__init__()
        d_inner = int(cfg.expand * cfg.d_model)
        dt_rank = math.ceil(cfg.d_model / 16) if cfg.dt_rank == "auto" else int(cfg.dt_rank)
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner, bias=False)
        self.conv = CausalConv1d(d_inner, cfg.d_conv)
        self.ssm = SelectiveSSM(d_inner, cfg.d_state, dt_rank)
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=False)
        self.hook_conv_gate = HookPoint()
        self.hook_out_gate = HookPoint()

    def forward(self, u: torch.Tensor, state: tuple | None = None):
        window, h0 = state if state is not None else (None, None)
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x, window = self.conv(x, window)
        y, h_last = self.ssm(silu_gate_form(x, self.hook_conv_gate), h0)
        return self.out_proj(y * self.hook_out_gate(F.silu(z))), (window, h_last)

    def forward_sequential(self, u: torch.Tensor, state: tuple | None = None):
        """One token at a time, as the reference's ``step`` (no scan, no hooks): the test reference."""
        x_all, z_all = self.in_proj(u).chunk(2, dim=-1)
        batch, d_inner = u.shape[0], x_all.shape[-1]
        width, ssm = self.conv.width, self.ssm
        window = u.new_zeros(batch, width - 1, d_inner) if state is None else state[0]
        h = u.new_zeros(batch, d_inner, ssm.d_state) if state is None else state[1]
        kernel = self.conv.conv.weight[:, 0, :].T  # [width, d_inner]
        A = -torch.exp(ssm.A_log)
        outputs = []
        for t in range(u.shape[1]):
            taps = torch.cat([window, x_all[:, t:t + 1]], dim=1)  # the last `width` inputs
            window = taps[:, 1:]
            x = F.silu((taps * kernel).sum(1) + self.conv.conv.bias)
            dt, B, C = ssm.selection(x)
            h = torch.exp(dt.unsqueeze(-1) * A) * h + (dt * x).unsqueeze(-1) * B.unsqueeze(1)
            y = (h * C.unsqueeze(1)).sum(-1) + ssm.D * x
            outputs.append(self.out_proj(y * F.silu(z_all[:, t])))
        return torch.stack(outputs, dim=1), (window, h)


RESIDUALS_PER_LAYER = 2  # the mixer's and the MLP's branches


def build(config: dict) -> BlockLM:
    model = BlockLM(ArchConfig(config), make_mixer=lambda cfg, _layer: MambaMixer(cfg))
    if model.cfg.get("init", "reference") == "legacy":
        return model
    scale = math.sqrt(RESIDUALS_PER_LAYER * model.cfg.n_layers)  # module docstring: the reference's rescale
    with torch.no_grad():
        for block in model.blocks:
            block.mixer.out_proj.weight.div_(scale)
            block.mlp.W_out.weight.div_(scale)
            block.mlp.W_in.bias.zero_()  # the reference zeroes every Linear bias but dt_proj's
            block.mlp.W_out.bias.zero_()
    return model
