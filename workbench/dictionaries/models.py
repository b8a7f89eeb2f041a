"""Dictionaries: SAEs, transcoders, skip transcoders and cross-layer transcoders, one implementation.

Every dictionary is a stack of ``n_layers`` encoders and a causal set of decoders; the kinds differ
only in shape and wiring:

    sae              x -> x              n_layers = 1, d_out = d_in
    transcoder       mlp_in -> mlp_out   n_layers = 1
    skip_transcoder  mlp_in -> mlp_out   n_layers = 1, plus a linear skip ``x @ W_skip``
    clt              every layer's mlp_in -> every later layer's mlp_out

Computation, for inputs ``x[l]`` (layer ``l``'s input, ``[batch, d_in]``):

1. Normalise: ``x_n[l] = x[l] * input_scale[l]`` (the trainer sets the scales so that the mean squared
   norm is ``d_in``; a fresh dictionary has scales 1).
2. Encode: ``pre[l] = x_n[l] @ W_enc[l] + b_enc[l]``; ``acts[l] = nonlinearity(pre[l])``.
3. Decode: ``y_n[t] = b_dec[t] + sum over l <= t of acts[l] @ W_dec[l][:, t - l]`` (a per-layer
   dictionary has only ``t = l = 0``), plus ``x_n[t] @ W_skip[t]`` for a skip transcoder.
4. Un-normalise: ``y[t] = y_n[t] / output_scale[t]``.

A TopK dictionary (not float64) runs steps 2-3 in the sparse (index, value) form through the kernel
dispatcher (:mod:`.sparse_form`); the dense activations it returns are scattered from that form.

``W_dec[l]`` is ``[features, n_layers - l, d_out]``: feature ``i`` of layer ``l`` writes to layers
``l .. n_layers - 1``. Its decoder norm is the norm of that whole slice (Anthropic's CLT convention).
Decoder norms are handled one of two ways (``decoder_norm``): ``"unit"`` keeps every feature's decoder
at norm 1 (the trainer projects the gradient and renormalises after each step) or ``"penalty"`` leaves
them free and weights the sparsity penalty by them.

Initialisation: decoder rows are random directions of norm ``init_norm`` (1 under ``"unit"``); an SAE's
encoder is the decoder's transpose (tied start), other encoders random directions, columns of norm
``init_norm``; biases and ``W_skip`` start at zero; JumpReLU thresholds at ``jumprelu_init_threshold``.

On disk a dictionary is a folder ``dictionary.safetensors`` + ``config.json`` (+ ``card.json``) +
``checksums.json`` (written last), published atomically, and loaded strictly: ``config.json`` must hold
the required fields (``kind``, ``d_in``, ``n_features``; ``n_layers`` for a CLT), and a missing optional
field takes its default with a warning; the weights must fit the config, match their checksum
(:mod:`workbench.store.integrity`) and be finite.
"""

from __future__ import annotations

import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from workbench.dictionaries.nonlinearities import NONLINEARITIES, BatchTopK, make_nonlinearity
from workbench.dictionaries.sparse_form import decode_sparse, densify, encode_sparse, uses_sparse_form
from workbench.store.atomic import (
    atomic_write_json,
    load_safetensors,
    publish_dir,
    read_json,
    save_safetensors,
    staging_dir,
)
from workbench.store.catalog import Catalog
from workbench.store.integrity import (
    IntegrityWarning,
    check_checksums,
    check_finite,
    non_finite_constants,
    write_checksums,
)
from workbench.training.strict_config import StrictConfig

DICTIONARY_KINDS = ("sae", "transcoder", "skip_transcoder", "clt")
DECODER_NORMS = ("unit", "penalty")
WEIGHTS_FILE, CONFIG_FILE, CARD_FILE = "dictionary.safetensors", "config.json", "card.json"


def _choice(value, choices, what: str):
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(map(str, choices))}")
    return value


@dataclass
class DictionaryConfig(StrictConfig):
    label = "dictionary config"
    kind: str
    d_in: int
    n_features: int  # per layer
    d_out: int | None = None  # None: d_in (required for an SAE)
    n_layers: int = 1  # > 1 only for a cross-layer transcoder
    activation: str = "jumprelu"
    k: int | None = None  # active features per row for topk / batchtopk
    topk_relu: bool = True
    jumprelu_init_threshold: float = 1e-3
    jumprelu_bandwidth: float = 1e-3
    decoder_norm: str | None = None  # None: "unit" for topk / batchtopk, else "penalty"
    init_norm: float = 0.1
    input_hooks: list[str] = field(default_factory=list)
    output_hooks: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self):
        _choice(self.kind, DICTIONARY_KINDS, "dictionary kind")
        _choice(self.activation, NONLINEARITIES, "activation")
        if self.d_out is None:
            self.d_out = self.d_in
        if self.decoder_norm is None:
            self.decoder_norm = "unit" if self.activation in ("topk", "batchtopk") else "penalty"
        _choice(self.decoder_norm, DECODER_NORMS, "decoder_norm")
        if self.kind == "sae" and self.d_out != self.d_in:
            raise ValueError(f"an SAE reconstructs its input: d_out ({self.d_out}) must equal d_in ({self.d_in})")
        if self.kind != "clt" and self.n_layers != 1:
            raise ValueError(f"a {self.kind} reads one layer; n_layers must be 1 (got {self.n_layers}); use kind 'clt'")
        for name in ("input_hooks", "output_hooks"):
            hooks = getattr(self, name)
            if hooks and len(hooks) != self.n_layers:
                raise ValueError(f"{name} lists {len(hooks)} hooks for a dictionary of {self.n_layers} layer(s)")
        if min(self.d_in, self.d_out, self.n_features, self.n_layers) < 1:
            raise ValueError(f"dictionary sizes must be positive: d_in={self.d_in}, d_out={self.d_out}, "
                             f"n_features={self.n_features}, n_layers={self.n_layers}")

    def to_dict(self) -> dict:
        return asdict(self)


def _random_directions(shape: tuple[int, ...], norm: float, dim: tuple[int, ...]) -> torch.Tensor:
    w = torch.randn(shape)
    return w * (norm / w.norm(dim=dim, keepdim=True))


class Dictionary(nn.Module):
    """The shared implementation (module docstring); use the kind classes or :func:`build_dictionary`."""

    kind: str = ""

    def __init__(self, config: DictionaryConfig):
        super().__init__()
        if self.kind and config.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs a config of kind {self.kind!r}, got {config.kind!r}")
        self.config = config
        c = config
        L, F_, d_in, d_out = c.n_layers, c.n_features, c.d_in, c.d_out
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            dec_norm = 1.0 if c.decoder_norm == "unit" else c.init_norm
            decoders = [_random_directions((F_, L - l, d_out), dec_norm, dim=(1, 2)) for l in range(L)]
            if c.kind == "sae":  # tied start: W_enc = W_dec^T, rescaled to init_norm
                encoder = (decoders[0][:, 0, :].T * (c.init_norm / dec_norm))[None].clone()
            else:
                encoder = _random_directions((L, d_in, F_), c.init_norm, dim=(1,))
        self.W_enc = nn.Parameter(encoder)
        self.b_enc = nn.Parameter(torch.zeros(L, F_))
        self.W_dec = nn.ParameterList([nn.Parameter(w) for w in decoders])
        self.b_dec = nn.Parameter(torch.zeros(L, d_out))
        self.W_skip = nn.Parameter(torch.zeros(L, d_in, d_out)) if c.kind == "skip_transcoder" else None
        self.register_buffer("input_scale", torch.ones(L))
        self.register_buffer("output_scale", torch.ones(L))
        self.activation = make_nonlinearity(c.activation, L, F_, c.k, c.jumprelu_init_threshold,
                                            c.jumprelu_bandwidth, c.topk_relu)

    # --- shapes -----------------------------------------------------------------------------------
    def _as_layers(self, x: torch.Tensor, width: int, what: str) -> torch.Tensor:
        """``[batch, layers, width]`` from the caller's ``[batch, width]`` (one layer) or 3-d input."""
        if x.dim() == 2 and self.config.n_layers == 1:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.shape[1:] != (self.config.n_layers, width):
            expected = f"[batch, {width}]" if self.config.n_layers == 1 else f"[batch, {self.config.n_layers}, {width}]"
            raise ValueError(f"{self.kind or 'dictionary'} {what} has shape {tuple(x.shape)}; expected {expected}")
        return x

    def _as_caller(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return y.squeeze(1) if like.dim() == 2 else y

    # --- normalised-space pieces (the trainer works here) ------------------------------------------
    def pre_activations(self, x_n: torch.Tensor) -> torch.Tensor:
        """``[batch, layers, d_in]`` normalised inputs -> ``[batch, layers, features]`` pre-activations."""
        return torch.einsum("bld,ldf->blf", x_n, self.W_enc) + self.b_enc

    def decode_features(self, acts: torch.Tensor) -> torch.Tensor:
        """The features' contribution ``[batch, layers, d_out]``: no bias, no skip (step 3)."""
        L = self.config.n_layers
        out = acts.new_zeros(acts.shape[0], L, self.config.d_out)
        for source in range(L):
            writes = torch.einsum("bf,ftd->btd", acts[:, source], self.W_dec[source])  # to layers source..L-1
            out = out + F.pad(writes, (0, 0, source, 0))
        return out

    def reconstruct_normalized(self, acts: torch.Tensor | None, x_n: torch.Tensor | None,
                               features: torch.Tensor | None = None) -> torch.Tensor:
        """Step 3 (``features``: the features' contribution when already decoded, else from ``acts``)."""
        y_n = (self.decode_features(acts) if features is None else features) + self.b_dec
        if self.W_skip is not None:
            if x_n is None:
                raise ValueError("a skip transcoder's decode needs the input x for its skip term")
            y_n = y_n + torch.einsum("bld,lde->ble", x_n, self.W_skip)
        return y_n

    def forward_normalized(self, x_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, activations, pre-activations), all in normalised units and 3-d; a TopK
        dictionary encodes and decodes through the kernel dispatcher (:mod:`.sparse_form`)."""
        pre = self.pre_activations(x_n)  # the losses read it (pre-activation loss, AuxK)
        if not uses_sparse_form(self):
            acts = self.activation(pre)
            return self.reconstruct_normalized(acts, x_n), acts, pre
        indices, values = encode_sparse(self, x_n)
        features = decode_sparse(self, indices, values)
        return self.reconstruct_normalized(None, x_n, features), densify(indices, values, self.config.n_features), pre

    # --- the public, unnormalised API ---------------------------------------------------------------
    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.input_scale[:, None]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[batch, features]`` (``[batch, layers, features]`` for a CLT)."""
        x_n = self.normalize_input(self._as_layers(x, self.config.d_in, "input"))
        if uses_sparse_form(self):
            return self._as_caller(densify(*encode_sparse(self, x_n), self.config.n_features), x)
        return self._as_caller(self.activation(self.pre_activations(x_n)), x)

    def decode(self, acts: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction from activations; ``x`` is needed only for a skip transcoder's skip term."""
        a3 = self._as_layers(acts, self.config.n_features, "activations")
        x_n = None if x is None else self.normalize_input(self._as_layers(x, self.config.d_in, "input"))
        return self._as_caller(self.reconstruct_normalized(a3, x_n) / self.output_scale[:, None], acts)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, feature activations) in the model's units: :meth:`encode` (the sparse form for
        TopK), then the dense :meth:`decode`, which keeps the output bit for bit SAELens's (interop)."""
        acts = self.encode(x)
        return self.decode(acts, x), acts

    # --- decoder norms ------------------------------------------------------------------------------
    def decoder_norms(self) -> torch.Tensor:
        """``[layers, features]``: each feature's decoder norm over every layer it writes to."""
        return torch.stack([w.flatten(1).norm(dim=1) for w in self.W_dec])

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every feature's decoder to norm 1 (the ``"unit"`` constraint's projection)."""
        for w in self.W_dec:
            w.div_(w.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None])

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Drop the gradient component along each (unit) decoder row, so Adam's step stays tangent."""
        for w in self.W_dec:
            if w.grad is None:
                continue
            unit = w / w.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
            parallel = (w.grad * unit).sum(dim=(1, 2), keepdim=True)
            w.grad.sub_(parallel * unit)

    # --- folding the scales (for formats without them) -----------------------------------------------
    @torch.no_grad()
    def with_scales_folded(self) -> Dictionary:
        """A copy with ``input_scale`` / ``output_scale`` folded into the weights and set to 1: the same
        function up to float rounding (exactly the same when the scales are already 1). Encoders take
        ``s_in``, decoders and ``b_dec`` are divided by the ``s_out`` of the layer they write, ``W_skip``
        takes ``s_in / s_out``; biases of the encoder and thresholds are unchanged."""
        folded = build_dictionary(DictionaryConfig.from_dict(self.config.to_dict()))
        folded.load_state_dict(self.state_dict())
        s_in, s_out = self.input_scale, self.output_scale
        if bool((s_in == 1).all() and (s_out == 1).all()):
            return folded.eval()
        folded.W_enc.mul_(s_in[:, None, None])
        for source, w in enumerate(folded.W_dec):
            w.div_(s_out[source:][None, :, None])
        folded.b_dec.div_(s_out[:, None])
        if folded.W_skip is not None:
            folded.W_skip.mul_((s_in / s_out)[:, None, None])
        folded.input_scale.fill_(1.0)
        folded.output_scale.fill_(1.0)
        return folded.eval()

    # --- BatchTopK -> JumpReLU ----------------------------------------------------------------------
    @torch.no_grad()
    def batchtopk_to_jumprelu(self, calibration_inputs, method: str = "global") -> Dictionary:
        """A copy whose BatchTopK is replaced by a JumpReLU calibrated on ``calibration_inputs`` (an
        iterable of input batches in model units); see :mod:`.nonlinearities` for the estimator."""
        if not isinstance(self.activation, BatchTopK):
            raise TypeError(f"only a batchtopk dictionary converts to jumprelu; this one uses {self.config.activation!r}")
        pres = [self.pre_activations(self.normalize_input(self._as_layers(x, self.config.d_in, "input")))
                for x in calibration_inputs]
        jump = self.activation.to_jumprelu(pres, method, self.config.jumprelu_bandwidth)
        converted = build_dictionary(DictionaryConfig.from_dict({**self.config.to_dict(), "activation": "jumprelu"}))
        state = {k: v for k, v in self.state_dict().items()}
        state["activation.log_threshold"] = jump.log_threshold.detach().clone()
        converted.load_state_dict(state)
        return converted


class SAE(Dictionary):
    kind = "sae"


class Transcoder(Dictionary):
    kind = "transcoder"


class SkipTranscoder(Dictionary):
    kind = "skip_transcoder"


class CrossLayerTranscoder(Dictionary):
    kind = "clt"


DICTIONARY_CLASSES: dict[str, type[Dictionary]] = {
    "sae": SAE, "transcoder": Transcoder, "skip_transcoder": SkipTranscoder, "clt": CrossLayerTranscoder}


def build_dictionary(config: DictionaryConfig | dict) -> Dictionary:
    if isinstance(config, dict):
        config = DictionaryConfig.from_dict(config)
    return DICTIONARY_CLASSES[config.kind](config)


def save_dictionary(folder: str | Path, dictionary: Dictionary, card: dict | None = None) -> Path:
    """Write ``dictionary.safetensors`` + ``config.json`` (+ ``card.json``) and publish the folder atomically."""
    folder = Path(folder)
    stage = staging_dir(folder)
    weights = {k: v.detach().clone() for k, v in dictionary.state_dict().items()}
    save_safetensors(weights, stage / WEIGHTS_FILE, {"kind": dictionary.config.kind})
    atomic_write_json(stage / CONFIG_FILE, dictionary.config.to_dict())
    if card is not None:
        atomic_write_json(stage / CARD_FILE, card)
    write_checksums(stage)
    return publish_dir(stage, folder)


def read_dictionary_config(path: str | Path) -> DictionaryConfig:
    """A dictionary's ``config.json``: a required field missing is an error naming it and the file; a
    missing optional field takes its default, with a warning (the file predates the field, or was
    written by hand)."""
    path = Path(path)
    values = read_json(path)
    if not isinstance(values, dict):  # ValueError: the CLI shows it as one line
        raise ValueError(  # noqa: TRY004
            f"{path} should hold a JSON object of dictionary config fields, not {type(values).__name__}")
    required = [f.name for f in fields(DictionaryConfig) if f.default is MISSING and f.default_factory is MISSING]
    if values.get("kind") == "clt":
        required.append("n_layers")  # a CLT's default of 1 layer would misread its weights
    missing = [name for name in required if name not in values]
    if missing:
        raise ValueError(f"{path} lacks the required dictionary config field(s) {missing}; "
                         f"required: {', '.join(required)}")
    defaulted = [name for name in DictionaryConfig.__dataclass_fields__ if name not in values]
    if defaulted:
        warnings.warn(f"{path} lacks the optional field(s) {defaulted}; using their defaults",
                      IntegrityWarning, stacklevel=3)
    try:
        return DictionaryConfig.from_dict(values)
    except TypeError as err:  # a value of the wrong type (a string for d_in): name the file
        raise ValueError(f"{path} holds an unusable dictionary config ({err})") from err


def load_dictionary(folder: str | Path) -> Dictionary:
    """Rebuild from ``config.json`` and load the weights strictly: a missing, unexpected or mis-shaped
    tensor is an error that names it; then the checksums and finiteness (module docstring)."""
    folder = Path(folder)
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / required).is_file():
            raise FileNotFoundError(f"dictionary folder {folder} lacks {required}")
    dictionary = build_dictionary(read_dictionary_config(folder / CONFIG_FILE))
    weights = load_safetensors(folder / WEIGHTS_FILE)
    fresh = non_finite_constants(dictionary)
    expected = dictionary.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong_shape = [f"{k} {tuple(weights[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                   if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        raise ValueError(f"weights in {folder / WEIGHTS_FILE} do not fit the dictionary built from its config: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong_shape[:5]}")
    check_checksums(folder)
    check_finite(weights, folder / WEIGHTS_FILE, fresh)
    dictionary.load_state_dict(weights)
    return dictionary.eval()


def load_dictionary_card(folder: str | Path) -> dict:
    path = Path(folder) / CARD_FILE
    return read_json(path) if path.is_file() else {}


def register_dictionary(folder: str | Path, name: str, root: str | Path | None = None) -> None:
    """List a saved dictionary in the artifacts catalog (kind ``dictionary``) with its config and metrics."""
    folder = Path(folder)
    config = read_json(folder / CONFIG_FILE)
    card = load_dictionary_card(folder)
    Catalog(root).register("dictionary", name, folder, {"config": config, "metrics": card.get("metrics", {}),
                                                        "source": card.get("source", {})})


__all__ = [
    "DECODER_NORMS",
    "DICTIONARY_KINDS",
    "SAE",
    "CrossLayerTranscoder",
    "Dictionary",
    "DictionaryConfig",
    "SkipTranscoder",
    "Transcoder",
    "build_dictionary",
    "load_dictionary",
    "load_dictionary_card",
    "read_dictionary_config",
    "save_dictionary",
]
