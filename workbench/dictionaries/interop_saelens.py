"""SAEs and per-layer transcoders in SAELens's on-disk format, both ways.

A SAELens folder (what ``sae_lens.SAE.load_from_disk`` reads) holds ``cfg.json`` and
``sae_weights.safetensors``. Saving (:func:`save_saelens`):

1. Map (kind, activation) to a SAELens architecture: an SAE with relu / topk / jumprelu is
   ``standard`` / ``topk`` / ``jumprelu``; a transcoder with relu / jumprelu is ``transcoder`` /
   ``jumprelu_transcoder``, and a skip transcoder ``skip_transcoder`` / ``jumprelu_skip_transcoder``.
   SAELens has no TopK or BatchTopK transcoder, no BatchTopK inference SAE and no cross-layer
   transcoder: those are refused, naming what to do instead.
2. Fold ``input_scale`` / ``output_scale`` into the weights (:meth:`Dictionary.with_scales_folded`;
   SAELens has no per-side scales). With scales of 1 the written tensors are ours bit for bit.
3. Write ``W_enc`` ``[d_in, d_sae]``, ``b_enc``, ``W_dec`` ``[d_sae, d_out]``, ``b_dec``, and
   ``threshold`` (``exp(log_threshold)``, see :mod:`.interop_common`) or ``W_skip`` ``[d_out, d_in]``.
4. Write ``cfg.json``: the architecture, sizes, ``apply_b_dec_to_input: false`` (we never subtract
   ``b_dec`` from the input), ``normalize_activations: "none"``, ``k`` and
   ``rescale_acts_by_decoder_norm: false`` for TopK, and ``metadata`` with the SAELens version,
   ``model_name``, ``hook_name`` / ``hook_name_out`` and our own config under ``workbench``.
5. Publish the folder atomically. SAELens's ``encode`` / ``decode`` / ``forward`` on it equal ours.

Loading (:func:`load_saelens`) reverses the steps for these architectures, from files written here or
by SAELens itself. Our config comes from ``metadata.workbench`` when present, else from the sizes and
hook names. What SAELens can express but we cannot is folded where exact enough and refused otherwise:
``apply_b_dec_to_input`` (folded into ``b_enc``), TopK's ``rescale_acts_by_decoder_norm`` (folded into
the encoder and decoder), ``normalize_activations`` other than ``none`` / ``expected_average_only_in``
and ``hook_z`` reshaping (refused). Folding changes floats in the last bits, so only files without
those options load bit for bit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from workbench.dictionaries.interop_common import (
    LOG_THRESHOLD_KEY,
    log_threshold_from_file,
    read_safetensors,
    require,
    threshold_for_file,
)
from workbench.dictionaries.models import Dictionary, DictionaryConfig, build_dictionary
from workbench.store.atomic import atomic_write_json, publish_dir, read_json, save_safetensors, staging_dir

CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
ARCHITECTURES = {  # (our kind, our activation) -> SAELens architecture
    ("sae", "relu"): "standard", ("sae", "topk"): "topk", ("sae", "jumprelu"): "jumprelu",
    ("transcoder", "relu"): "transcoder", ("transcoder", "jumprelu"): "jumprelu_transcoder",
    ("skip_transcoder", "relu"): "skip_transcoder", ("skip_transcoder", "jumprelu"): "jumprelu_skip_transcoder",
}
KINDS = {arch: pair for pair, arch in ARCHITECTURES.items()}
NORMALIZATIONS_READ = ("none", "expected_average_only_in")  # the second is a no-op at inference in SAELens


def _saelens_version() -> str:
    try:
        from sae_lens import __version__
    except ImportError:
        return "6.0.0"
    return str(__version__)


def saelens_architecture(config: DictionaryConfig) -> str:
    """Step 1: the SAELens architecture for a dictionary config, or an error saying what to do."""
    if config.kind == "clt":
        raise ValueError("SAELens has no cross-layer transcoders; save a CLT with save_circuit_tracer "
                         "(workbench.dictionaries.interop_circuit_tracer)")
    if config.activation == "batchtopk":
        raise ValueError(f"SAELens has no BatchTopK inference {config.kind}; convert it first with "
                         "dictionary.batchtopk_to_jumprelu(calibration_inputs)")
    if config.activation == "topk" and not config.topk_relu:
        raise ValueError("SAELens's TopK applies a ReLU to the kept values; this dictionary has topk_relu=False")
    arch = ARCHITECTURES.get((config.kind, config.activation))
    if arch is None:
        choices = ", ".join(f"{k} with {a}" for k, a in ARCHITECTURES)
        raise ValueError(f"SAELens has no {config.kind} with activation {config.activation!r}; it stores: {choices}")
    return arch


def _cfg(d: Dictionary, arch: str, model_name: str | None) -> dict:
    c = d.config
    cfg = {"architecture": arch, "d_in": c.d_in, "d_sae": c.n_features, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none"}
    if c.kind != "sae":
        cfg["d_out"] = c.d_out
    if arch == "topk":
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=False)
    version = _saelens_version()
    cfg["metadata"] = {"sae_lens_version": version, "sae_lens_training_version": version, "model_name": model_name,
                       "hook_name": c.input_hooks[0] if c.input_hooks else None,
                       "hook_name_out": c.output_hooks[0] if c.output_hooks else None,
                       "hook_head_index": None, "workbench": c.to_dict()}
    return cfg


def save_saelens(dictionary: Dictionary, folder: str | Path, model_name: str | None = None) -> Path:
    """Write ``dictionary`` as a SAELens folder (module docstring, steps 1-5); returns the folder."""
    arch = saelens_architecture(dictionary.config)
    d = dictionary.with_scales_folded()
    tensors = {"W_enc": d.W_enc[0], "b_enc": d.b_enc[0], "W_dec": d.W_dec[0][:, 0, :], "b_dec": d.b_dec[0]}
    metadata = {"format": "pt"}
    if d.config.activation == "jumprelu":
        tensors["threshold"], metadata[LOG_THRESHOLD_KEY] = threshold_for_file(d.activation.log_threshold[0])
    if d.W_skip is not None:
        tensors["W_skip"] = d.W_skip[0].T
    folder = Path(folder)
    stage = staging_dir(folder)
    try:
        save_safetensors({k: v.detach().contiguous() for k, v in tensors.items()}, stage / WEIGHTS_FILE, metadata)
        atomic_write_json(stage / CFG_FILE, _cfg(d, arch, model_name))
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return publish_dir(stage, folder)


def _our_config(cfg: dict, kind: str, activation: str, folder: Path) -> DictionaryConfig:
    meta = cfg.get("metadata") or {}
    saved = meta.get("workbench")
    if isinstance(saved, dict) and saved.get("kind") == kind and saved.get("activation") == activation:
        return DictionaryConfig.from_dict(saved)
    hook_in, hook_out = meta.get("hook_name"), meta.get("hook_name_out") or meta.get("hook_name")
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int):
            raise ValueError(f"{folder / CFG_FILE} has no integer {key!r}")  # noqa: TRY004 (a bad file)
    return DictionaryConfig(kind, d_in=cfg["d_in"], n_features=cfg["d_sae"], d_out=cfg.get("d_out", cfg["d_in"]),
                            activation=activation, k=cfg.get("k") if activation == "topk" else None,
                            input_hooks=[hook_in] if hook_in else [], output_hooks=[hook_out] if hook_out else [])


def _check_loadable(cfg: dict, folder: Path) -> tuple[str, str]:
    arch = cfg.get("architecture", "standard")
    if arch not in KINDS:
        raise ValueError(f"{folder / CFG_FILE}: SAELens architecture {arch!r} has no equivalent here; "
                         f"choose one of: {', '.join(KINDS)}")
    norm = cfg.get("normalize_activations", "none")
    if norm not in NORMALIZATIONS_READ:
        raise ValueError(f"{folder / CFG_FILE}: normalize_activations {norm!r} cannot be expressed by our "
                         f"dictionaries; choose one of: {', '.join(NORMALIZATIONS_READ)}")
    if cfg.get("reshape_activations", "none") != "none":
        raise ValueError(f"{folder / CFG_FILE}: reshape_activations {cfg['reshape_activations']!r} (attention "
                         "heads) is not supported; only 'none'")
    return KINDS[arch]


def load_saelens(folder: str | Path) -> Dictionary:
    """A SAELens folder as our dictionary (module docstring, "Loading")."""
    folder = Path(folder)
    if not (folder / CFG_FILE).is_file():
        raise FileNotFoundError(f"{folder} is not a SAELens folder: no {CFG_FILE}")
    cfg = read_json(folder / CFG_FILE)
    kind, activation = _check_loadable(cfg, folder)
    config = _our_config(cfg, kind, activation, folder)
    tensors, header = read_safetensors(folder / WEIGHTS_FILE, "SAELens dictionary")
    scaling = tensors.get("scaling_factor")
    if scaling is not None and not torch.equal(scaling, torch.ones_like(scaling)):
        raise ValueError(f"{folder / WEIGHTS_FILE} has a finetuning scaling_factor other than 1; not supported")
    path, F, d_in, d_out = folder / WEIGHTS_FILE, config.n_features, config.d_in, config.d_out
    W_enc, b_enc = require(tensors, "W_enc", (d_in, F), path), require(tensors, "b_enc", (F,), path)
    W_dec, b_dec = require(tensors, "W_dec", (F, d_out), path), require(tensors, "b_dec", (d_out,), path)
    if kind == "sae" and cfg.get("apply_b_dec_to_input", True):  # x - b_dec enters the encoder
        b_enc = b_enc - b_dec @ W_enc
    if activation == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        norms = W_dec.norm(dim=-1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    d = build_dictionary(config)
    with torch.no_grad():
        d.W_enc.copy_(W_enc[None])
        d.b_enc.copy_(b_enc[None])
        d.W_dec[0].copy_(W_dec[:, None, :])
        d.b_dec.copy_(b_dec[None])
        if activation == "jumprelu":
            threshold = require(tensors, "threshold", (F,), path)
            d.activation.log_threshold.copy_(log_threshold_from_file(threshold, header.get(LOG_THRESHOLD_KEY))[None])
        if d.W_skip is not None:
            d.W_skip.copy_(require(tensors, "W_skip", (d_out, d_in), path).T[None])
    return d.eval()


__all__ = ["ARCHITECTURES", "load_saelens", "saelens_architecture", "save_saelens"]
