"""Pieces shared by the foreign formats (:mod:`.interop_saelens`, :mod:`.interop_circuit_tracer`).

Foreign formats store a JumpReLU threshold ``theta``; we store ``log(theta)``. ``exp`` then ``log``
does not always give back the same float, so a round trip through a foreign file would change our
``log_threshold`` in its last bit. To keep round trips exact:

1. On save, the file's tensor is ``exp(log_threshold)`` (exactly the threshold our forward pass uses)
   and the safetensors header metadata gets ``workbench.log_threshold``: the float32 bytes of
   ``log_threshold``, base64.
2. On load, that entry is used when present, of the right size and ``exp`` of it equals the file's
   threshold bit for bit (a file whose thresholds were changed elsewhere falls back to step 3).
3. Otherwise ``log(max(theta, 0))``, nudged by a few ulps where that makes ``exp`` of it give back
   ``theta`` exactly (not every float is the ``exp`` of a float: elsewhere our threshold differs from
   the file's in the last bit); a threshold at or below 0 becomes ``-inf``: ``exp`` gives 0, and
   ``z * (z > 0)`` matches a ReLU-then-threshold at 0.

Files are read with safetensors' own reader (never unpickled); every write is atomic.
"""

from __future__ import annotations

import base64
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from workbench.store.atomic import CorruptArtifactError

LOG_THRESHOLD_KEY = "workbench.log_threshold"


def encode_floats(t: torch.Tensor) -> str:
    return base64.b64encode(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()).decode("ascii")


def decode_floats(text: str, shape: tuple[int, ...]) -> torch.Tensor | None:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except ValueError:
        return None
    if len(raw) != 4 * int(torch.Size(shape).numel()):
        return None
    return torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(shape).clone()


def threshold_for_file(log_threshold: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Step 1: (the threshold tensor to write, the metadata value that makes the load exact)."""
    return log_threshold.detach().exp().contiguous(), encode_floats(log_threshold)


def log_threshold_from_file(threshold: torch.Tensor, exact: str | None) -> torch.Tensor:
    """Steps 2-3: our ``log_threshold`` for a file's threshold tensor."""
    threshold = threshold.to(torch.float32)
    if exact is not None:
        decoded = decode_floats(exact, tuple(threshold.shape))
        if decoded is not None and torch.equal(decoded.exp(), threshold):
            return decoded
    return _exact_log(threshold.clamp_min(0))


def _exact_log(theta: torch.Tensor, max_ulps: int = 4) -> torch.Tensor:
    """``log(theta)``, moved by up to ``max_ulps`` float32 steps where that makes ``exp`` exact."""
    best = theta.log()
    for direction in (torch.inf, -torch.inf):
        candidate = best
        for _ in range(max_ulps):
            candidate = torch.nextafter(candidate, torch.full_like(candidate, direction))
            fixes = (best.exp() != theta) & (candidate.exp() == theta)
            best = torch.where(fixes, candidate, best)
    return best


def read_safetensors(path: str | Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a safetensors file; a missing or damaged file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no weights file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CorruptArtifactError(f"{what}: {path} is not a readable safetensors file ({err})") from err


def require(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    """Tensor ``name`` as float32, checked against ``shape``; errors name the file, tensor and shapes."""
    if name not in tensors:
        raise ValueError(f"{path} has no tensor {name!r}; it holds: {', '.join(sorted(tensors))}")
    t = tensors[name]
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{path} tensor {name!r} has shape {tuple(t.shape)}; expected {tuple(shape)}")
    return t.to(torch.float32)


__all__ = ["LOG_THRESHOLD_KEY", "log_threshold_from_file", "read_safetensors", "require", "threshold_for_file"]
