"""The Energy-Based Transformer (EBT): prediction as gradient descent on an energy E(context, y^).

A causal transformer scores, at every position t, how well a distribution y^_t over the next token fits
the context x_{<=t}: a scalar energy, low = compatible. Predicting is minimising it ("thinking"):

1. Context pass: the tokens run through the blocks as an ordinary causal transformer (rotary
   positions); each attention keeps its keys and values. This pass does not depend on y^, so it runs
   once per forward, whatever the number of steps.
2. Prediction stream: position t holds one extra token, the embedding ``y^_t @ W_E + p`` (the token
   embedding, tied, plus a learned "this is a prediction" vector p). Through the same blocks (shared
   weights), its query at t attends to the context keys <= t and to its own key, nothing else; no
   token attends to a prediction token but itself. So y^_t is seen only by its own position: no
   gradient about token t+1 (which later context positions see) reaches y^_t, and changing token t
   changes no energy or prediction before t.
3. Energy: the stream's final normalised state h_t (``hook_final``) is read out as per-token scores
   l_t = W_U h_t (``unembed``) and E_t = -sum_v y^_{t,v} l_{t,v} - tau H(y^_t), tau = ``entropy_weight``.
   Without the entropy term (tau = 0) E is nearly linear in y^, so its minimum over the simplex is a
   corner: more descent steps than training used drive y^ to one-hot and the loss of every miss to
   infinity (measured: ebt-toyworld's loss 3.6 at 1 step, 17.8 at 16). With tau > 0 and l fixed the
   minimum is softmax(l / tau), an interior point, and the descent settles there.
4. Descent: y^ = softmax(z), z_0 a random start, z_{k+1} = z_k - alpha dE/dz_k (+ noise); the step
   size alpha = exp(log_alpha) is learned (initialised to ``step_size * d_vocab``: at a spread-out y^
   the gradient on the logits scales like 1/V). Steps 0..K-1 take gradients; in eval mode E(z_K) is
   evaluated too and each position keeps its lowest-energy z_k ("keep the best seen").
5. Training (``model.train()``): K is drawn from [train_steps_min, train_steps_max], alpha is scaled by
   a factor from [1 - step_jitter, 1 + step_jitter], ``noise`` times N(0, 1) is added after each step
   (Langevin-like), and the descent is unrolled with ``create_graph=True``, so the loss on the returned
   logits back-propagates through every step (second order). ``replay`` > 0 starts that fraction of
   rows from the previous batch's final logits (a one-batch replay buffer) when the shapes match.
   The draws come from a generator seeded by the batch's tokens, so a resumed run redraws them alike.
6. Output: ``forward`` returns log(y^) of the kept prediction (training: the final step), so the shared
   trainer's next-token loss and every evaluator read it as ordinary logits. Eval uses
   ``inference_steps`` steps; :meth:`EnergyTransformer.think` takes any number and returns the whole
   trajectory.

Random start: in eval mode z_0 at absolute position t is N(0, init_scale^2) from a generator seeded by
t alone (shared by every row), so a forward is deterministic and a split forward with carried state
equals the full one. Carried state: per block, the context keys and values so far (a KV cache).

Hooks. The shared names (``hook_embed`` = the y^ embedding, ``blocks.{l}.hook_*``, ``hook_final``, the
gates ``blocks.{l}.mixer.hook_pattern`` [B, H, T, P+T+1] (last column: the position's own prediction
token) and the norms' ``hook_scale``) fire only in the energy transformer's prediction stream at the
final gradient step, the one evaluating E(z_{K-1}) whose gradient gives z_K: the context pass and the
other steps run with those hooks silenced, so a patch or a cache sees one evaluation, and a patch
there moves the prediction. ``energy.hook_yhat`` [B, T, V], ``energy.hook_energy`` [B, T] and
``energy.hook_grad`` [B, T, V] (dE/dz) are single HookPoints called once per step (in eval also at the
final z_K, without a gradient); ``run_with_cache`` keeps the last call, a hook function sees them all,
and returning a value from ``hook_grad`` steers the descent.

Gate form and graphs: with the patterns and scales frozen and y^ fixed, the final step's stream is
linear between features, and ``unembed`` reads the per-token energy scores l from ``hook_final``. But
the model's logits are log(y^) after a gradient step through that stream, not a linear readout of
``hook_final``, so graphs explain l at the final step with y^ frozen and are marked approximate (the
attribution code reads :attr:`EnergyTransformer.linearization_note`).

Interventions: the logits follow from the final step's gradient, so they depend on the derivative of
the hooked pass, not only on its values. A patched value is a constant there (it also cuts the gradient
through itself), and restoring some clean values leaves the rest of the derivative as it was, so the
identities "patching a value with itself changes nothing" and "restoring the last residual restores the
logits" do not hold; the model declares :attr:`EnergyTransformer.value_patching_note`, and the tests of
those identities skip it. With gradients on, the final step keeps its graph (second order), so
attribution patching can differentiate the logits through it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformer_lens.hook_points import HookedRootModule, HookPoint

from workbench.architectures.components import BLOCK_DEFAULTS, MLP, ArchConfig, Block, Norm
from workbench.architectures.hooked import SharedHookNames

DEFAULTS = {
    **BLOCK_DEFAULTS,
    "n_heads": 4,
    "inference_steps": 4,  # eval-mode descent steps
    "train_steps_min": 1,
    "train_steps_max": 3,
    "step_size": 0.5,  # alpha at initialisation = step_size * d_vocab (learned afterwards)
    "step_jitter": 0.5,  # training: alpha times U(1 - jitter, 1 + jitter)
    "noise": 0.0,  # training: Langevin-like noise added to z after each step
    "init_scale": 0.1,  # z_0 ~ N(0, init_scale^2); 1.0 trained slower on recall (loss 3.4 vs 2.4 at 200 steps)
    "replay": 0.0,  # training: fraction of rows started from the previous batch's final z
    "entropy_weight": 0.0,  # tau in E = -y^ . l - tau H(y^) (step 3); 0: the plain readout energy
}
START_SEED = 20240613  # the eval-mode random start at position t is seeded by START_SEED + t

LINEARIZATION_NOTE = (
    "Energy-Based Transformer: the graph is of the energy transformer's prediction stream at the final "
    "descent step with y^ frozen; its logit targets are the energy scores l = W_U hook_final (E = -y^ . l), "
    "while the model's logits are log(y^) after a gradient step through that stream, a nonlinear function "
    "of it; edges are exact for l, not for the output logits")

VALUE_PATCHING_NOTE = (
    "Energy-Based Transformer: the logits are log(y^) after a gradient step through the hooked pass, so "
    "they depend on that pass's derivative, not only its values: a patched value is a constant that cuts "
    "the gradient through it, and restoring some values leaves the rest of the derivative as it was")


@dataclass
class ContextRead:
    """The context pass of one attention: keys/values of earlier chunks (carried state) or None."""
    past: tuple[torch.Tensor, torch.Tensor] | None
    offset: int


@dataclass
class PredictRead:
    """The prediction pass: the context keys/values (all positions so far) the stream may read."""
    keys: torch.Tensor
    values: torch.Tensor
    offset: int


def rotate(x: torch.Tensor, offset: int) -> torch.Tensor:
    """Rotary positions (half-split form) on ``[B, H, T, d_head]`` at positions offset..offset+T-1."""
    half = x.shape[-1] // 2
    freq = 10000.0 ** (-torch.arange(half, dtype=x.dtype, device=x.device) / half)
    angle = torch.arange(offset, offset + x.shape[2], dtype=x.dtype, device=x.device)[:, None] * freq
    cos, sin = angle.cos(), angle.sin()
    a, b = x[..., :half], x[..., half:2 * half]
    return torch.cat([a * cos - b * sin, a * sin + b * cos, x[..., 2 * half:]], dim=-1)


class TwoStreamAttention(nn.Module):
    """Causal self-attention for the context; for the prediction stream, attention to the context keys
    <= t and to the position's own key (module docstring, step 2). The mixer of the shared ``Block``:
    the read object it gets as its "state" says which pass runs."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model={cfg.d_model} is not divisible by n_heads={cfg.n_heads}")
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.W_QKV = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.W_O = nn.Linear(cfg.d_model, cfg.d_model)
        self.hook_pattern = HookPoint()

    def _qkv(self, x: torch.Tensor, offset: int):
        B, T, _ = x.shape
        q, k, v = self.W_QKV(x).view(B, T, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        return rotate(q, offset), rotate(k, offset), v

    def _merge(self, out: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = out.shape
        return self.W_O(out.transpose(1, 2).reshape(B, T, -1))

    def _scores(self, q: torch.Tensor, keys: torch.Tensor, offset: int) -> torch.Tensor:
        """Scaled scores of queries at offset.. against keys at 0..; later keys masked to -inf."""
        scores = q @ keys.transpose(-1, -2) / math.sqrt(self.d_head)
        query_pos = torch.arange(offset, offset + q.shape[2], device=q.device)[:, None]
        later = torch.arange(keys.shape[2], device=q.device)[None, :] > query_pos
        return scores.masked_fill(later, float("-inf"))

    def forward(self, x: torch.Tensor, read):
        q, k, v = self._qkv(x, read.offset)
        if isinstance(read, ContextRead):
            if read.past is not None:
                k, v = torch.cat([read.past[0], k], 2), torch.cat([read.past[1], v], 2)
            pattern = torch.softmax(self._scores(q, k, read.offset), dim=-1)
            return self._merge(pattern @ v), (k, v)
        own = (q * k).sum(-1, keepdim=True) / math.sqrt(self.d_head)
        scores = torch.cat([self._scores(q, read.keys, read.offset), own], dim=-1)
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        out = pattern[..., :-1] @ read.values + pattern[..., -1:] * v
        return self._merge(out), None


class EnergyHooks(nn.Module):
    """The per-step hooks of the descent (module docstring, "Hooks")."""

    def __init__(self):
        super().__init__()
        self.hook_yhat, self.hook_energy, self.hook_grad = HookPoint(), HookPoint(), HookPoint()


@contextmanager
def silenced(hook_points: list[HookPoint]) -> Iterator[None]:
    """Within the context the hook points run as identities: their hooks are set aside, then restored
    (how the context pass and the non-final steps stay out of caches and patches)."""
    saved = [(hp, hp._forward_hooks, hp._backward_hooks) for hp in hook_points]
    for hp, _, _ in saved:
        hp._forward_hooks, hp._backward_hooks = OrderedDict(), OrderedDict()
    try:
        yield
    finally:
        for hp, fwd, bwd in saved:
            hp._forward_hooks, hp._backward_hooks = fwd, bwd


@dataclass
class Thought:
    """What :meth:`EnergyTransformer.think` returns; step axis first (K + 1 entries: z_0..z_K)."""
    logits: torch.Tensor  # [B, T, V] log(y^) of the kept (lowest-energy) prediction
    energies: torch.Tensor  # [K + 1, B, T]
    yhat: torch.Tensor  # [K + 1, B, T, V]
    grads: torch.Tensor  # [K, B, T, V] dE/dz at steps 0..K-1
    best_step: torch.Tensor  # [B, T] the step whose prediction was kept

    @property
    def best_energy(self) -> torch.Tensor:
        """[K + 1, B, T]: the lowest energy seen up to each step (non-increasing by construction)."""
        return self.energies.cummin(dim=0).values


class EnergyTransformer(SharedHookNames, HookedRootModule):
    """The EBT (module docstring). ``forward(tokens, state=None, return_state=False)`` as every
    architecture; :meth:`energy_of` and :meth:`think` for the energy itself and the trajectory; the
    per-step hooks are the module ``energy`` (``energy.hook_energy``, ...).

    Built from the shared parts (``components.Block``, ``Norm``, ``MLP``) but deliberately not a
    ``BlockLM``: the interventions' fast paths run a ``BlockLM``'s blocks one position at a time, which
    would skip the context pass and the descent."""

    linearization_note = LINEARIZATION_NOTE
    value_patching_note = VALUE_PATCHING_NOTE

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        if cfg.train_steps_min > cfg.train_steps_max:
            raise ValueError(f"train_steps_min={cfg.train_steps_min} exceeds train_steps_max={cfg.train_steps_max}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, TwoStreamAttention(cfg), MLP(cfg.d_model, cfg.d_mlp, cfg.act_fn), cfg.norm)
            for _ in range(cfg.n_layers))
        self.ln_final = Norm(cfg.d_model, cfg.norm)
        self.hook_final = HookPoint()
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.energy = EnergyHooks()
        self.pred_vector = nn.Parameter(torch.zeros(cfg.d_model))
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.step_size * cfg.d_vocab)))
        self.setup()
        self.register_hook_aliases({})
        self._starts = torch.empty(0, cfg.d_vocab)
        self._replay: torch.Tensor | None = None

    @property
    def energy_hook_points(self) -> list[HookPoint]:
        return [self.energy.hook_yhat, self.energy.hook_energy, self.energy.hook_grad]

    def _stream_hooks(self) -> list[HookPoint]:
        energy = set(map(id, self.energy_hook_points))
        return [hp for hp in self.hook_dict.values() if id(hp) not in energy]

    # --- step 1: the context pass ------------------------------------------------------------------
    def read_context(self, tokens: torch.Tensor, state: list | None = None) -> list[tuple]:
        """Per block the context keys and values of every position so far (the carried state)."""
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be int64 [batch, pos]; got {tuple(tokens.shape)} {tokens.dtype}")
        offset = 0 if state is None else state[0][0].shape[2]
        states = state if state is not None else [None] * len(self.blocks)
        x, kv = self.embed(tokens), []
        with silenced(self._stream_hooks()):
            for block, past in zip(self.blocks, states, strict=True):
                x, keys_values = block(x, ContextRead(past, offset))
                kv.append(keys_values)
        return kv

    # --- steps 2-3: the energy -----------------------------------------------------------------------
    def energy_of(self, z: torch.Tensor, kv: list[tuple]) -> torch.Tensor:
        """E [B, T] of the predictions ``softmax(z)`` [B, T, V] given the context keys/values ``kv``."""
        offset = kv[0][0].shape[2] - z.shape[1]
        y = torch.softmax(z, dim=-1)
        x = self.hook_embed(y @ self.embed.weight + self.pred_vector)
        for block, (keys, values) in zip(self.blocks, kv, strict=True):
            x, _ = block(x, PredictRead(keys, values, offset))
        scores = self.unembed(self.hook_final(self.ln_final(x)))
        energy = -(y * scores).sum(-1)
        if self.cfg.entropy_weight:
            energy = energy + self.cfg.entropy_weight * (y * torch.log_softmax(z, dim=-1)).sum(-1)  # - tau H(y^)
        return energy

    def random_start(self, batch: int, length: int, offset: int, like: torch.Tensor) -> torch.Tensor:
        """z_0 for eval: per absolute position from its own seeded generator, the same for every row."""
        end = offset + length
        if self._starts.shape[0] < end:
            new = [torch.randn(self.cfg.d_vocab, generator=torch.Generator().manual_seed(START_SEED + t),
                               dtype=torch.float64) for t in range(self._starts.shape[0], end)]
            self._starts = torch.cat([self._starts.double(), torch.stack(new)])
        z = self._starts[offset:end].to(like.device, like.dtype) * self.cfg.init_scale
        return z.expand(batch, length, -1).clone()

    # --- step 4: the descent ---------------------------------------------------------------------------
    def _descend(self, z: torch.Tensor, kv: list[tuple], steps: int, alpha, noise: float,
                 generator: torch.Generator | None, create_graph: bool, keep_best: bool):
        """Run ``steps`` gradient steps from ``z``; return (last z, (zs, energies, grads)). Without
        ``create_graph`` (eval) every step starts from a detached z, except that the last step keeps its
        graph when the caller has gradients on, so the logits can be differentiated with respect to the
        final step's hooked activations (attribution patching)."""
        hooks, outer_grad = self.energy, torch.is_grad_enabled()
        zs, energies, grads = [], [], []
        with torch.enable_grad():
            for k in range(steps):
                last = k == steps - 1
                if not create_graph or not z.requires_grad:
                    z = z.detach().requires_grad_(True)
                hooks.hook_yhat(torch.softmax(z, -1))
                if last:  # the final step: the shared hooks fire here only
                    e = self.energy_of(z, kv)
                else:
                    with silenced(self._stream_hooks()):
                        e = self.energy_of(z, kv)
                e = hooks.hook_energy(e)
                second = create_graph or (last and outer_grad)
                (grad,) = torch.autograd.grad(e.sum(), z, create_graph=second, retain_graph=second or last)
                grad = hooks.hook_grad(grad)
                zs.append(z), energies.append(e), grads.append(grad)
                z = z - alpha * grad
                if noise:
                    z = z + noise * torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
        if not keep_best:
            return z, (zs, energies, grads)
        with torch.no_grad(), silenced(self._stream_hooks()):
            hooks.hook_yhat(torch.softmax(z, -1))
            energies.append(hooks.hook_energy(self.energy_of(z, kv)))
        zs.append(z if outer_grad else z.detach())
        return z, (zs, energies, grads)

    def think(self, tokens: torch.Tensor, steps: int | None = None, noise: float = 0.0, seed: int = 0,
              state: list | None = None) -> Thought:
        """Eval-mode descent with ``steps`` (default ``inference_steps``) steps from the seeded start;
        ``noise`` adds N(0, noise^2) after each step (seeded by ``seed``)."""
        return self._think(self.read_context(tokens, state), tokens.shape, steps, noise, seed)

    def _think(self, kv: list[tuple], shape, steps: int | None, noise: float, seed: int) -> Thought:
        steps = self.cfg.inference_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"think needs an integer steps >= 1; got {steps!r}")
        offset = kv[0][0].shape[2] - shape[1]
        z0 = self.random_start(shape[0], shape[1], offset, kv[0][0])
        generator = torch.Generator().manual_seed(seed) if noise else None
        _, (zs, energies, grads) = self._descend(z0, kv, steps, self.log_alpha.exp().detach(), noise,
                                                 generator, create_graph=False, keep_best=True)
        energies = torch.stack([e.detach() for e in energies])
        best = energies.argmin(dim=0)
        # z_K keeps its graph (when gradients are on) so the kept logits do too; earlier z are detached
        zs = torch.stack([z if k == len(zs) - 1 else z.detach() for k, z in enumerate(zs)])
        z_best = zs.gather(0, best[None, ..., None].expand(1, *zs.shape[1:]))[0]
        return Thought(torch.log_softmax(z_best, -1), energies, torch.softmax(zs.detach(), -1),
                       torch.stack([g.detach() for g in grads]), best)

    # --- step 5: training ---------------------------------------------------------------------------
    def _train_logits(self, tokens: torch.Tensor, kv: list[tuple]) -> torch.Tensor:
        cfg = self.cfg
        generator = torch.Generator().manual_seed(int(tokens.sum()) * 7919 + tokens.numel())
        steps = int(torch.randint(cfg.train_steps_min, cfg.train_steps_max + 1, (1,), generator=generator))
        jitter = 1 + cfg.step_jitter * (2 * float(torch.rand(1, generator=generator)) - 1)
        shape = (*tokens.shape, cfg.d_vocab)
        z0 = (cfg.init_scale * torch.randn(shape, generator=generator)).to(kv[0][0])
        if cfg.replay and self._replay is not None and self._replay.shape == z0.shape:
            rows = torch.rand(shape[0], generator=generator).to(z0.device) < cfg.replay
            z0 = torch.where(rows[:, None, None], self._replay, z0)
        z, _ = self._descend(z0, kv, steps, self.log_alpha.exp() * jitter, cfg.noise, generator,
                             create_graph=True, keep_best=False)
        if cfg.replay:
            self._replay = z.detach()
        return torch.log_softmax(z, -1)

    def forward(self, tokens: torch.Tensor, state: list | None = None, return_state: bool = False):
        kv = self.read_context(tokens, state)
        logits = (self._train_logits(tokens, kv) if self.training
                  else self._think(kv, tokens.shape, None, 0.0, 0).logits)
        return (logits, kv) if return_state else logits


def build(config: dict) -> EnergyTransformer:
    return EnergyTransformer(ArchConfig(config))
