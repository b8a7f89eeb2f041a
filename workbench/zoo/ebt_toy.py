"""A 3-token Energy-Based Transformer whose energy landscape over y^ is 2-D, with its descent paths.

With a vocabulary of 3 tokens a prediction y^ lies on the 2-simplex {y >= 0, y0 + y1 + y2 = 1}, so the
energy E(context, y^) at one position is a function on a triangle, and the model's "thinking" is a path
on it. Everything here is plain computation (the app's Energy page draws it):

1. Data (:func:`toy_batch`): sequences over {0, 1, 2}; the next token is (current + 1) mod 3 with
   probability ``follow``, otherwise uniform. The best prediction after token a puts
   ``follow + (1 - follow) / 3`` on a + 1.
2. Model (:func:`train_toy`): a tiny EBT (1 layer, d_model 16) trained by the architecture's own
   training mode (unrolled second-order descent) with Adam, seeded: the same bytes every time.
3. Landscape (:func:`landscape`): E at every point of a triangular grid of the simplex (interior
   points, ``resolution`` per side) for one context and position, in one batched pass.
4. Paths (:func:`descent_paths`): the descent from the model's seeded start (what ``think`` does) and
   from the corners' neighbourhoods, each step's y^ and energy.
5. :func:`simplex_xy`: barycentric y^ -> plane coordinates (token 0 at (0, 0), token 1 at (1, 0),
   token 2 at (1/2, sqrt(3)/2)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from workbench.architectures import build_model, model_config
from workbench.architectures.ebt import EnergyTransformer
from workbench.tasks.base import Batch, masked_token_loss

VOCAB = 3
TOY_CONFIG = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_mlp": 32, "inference_steps": 8, "entropy_weight": 1.0,
              "train_steps_min": 1, "train_steps_max": 4}


def toy_batch(rows: int, length: int, seed: int, follow: float = 0.8) -> Batch:
    """Step 1: ``rows`` sequences of ``length`` tokens (every next token is a target)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.empty(rows, length, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, VOCAB, (rows,), generator=g)
    for t in range(1, length):
        follows = torch.rand(rows, generator=g) < follow
        tokens[:, t] = torch.where(follows, (tokens[:, t - 1] + 1) % VOCAB, torch.randint(0, VOCAB, (rows,), generator=g))
    ones = torch.ones_like(tokens, dtype=torch.bool)
    return Batch(tokens=tokens, loss_mask=ones, answer_mask=torch.zeros_like(ones))


def train_toy(steps: int = 150, seed: int = 0, length: int = 8, lr: float = 1e-2) -> EnergyTransformer:
    """Step 2: the toy model after ``steps`` Adam steps (eval mode on return)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_config("ebt", VOCAB, 32, seed=seed, **TOY_CONFIG))
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        for step in range(steps):
            batch = toy_batch(32, length, seed * 100003 + step)
            loss = masked_token_loss(model(batch.tokens), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def simplex_grid(resolution: int) -> torch.Tensor:
    """Interior points ``[N, 3]`` of the simplex on a triangular grid with ``resolution`` steps a side."""
    points = [(i, j, resolution - i - j) for i in range(1, resolution) for j in range(1, resolution - i)]
    return torch.tensor(points, dtype=torch.float64) / resolution


def simplex_xy(y: torch.Tensor) -> tuple[list[float], list[float]]:
    """Step 5: plane coordinates of barycentric points ``[..., 3]``."""
    y = y.reshape(-1, 3).double()
    return (y[:, 1] + y[:, 2] / 2).tolist(), (y[:, 2] * math.sqrt(3) / 2).tolist()


def _context_energy(model: EnergyTransformer, context: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """E at the context's last position for each row of ``y [N, 3]`` (the other positions are ignored:
    no position's energy depends on another's prediction)."""
    kv = model.read_context(context[None])
    n = y.shape[0]
    kv = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv]
    dtype = kv[0][0].dtype
    z = y.log().to(dtype)[:, None, :].expand(n, context.shape[0], VOCAB)
    return model.energy_of(z, kv)[:, -1]


@torch.no_grad()
def landscape(model: EnergyTransformer, context: list[int], resolution: int = 40) -> dict:
    """Step 3: ``{"y": [N, 3], "energy": [N]}`` over the simplex grid, at the context's last position."""
    y = simplex_grid(resolution)
    return {"y": y, "energy": _context_energy(model, torch.tensor(context), y).double()}


@dataclass
class Path:
    label: str
    y: torch.Tensor  # [K + 1, 3]
    energy: torch.Tensor  # [K + 1]


def descent_paths(model: EnergyTransformer, context: list[int], steps: int = 8, corner_starts: bool = True) -> list[Path]:
    """Step 4: the model's own descent (seeded start, as ``think``) and, with ``corner_starts``, the
    descent from a start near each corner (y^ = 0.8 on one token)."""
    tokens = torch.tensor(context)[None]
    thought = model.think(tokens, steps=steps)
    paths = [Path("seeded start", thought.yhat[:, 0, -1].double(), thought.energies[:, 0, -1].double())]
    if not corner_starts:
        return paths
    kv = model.read_context(tokens)
    for corner in range(VOCAB):
        y0 = torch.full((VOCAB,), 0.1, dtype=torch.float64)
        y0[corner] = 0.8
        z0 = y0.log().to(kv[0][0].dtype).expand(1, tokens.shape[1], VOCAB).clone()
        _, (zs, energies, _) = model._descend(z0, kv, steps, model.log_alpha.exp().detach(), 0.0, None,
                                              create_graph=False, keep_best=True)
        ys = torch.stack([torch.softmax(z.detach()[0, -1], -1) for z in zs]).double()
        paths.append(Path(f"start near token {corner}", ys, torch.stack([e.detach()[0, -1] for e in energies]).double()))
    return paths


__all__ = ["TOY_CONFIG", "VOCAB", "Path", "descent_paths", "landscape", "simplex_grid", "simplex_xy", "toy_batch",
           "train_toy"]
