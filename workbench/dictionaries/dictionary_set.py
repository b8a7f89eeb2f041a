"""A replacement set on disk: the dictionaries that together replace a model's MLPs.

    set.json     {"model_name": ..., "model_config": {...}, "kind": ..., "layers": [0, 1],
                  "members": {"layer0": "runs/layer0/dictionary", ...}, ...}

Members are dictionary folders (:func:`save_dictionary`), paths relative to the set folder: one per
layer for per-layer kinds, one for a CLT. A plain dictionary folder (``config.json`` +
``dictionary.safetensors``, no ``set.json``) is read as a set of one.

Loading a set (:func:`load_dictionary_set`):

1. Resolve every member path inside the set folder (:func:`inside_root`) before anything is read: a
   member ``../../../../../etc`` is an error naming the member and the set.
2. Read the members' configs; the layers their output hooks write must cover the set's declared
   ``layers`` (an error names the missing ones: a partial set would build a partial graph silently).
3. Load the weights.

Using a set with a model (:func:`load_set_for_model`, for `wb dict eval`, `wb dict features`,
`wb graph` and the app) also checks that they belong together (:func:`check_set_fits_model`): the
model the set records (``model_name``, and ``model_config``: architecture, d_model, n_layers, d_vocab)
is the given model, and every hook the members read or write exists in the model with their widths.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from workbench.dictionaries.models import CONFIG_FILE, Dictionary, load_dictionary, read_dictionary_config
from workbench.store.atomic import atomic_write_json, read_json
from workbench.store.catalog import inside_root

if TYPE_CHECKING:
    from workbench.store.model_files import ModelBundle

SET_FILE = "set.json"
MODEL_FIELDS = ("architecture", "d_model", "n_layers", "d_vocab")  # recorded in set.json as model_config
_LAYER = re.compile(r"^blocks\.(\d+)\.")


def set_model_meta(bundle: ModelBundle) -> dict:
    """What a set records about the model it was trained on (checked by :func:`check_set_fits_model`)."""
    return {"model": str(bundle.folder), "model_name": bundle.name,
            "model_config": {k: bundle.config[k] for k in MODEL_FIELDS if k in bundle.config}}


def save_dictionary_set(folder: str | Path, members: dict[str, str], meta: dict) -> Path:
    """Write ``set.json`` last and atomically, once every member folder is published."""
    folder = Path(folder)
    for name, path in member_folders(folder, members).items():
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"dictionary set member {name!r} has no dictionary at {path}")
    return atomic_write_json(folder / SET_FILE, {**meta, "members": members})


def member_folders(folder: Path, members: dict) -> dict[str, Path]:
    """Step 1: ``{member: folder}``, each confined to the set folder."""
    where = folder / SET_FILE
    if not isinstance(members, dict) or not members:
        raise ValueError(f"dictionary set {where} lists no members (\"members\": {{name: folder inside the set}})")
    out = {}
    for name, rel in members.items():
        if not isinstance(rel, str) or not rel.strip():
            raise ValueError(f"dictionary set {where}: member {name!r} has no folder (got {rel!r})")
        try:
            out[name] = inside_root(folder, rel)
        except PermissionError:
            raise PermissionError(f"dictionary set {where}: member {name!r} ({rel!r}) leads outside the set "
                                  f"folder {folder.resolve()}; members must be folders inside the set") from None
    return out


def written_layers(hooks: list[str]) -> set[int]:
    return {int(m.group(1)) for h in hooks if (m := _LAYER.match(h))}


def check_layers(folder: Path, meta: dict, outputs: dict[str, list[str]]) -> None:
    """Step 2: the members' output hooks (``{member: hooks}``) cover the declared ``layers``."""
    declared = meta.get("layers")
    if declared is None:
        return
    covered = set().union(*(written_layers(hooks) for hooks in outputs.values()))
    missing = sorted(set(map(int, declared)) - covered)
    if missing:
        raise ValueError(f"dictionary set {folder / SET_FILE} declares layers {sorted(declared)} but its members "
                         f"({', '.join(outputs)}) write only layer(s) {sorted(covered)}; missing layer(s) "
                         f"{missing}: add their members, or train the set again with `wb dict train`")


def _output_hooks(member: Path) -> list[str]:
    """A member's output hooks from its ``config.json`` alone (its weights are read after step 2)."""
    if not (member / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"dictionary folder {member} lacks {CONFIG_FILE}")
    values = read_json(member / CONFIG_FILE)
    hooks = values.get("output_hooks") if isinstance(values, dict) else None
    if not isinstance(hooks, list):  # the strict reader names what is wrong (or fills the default)
        hooks = read_dictionary_config(member / CONFIG_FILE).output_hooks
    return [str(h) for h in hooks]


def load_dictionary_set(folder: str | Path) -> tuple[dict[str, Dictionary], dict]:
    """``({member name: dictionary}, set meta)`` from a set folder or a single dictionary folder (steps 1-3)."""
    folder = Path(folder)
    if (folder / SET_FILE).is_file():
        meta = read_json(folder / SET_FILE)
        if not isinstance(meta, dict):
            raise ValueError(f"dictionary set {folder / SET_FILE} should hold a JSON object")
        paths = member_folders(folder, meta.get("members"))
        outputs = {name: _output_hooks(path) for name, path in paths.items()}
        check_layers(folder, meta, outputs)
        return {name: load_dictionary(path) for name, path in paths.items()}, meta
    if (folder / CONFIG_FILE).is_file():
        return {folder.name: load_dictionary(folder)}, {}
    raise FileNotFoundError(f"{folder} is neither a dictionary set (no {SET_FILE}) nor a dictionary folder "
                            f"(no {CONFIG_FILE}); pass the folder `wb dict train` wrote")


def _model_widths(bundle: ModelBundle, hooks: list[str]) -> dict[str, int]:
    """Each hook's width in the model, read from one ``<bos>`` forward pass (never from d_model: RWKV's
    ``hook_mlp_in`` is twice as wide)."""
    from workbench.dictionaries.activations import real_token_rows

    tok = bundle.tokenizer
    rows = real_token_rows(bundle.model, torch.tensor([[tok.bos_id]]), hooks, tok.pad_id)
    return {h: int(rows[h].shape[-1]) for h in hooks}


def check_set_fits_model(bundle: ModelBundle, dictionaries: dict[str, Dictionary], meta: dict,
                         folder: str | Path) -> None:
    """The set was trained on this model: recorded name and config agree, hooks exist with the widths
    the members read and write. Errors name both models and end in "trained on another model"."""
    trained_on = meta.get("model_name")
    if trained_on and trained_on != bundle.name:
        raise ValueError(f"dictionary set {folder} was trained on model {trained_on!r}, not {bundle.name!r} "
                         f"({bundle.folder}); pick a set trained on this model")
    theirs = {k: v for k, v in (meta.get("model_config") or {}).items() if bundle.config.get(k) != v}
    if theirs:
        ours = {k: bundle.config.get(k) for k in theirs}
        raise ValueError(f"dictionary set {folder} was trained on model {trained_on or '(not recorded)'} with {theirs}, but model "
                         f"{bundle.name!r} ({bundle.folder}) has {ours}: it was trained on another model")
    hooks = list(dict.fromkeys(h for d in dictionaries.values() for h in d.config.input_hooks + d.config.output_hooks))
    known = set(bundle.model.hook_names())
    missing = [h for h in hooks if h not in known]
    if missing:
        raise ValueError(f"dictionary set {folder} (model {trained_on or 'not recorded'}) uses hook(s) {missing} that "
                         f"model {bundle.name!r} ({bundle.folder}) lacks: it was trained on another model")
    widths = _model_widths(bundle, hooks)
    for member, d in dictionaries.items():
        c = d.config
        for hook, width in [(h, c.d_in) for h in c.input_hooks] + [(h, c.d_out) for h in c.output_hooks]:
            if widths[hook] != width:
                raise ValueError(f"member {member!r} of dictionary set {folder} (model {trained_on or 'not recorded'}) "
                                 f"expects {hook} {width} wide, but model {bundle.name!r} ({bundle.folder}) has "
                                 f"{widths[hook]}: it was trained on another model")


def load_set_for_model(bundle: ModelBundle, folder: str | Path) -> tuple[dict[str, Dictionary], dict]:
    """:func:`load_dictionary_set` and :func:`check_set_fits_model`: the set, ready to use with ``bundle``."""
    dictionaries, meta = load_dictionary_set(folder)
    check_set_fits_model(bundle, dictionaries, meta, folder)
    return dictionaries, meta


__all__ = ["MODEL_FIELDS", "SET_FILE", "check_set_fits_model", "load_dictionary_set", "load_set_for_model",
           "member_folders", "save_dictionary_set", "set_model_meta"]
