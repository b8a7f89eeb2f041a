"""The sparse (index, value) form of a dictionary's features, through the kernel dispatcher.

A TopK dictionary has at most ``k`` active features per row and layer, so its encode and decode need
not touch all ``F`` features: :func:`workbench.kernels.dispatch.sparse_encode` fuses ``x @ W_enc + b``
with the TopK selection and returns ``(indices, values)``, and
:func:`~workbench.kernels.dispatch.sparse_decode` sums the active features' decoder rows; both
backward passes touch only the active rows. The dispatcher picks the path (CPU: the fastest torch
path; GPU: Triton; ``WORKBENCH_KERNELS=reference``: the dense definition), all equal up to rounding.

Where the form applies (:func:`uses_sparse_form`):

1. TopK dictionaries (with or without the ReLU), in training and inference: encode and decode here.
2. Not JumpReLU: training needs its threshold's straight-through gradient, which needs the dense
   pre-activations near the threshold, and a row's number of active features is not known before
   they are computed (the sparse form needs a capacity). Not BatchTopK: its selection spans the batch.
   Both keep the dense path of :mod:`.models`.
3. Not float64 dictionaries: the kernels compute in float32, and a float64 dictionary is one whose
   user asked for more.

A cross-layer transcoder encodes each layer separately, and feature ``i`` of layer ``l`` decodes to
layers ``l..L-1`` at once: its rows ``W_dec[l][i]`` are flattened to one row of ``(L - l) d_out``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.dictionaries.nonlinearities import TopK
from workbench.kernels import dispatch


def uses_sparse_form(dictionary) -> bool:
    """Whether ``dictionary`` encodes and decodes in the sparse form (module docstring)."""
    return isinstance(dictionary.activation, TopK) and dictionary.W_enc.dtype != torch.float64


def encode_sparse(dictionary, x_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised inputs ``[batch, layers, d_in]`` -> ``(indices, values)``, each ``[batch, layers, k]``."""
    top = dictionary.activation
    parts = [dispatch.sparse_encode(x_n[:, layer], dictionary.W_enc[layer], dictionary.b_enc[layer], top.k,
                                    relu=top.relu) for layer in range(x_n.shape[1])]
    return torch.stack([i for i, _ in parts], dim=1), torch.stack([v for _, v in parts], dim=1)


def decode_sparse(dictionary, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The features' contribution ``[batch, layers, d_out]`` (no bias, no skip) from the sparse form:
    what ``Dictionary.decode_features`` computes from the dense activations."""
    n_layers, d_out = dictionary.config.n_layers, dictionary.config.d_out
    out = values.new_zeros(values.shape[0], n_layers, d_out)
    for source in range(n_layers):
        rows = dictionary.W_dec[source].flatten(1)  # [F, (L - source) d_out]: every layer it writes to
        writes = dispatch.sparse_decode(indices[:, source], values[:, source], rows)
        out = out + F.pad(writes.unflatten(-1, (n_layers - source, d_out)), (0, 0, source, 0))
    return out


def densify(indices: torch.Tensor, values: torch.Tensor, n_features: int) -> torch.Tensor:
    """The dense activations ``[..., n_features]`` of a sparse form (unused slots hold 0)."""
    return values.new_zeros(*values.shape[:-1], n_features).scatter_add(-1, indices, values)
