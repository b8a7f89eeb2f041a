"""Transcoder sets and cross-layer transcoders in circuit-tracer's layout, both ways.

circuit-tracer (``load_transcoders(config)``) reads a folder with a ``config.yaml`` whose
``model_kind`` says which layout the weight files follow. Feature hooks are block-relative:
``feature_input_hook: hook_mlp_in`` means ``blocks.{l}.hook_mlp_in`` for every layer ``l``.

Transcoder set (``model_kind: transcoder_set``), one file per layer ``0..n-1``::

    config.yaml           model_kind, feature_input_hook, feature_output_hook, model_name,
                          activation (relu | topk, absent for JumpReLU) and k, optionally
                          transcoders (the layer files' absolute paths, for a local load)
    layer_{l}.safetensors W_enc [F, d], W_dec [F, d], b_enc [F], b_dec [d],
                          activation_function.threshold [F] (JumpReLU), W_skip [d, d] (skip; y += x @ W_skip.T)

Cross-layer transcoder (``model_kind: cross_layer_transcoder``)::

    W_enc_{l}.safetensors W_enc_{l} [F, d], b_enc_{l} [F], b_dec_{l} [d], threshold_{l} [F] (JumpReLU)
    W_dec_{l}.safetensors W_dec_{l} [F, n - l, d]: layer l's features writing to layers l..n-1

Saving (:func:`save_circuit_tracer`):

1. Check what circuit-tracer can express: hooks ``blocks.{l}.<suffix>`` with layers ``0..n-1`` in
   order and one suffix per side; ``d_in == d_out`` (it builds every matrix from one ``d_model``);
   relu, JumpReLU or (per-layer only) TopK. Its TopK keeps the top k values whatever their sign, so a
   TopK with ``topk_relu=True`` is refused unless ``allow_topk_relu=True`` (they differ only on rows
   with fewer than k positive pre-activations). BatchTopK is refused (convert it to JumpReLU first).
2. Fold our scales into the weights (:meth:`Dictionary.with_scales_folded`); with scales of 1 the
   tensors are ours bit for bit, transposed where the layout says so.
3. Write the weight files (JumpReLU thresholds as in :mod:`.interop_common`), then ``config.yaml`` with
   our configs under ``workbench`` (circuit-tracer ignores the key; our loader restores the hooks and
   settings from it), and publish the folder atomically.

Loading (:func:`load_circuit_tracer`) reads either layout, written here or elsewhere, into
``{member: dictionary}`` as :func:`load_dictionary_set` returns: ``layer{l}`` per layer, or ``clt``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
import yaml

from workbench.dictionaries.interop_common import (
    LOG_THRESHOLD_KEY,
    log_threshold_from_file,
    read_safetensors,
    require,
    threshold_for_file,
)
from workbench.dictionaries.models import Dictionary, DictionaryConfig, build_dictionary
from workbench.store.atomic import atomic_write_text, publish_dir, save_safetensors, staging_dir

CONFIG_FILE = "config.yaml"
TRANSCODER_SET, CLT = "transcoder_set", "cross_layer_transcoder"
BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _hook_suffix(hooks: list[str], side: str) -> str:
    """The block-relative hook shared by ``hooks`` (layers 0..n-1 in order), or an error naming it."""
    parsed = [BLOCK_HOOK.match(h) for h in hooks]
    if not hooks or not all(parsed):
        raise ValueError(f"circuit-tracer needs {side} hooks of the form blocks.<layer>.<hook>; got {hooks}")
    layers, suffixes = [int(m.group(1)) for m in parsed], {m.group(2) for m in parsed}
    if layers != list(range(len(hooks))) or len(suffixes) != 1:
        raise ValueError(f"circuit-tracer needs one dictionary per layer 0..n-1, in order, on one hook; "
                         f"the {side} hooks are {hooks}")
    return suffixes.pop()


def _check(config: DictionaryConfig, allow_topk_relu: bool, per_layer: bool) -> None:
    """Step 1 for one dictionary."""
    if config.d_in != config.d_out:
        raise ValueError(f"circuit-tracer needs d_in == d_out (one d_model); this {config.kind} maps "
                         f"{config.d_in} -> {config.d_out}")
    allowed = ("relu", "jumprelu", "topk") if per_layer else ("relu", "jumprelu")
    if config.activation not in allowed:
        hint = " (convert with batchtopk_to_jumprelu)" if config.activation == "batchtopk" else ""
        raise ValueError(f"circuit-tracer has no {config.activation!r} {'transcoder' if per_layer else 'CLT'}"
                         f"{hint}; choose one of: {', '.join(allowed)}")
    if config.activation == "topk" and config.topk_relu and not allow_topk_relu:
        raise ValueError("circuit-tracer's TopK keeps the top k values whatever their sign; this dictionary "
                         "applies a ReLU after TopK (topk_relu=True). Pass allow_topk_relu=True to write it "
                         "anyway (they differ only on rows with fewer than k positive pre-activations)")


def _as_members(dictionaries) -> list[Dictionary]:
    if isinstance(dictionaries, Dictionary):
        return [dictionaries]
    return list(dictionaries.values() if isinstance(dictionaries, dict) else dictionaries)


def save_circuit_tracer(dictionaries, folder: str | Path, model_name: str | None = None,
                        allow_topk_relu: bool = False, absolute_paths: bool = False, model=None) -> Path:
    """Write per-layer transcoders (a list or ``{member: dictionary}`` in layer order) or one CLT in
    circuit-tracer's layout (module docstring); ``absolute_paths`` lists the layer files in
    ``config.yaml`` so circuit-tracer can load the folder locally. Pass the ``model`` to write its
    native hook names (circuit-tracer hooks a plain transformer_lens model, on which our shared
    ``hook_mlp_in`` is ``ln2.hook_normalized``). Returns the folder."""
    members = _as_members(dictionaries)
    kinds = {d.config.kind for d in members}
    if kinds == {"clt"} and len(members) == 1:
        layout = CLT
    elif kinds <= {"transcoder", "skip_transcoder"} and members and len(kinds) == 1:
        layout = TRANSCODER_SET
    else:
        raise ValueError(f"circuit-tracer stores one CLT or per-layer transcoders of one kind; got kinds "
                         f"{sorted(kinds)} x {len(members)}")
    for d in members:
        _check(d.config, allow_topk_relu, per_layer=layout == TRANSCODER_SET)
    native = getattr(model, "hook_aliases", {}) if model is not None else {}
    ins = [native.get(h, h) for d in members for h in d.config.input_hooks]
    outs = [native.get(h, h) for d in members for h in d.config.output_hooks]
    config = {"model_kind": layout, "model_name": model_name, "feature_input_hook": _hook_suffix(ins, "input"),
              "feature_output_hook": _hook_suffix(outs, "output"),
              "workbench": {"format": 1, "members": [d.config.to_dict() for d in members]}}
    folder = Path(folder)
    stage = staging_dir(folder)
    try:
        folded = [d.with_scales_folded() for d in members]
        if layout == CLT:
            _write_clt(folded[0], stage)
        else:
            config.update(_write_layers(folded, stage, folder if absolute_paths else None))
        atomic_write_text(stage / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return publish_dir(stage, folder)


def _write_layers(members: list[Dictionary], stage: Path, final: Path | None) -> dict:
    """The layer files; returns the config entries the activation needs."""
    for layer, d in enumerate(members):
        tensors = {"W_enc": d.W_enc[0].T, "W_dec": d.W_dec[0][:, 0, :], "b_enc": d.b_enc[0], "b_dec": d.b_dec[0]}
        metadata = {"format": "pt"}
        if d.config.activation == "jumprelu":
            tensors["activation_function.threshold"], metadata[LOG_THRESHOLD_KEY] = threshold_for_file(
                d.activation.log_threshold[0])
        if d.W_skip is not None:
            tensors["W_skip"] = d.W_skip[0].T
        save_safetensors({k: v.detach().contiguous() for k, v in tensors.items()},
                         stage / f"layer_{layer}.safetensors", metadata)
    entries: dict = {}
    first = members[0].config
    if first.activation in ("relu", "topk"):
        entries["activation"] = first.activation
    if first.activation == "topk":
        if len({d.config.k for d in members}) != 1:
            raise ValueError(f"circuit-tracer takes one k for a set; the layers have k {[d.config.k for d in members]}")
        entries["k"] = first.k
    if final is not None:
        entries["transcoders"] = [str(final.resolve() / f"layer_{i}.safetensors") for i in range(len(members))]
    return entries


def _write_clt(d: Dictionary, stage: Path) -> None:
    for layer in range(d.config.n_layers):
        tensors = {f"W_enc_{layer}": d.W_enc[layer].T, f"b_enc_{layer}": d.b_enc[layer],
                   f"b_dec_{layer}": d.b_dec[layer]}
        metadata = {"format": "pt"}
        if d.config.activation == "jumprelu":
            tensors[f"threshold_{layer}"], metadata[LOG_THRESHOLD_KEY] = threshold_for_file(
                d.activation.log_threshold[layer])
        save_safetensors({k: v.detach().contiguous() for k, v in tensors.items()},
                         stage / f"W_enc_{layer}.safetensors", metadata)
        save_safetensors({f"W_dec_{layer}": d.W_dec[layer].detach().contiguous()},
                         stage / f"W_dec_{layer}.safetensors", {"format": "pt"})


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a circuit-tracer folder: no {CONFIG_FILE}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML ({err})") from err
    if not isinstance(config, dict) or config.get("model_kind") not in (TRANSCODER_SET, CLT):
        kind = config.get("model_kind") if isinstance(config, dict) else None
        raise ValueError(f"{path} has model_kind {kind!r}; choose one of: {TRANSCODER_SET}, {CLT}")
    for key in ("feature_input_hook", "feature_output_hook"):
        if not isinstance(config.get(key), str):
            raise ValueError(f"{path} names no {key}")  # noqa: TRY004 (a bad file, not a bad argument)
    return config


def _saved_configs(config: dict, count: int) -> list[dict] | None:
    saved = (config.get("workbench") or {}).get("members")
    return saved if isinstance(saved, list) and len(saved) == count else None


def load_circuit_tracer(folder: str | Path) -> dict[str, Dictionary]:
    """A circuit-tracer folder as ``{member: dictionary}``: ``layer{l}`` per layer, or ``clt``."""
    folder = Path(folder)
    config = _read_config(folder)
    if config["model_kind"] == CLT:
        return {"clt": _load_clt(folder, config)}
    paths = [Path(p) if Path(p).is_absolute() else folder / p for p in config.get("transcoders") or []]
    if not paths:
        count = len(list(folder.glob("layer_*.safetensors")))
        paths = [folder / f"layer_{layer}.safetensors" for layer in range(count)]
    if not paths:
        raise FileNotFoundError(f"circuit-tracer transcoder set {folder} has no layer_<l>.safetensors files")
    saved = _saved_configs(config, len(paths))
    return {f"layer{layer}": _load_layer(path, layer, config, saved[layer] if saved else None)
            for layer, path in enumerate(paths)}


def _layer_config(tensors: dict, layer: int, config: dict, saved: dict | None, activation: str) -> DictionaryConfig:
    kind = "skip_transcoder" if "W_skip" in tensors else "transcoder"
    if saved is not None and saved.get("kind") == kind and saved.get("activation") == activation:
        return DictionaryConfig.from_dict(saved)
    if "W_enc" not in tensors:
        raise ValueError(f"circuit-tracer layer {layer} file has no tensor 'W_enc'; it holds: {sorted(tensors)}")
    n_features, d_model = tensors["W_enc"].shape
    return DictionaryConfig(kind, d_in=d_model, n_features=n_features, d_out=d_model, activation=activation,
                            k=config.get("k") if activation == "topk" else None, topk_relu=False,
                            input_hooks=[f"blocks.{layer}.{config['feature_input_hook']}"],
                            output_hooks=[f"blocks.{layer}.{config['feature_output_hook']}"])


def _load_layer(path: Path, layer: int, config: dict, saved: dict | None) -> Dictionary:
    tensors, header = read_safetensors(path, f"circuit-tracer layer {layer}")
    activation = config.get("activation") or ("jumprelu" if "activation_function.threshold" in tensors else "relu")
    if activation not in ("relu", "jumprelu", "topk"):
        raise ValueError(f"{path.parent / CONFIG_FILE}: unknown activation {activation!r}; "
                         "choose one of: relu, topk (JumpReLU: leave it out)")
    c = _layer_config(tensors, layer, config, saved, activation)
    d = build_dictionary(c)
    F, d_in, d_out = c.n_features, c.d_in, c.d_out
    with torch.no_grad():
        d.W_enc.copy_(require(tensors, "W_enc", (F, d_in), path).T[None])
        d.W_dec[0].copy_(require(tensors, "W_dec", (F, d_out), path)[:, None, :])
        d.b_enc.copy_(require(tensors, "b_enc", (F,), path)[None])
        d.b_dec.copy_(require(tensors, "b_dec", (d_out,), path)[None])
        if activation == "jumprelu":
            threshold = require(tensors, "activation_function.threshold", (F,), path)
            d.activation.log_threshold.copy_(log_threshold_from_file(threshold, header.get(LOG_THRESHOLD_KEY))[None])
        if d.W_skip is not None:
            d.W_skip.copy_(require(tensors, "W_skip", (d_out, d_in), path).T[None])
    return d.eval()


def _load_clt(folder: Path, config: dict) -> Dictionary:
    n_layers = len(list(folder.glob("W_enc_*.safetensors")))
    if n_layers == 0:
        raise FileNotFoundError(f"circuit-tracer CLT {folder} has no W_enc_<l>.safetensors files")
    encoders = [read_safetensors(folder / f"W_enc_{layer}.safetensors", f"CLT layer {layer}") for layer in range(n_layers)]
    activation = "jumprelu" if "threshold_0" in encoders[0][0] else "relu"
    saved = _saved_configs(config, 1)
    if saved and saved[0].get("kind") == "clt" and saved[0].get("activation") == activation:
        c = DictionaryConfig.from_dict(saved[0])
    else:
        if "W_enc_0" not in encoders[0][0]:
            raise ValueError(f"{folder / 'W_enc_0.safetensors'} has no tensor 'W_enc_0'")
        F, d_model = encoders[0][0]["W_enc_0"].shape
        c = DictionaryConfig("clt", d_in=d_model, n_features=F, n_layers=n_layers, activation=activation,
                             input_hooks=[f"blocks.{i}.{config['feature_input_hook']}" for i in range(n_layers)],
                             output_hooks=[f"blocks.{i}.{config['feature_output_hook']}" for i in range(n_layers)])
    d = build_dictionary(c)
    with torch.no_grad():
        for layer, (tensors, header) in enumerate(encoders):
            path = folder / f"W_enc_{layer}.safetensors"
            d.W_enc[layer].copy_(require(tensors, f"W_enc_{layer}", (c.n_features, c.d_in), path).T)
            d.b_enc[layer].copy_(require(tensors, f"b_enc_{layer}", (c.n_features,), path))
            d.b_dec[layer].copy_(require(tensors, f"b_dec_{layer}", (c.d_out,), path))
            if activation == "jumprelu":
                threshold = require(tensors, f"threshold_{layer}", (c.n_features,), path)
                d.activation.log_threshold[layer].copy_(log_threshold_from_file(threshold, header.get(LOG_THRESHOLD_KEY)))
            dec_path = folder / f"W_dec_{layer}.safetensors"
            decoders, _ = read_safetensors(dec_path, f"CLT layer {layer}")
            d.W_dec[layer].copy_(require(decoders, f"W_dec_{layer}", (c.n_features, n_layers - layer, c.d_out), dec_path))
    return d.eval()


__all__ = ["CLT", "TRANSCODER_SET", "load_circuit_tracer", "save_circuit_tracer"]
