"""Stage 7: decoding residual vectors into RASP values.

1. A categorical block decodes to the value of its largest coordinate when that is above 1/2, else None
   (an all-zero block is an empty aggregate's None).
2. A numerical dimension decodes to its number; ``snap`` moves a number to the nearest value of the SOp's
   inferred value set (the output of a compiled model is that exact value up to float rounding, ~1e-6 in
   float32, ~1e-14 in float64, far below the smallest gap between values).
3. ``variables_at(hook)`` says which SOps are already written at a hook, from the layer plan, so any
   hook's vector decodes into exactly the variables present there.
"""

from __future__ import annotations

import re

import torch

from workbench.rasp import rasp


def decode_block(residual, label: str, vectors: torch.Tensor) -> list:
    """Values of SOp ``label`` at each position of ``vectors`` [pos, d_model]."""
    block = vectors[..., residual.blocks[label]].detach().double()
    if residual.encodings[label] is rasp.Encoding.NUMERICAL:
        return [float(x) for x in block[..., 0]]
    return _argmax(block, residual.values[label])


def _argmax(block: torch.Tensor, values: list) -> list:
    if block.shape[-1] == 0:
        return [None] * block.shape[0]
    best, arg = block.max(dim=-1)
    return [values[int(i)] if float(b) > 0.5 else None for b, i in zip(best, arg)]


def snap(x: float, values: list) -> float:
    return min(values, key=lambda v: abs(float(v) - x)) if values else x


def decode_output(logits: torch.Tensor, residual, output: str) -> list:
    """The output SOp's values from the unembedding (logits [pos, d_vocab_out])."""
    if residual.encodings[output] is rasp.Encoding.NUMERICAL:
        return [float(x) for x in logits[..., 0].detach().double()]
    return _argmax(logits.detach().double(), residual.values[output])


_HOOK = re.compile(r"blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out|"
                   r"hook_mixer_out|hook_mixer_in|hook_mlp_in)$")
_BEFORE = {"hook_resid_pre": (0, None), "hook_mixer_in": (0, None), "hook_resid_mid": (1, None),
           "hook_mlp_in": (1, None), "hook_resid_post": (2, None), "hook_attn_out": (1, 0),
           "hook_mixer_out": (1, 0), "hook_mlp_out": (2, 1)}


def variables_at(hook: str, plan) -> list[str]:
    """SOps held by the vector at ``hook`` (a residual hook: all written so far; a sublayer's output:
    what that sublayer writes)."""
    if hook in ("hook_embed", "hook_pos_embed"):
        return [lab for lab, s in plan.sublayer.items() if s == -1]
    n_layers = plan.n_layers
    if hook == "hook_final":
        hook = f"blocks.{n_layers - 1}.hook_resid_post"
    match = _HOOK.match(hook)
    if not match or int(match.group(1)) >= n_layers:
        raise KeyError(f"cannot decode hook {hook!r}; choose hook_embed, hook_pos_embed, hook_final or "
                       f"blocks.L.<hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out> "
                       f"with L < {n_layers}")
    layer, (end, only) = int(match.group(1)), _BEFORE[match.group(2)]
    if only is not None:
        return [lab for lab, s in plan.sublayer.items() if s == 2 * layer + only]
    return [lab for lab, s in plan.sublayer.items() if s < 2 * layer + end]
