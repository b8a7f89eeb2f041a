"""Resampling dead features (after Anthropic's "Towards Monosemanticity", simplified to one batch).

For each layer ``l`` with dead features, on the current (normalised) batch:

1. Score each row by its squared reconstruction error at the layers a layer-``l`` feature writes to
   (``l`` itself for a per-layer dictionary; ``l .. n_layers-1`` for a CLT) and draw one row per dead
   feature with probability proportional to the score squared (generator seeded by the caller).
2. The feature's decoder becomes that row's residual ``y - y_hat`` over those layers, normalised to
   norm 1 (``"unit"``) or to the mean decoder norm of the layer's live features (``"penalty"``).
3. Its encoder column becomes the row's input ``x_l``, normalised to 0.2 times the mean encoder norm of
   the layer's live features; its encoder bias becomes 0.
4. Adam's moments of those slices are zeroed, and the feature's dead counter is reset.
"""

from __future__ import annotations

import torch

from workbench.dictionaries.losses import DeadFeatureTracker

ENCODER_NORM_FACTOR = 0.2


def _zero_adam_slice(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter, index) -> None:
    state = optimizer.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][index] = 0


def _mean_live(norms: torch.Tensor, dead: torch.Tensor) -> float:
    live = norms[~dead]
    return float(live.mean()) if live.numel() else 1.0


@torch.no_grad()
def resample_dead_features(dictionary, optimizer: torch.optim.Optimizer, tracker: DeadFeatureTracker,
                           x_n: torch.Tensor, y_n: torch.Tensor, recon_n: torch.Tensor,
                           generator: torch.Generator) -> int:
    """Re-initialise every dead feature (module docstring); returns how many were resampled."""
    dead_all = tracker.dead()
    n_layers, resampled = dictionary.config.n_layers, 0
    unit = dictionary.config.decoder_norm == "unit"
    for layer in range(n_layers):
        dead = dead_all[layer]
        indices = dead.nonzero().flatten()
        if indices.numel() == 0:
            continue
        residual = (y_n - recon_n)[:, layer:].flatten(1)  # what a layer-l feature could write
        score = residual.pow(2).sum(dim=1).pow(2) + 1e-12
        # the seeded generator lives on the CPU, whatever device trains
        rows = torch.multinomial(score.cpu(), indices.numel(), replacement=True, generator=generator)
        rows = rows.to(score.device)
        decoder = dictionary.W_dec[layer]
        dec_norm = 1.0 if unit else _mean_live(decoder.flatten(1).norm(dim=1), dead)
        directions = residual[rows] / residual[rows].norm(dim=1, keepdim=True).clamp_min(1e-12)
        decoder[indices] = (directions * dec_norm).reshape(indices.numel(), *decoder.shape[1:])
        enc_norm = ENCODER_NORM_FACTOR * _mean_live(dictionary.W_enc[layer].norm(dim=0), dead)
        inputs = x_n[rows, layer]
        dictionary.W_enc[layer][:, indices] = (inputs / inputs.norm(dim=1, keepdim=True).clamp_min(1e-12) * enc_norm).T
        dictionary.b_enc[layer, indices] = 0
        _zero_adam_slice(optimizer, decoder, indices)
        _zero_adam_slice(optimizer, dictionary.W_enc, (layer, slice(None), indices))
        _zero_adam_slice(optimizer, dictionary.b_enc, (layer, indices))
        tracker.tokens_since_fired[layer, indices] = 0
        resampled += indices.numel()
    return resampled
