"""A feature's activation on every token of a typed prompt: the model and the dictionary set run on it.
Plain Python and torch, no streamlit: the Features page's "activations on my text" box shows the result.

1. The set's model folder: the zoo's layout first (``<model>/dictionaries/<set>``), then the ``model``
   recorded in ``set.json`` or in the feature data's ``summary.json`` (resolved inside the zoo or the
   artifacts root only), then the zoo folder named by ``set.json``'s ``model_name``.
2. The prompt is tokenised with the model's tokenizer (``<bos>`` put first, as for graphs); a word the
   vocabulary lacks is a ValueError naming it with near matches (:mod:`prompt_help`).
3. The member holding the layer encodes that layer's input hook
   (:func:`workbench.dictionaries.features.feature_activations`, the code that wrote the feature data),
   so the values compare with the feature's recorded contexts and maximum.
"""

from __future__ import annotations

from pathlib import Path

import feature_data
import prompt_help
import torch

from workbench.store.atomic import read_json
from workbench.store.catalog import models_root

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def _is_model(folder: Path) -> bool:
    return all((folder / name).is_file() for name in MODEL_FILES)


def _recorded(set_folder: Path, name: str) -> dict:
    try:
        record = read_json(set_folder / name)
    except (OSError, RuntimeError):
        return {}
    return record if isinstance(record, dict) else {}


def model_folder_of(set_folder: str | Path) -> Path:
    """The folder of the model a set was trained on (step 1); FileNotFoundError names where it looked."""
    set_folder = Path(set_folder)
    candidates = [set_folder.parent.parent] if set_folder.parent.name == "dictionaries" else []
    set_meta = _recorded(set_folder, "set.json")
    summary = _recorded(set_folder / feature_data.FEATURES_DIR, "summary.json")
    for recorded in (set_meta.get("model"), summary.get("model")):
        if recorded:
            try:
                candidates.append(feature_data.safe_folder(recorded))
            except PermissionError:
                # a path from another machine: its zoo-relative tail may name a model here
                shown = Path(feature_data.display_path(recorded))
                if shown.parts[:1] == ("models",) and len(shown.parts) > 1:
                    candidates.append(models_root() / Path(*shown.parts[1:]))
    if set_meta.get("model_name"):
        candidates.append(models_root() / str(set_meta["model_name"]))
    for folder in candidates:
        if _is_model(folder):
            return folder.resolve()
    tried = ", ".join(feature_data.display_path(c) for c in candidates) or "no recorded model"
    raise FileNotFoundError(f"the model of dictionary set {feature_data.display_path(set_folder)} was not found "
                            f"(looked at: {tried}); it needs {', '.join(MODEL_FILES)}")


def encode(bundle, prompt: str) -> torch.Tensor:
    """``[1, T]`` ids of ``prompt`` (step 2)."""
    from workbench.attribution.jobs import encode_prompt

    unknown = prompt_help.unknown_words(prompt, bundle.tokenizer.vocab)
    if unknown:
        raise ValueError(prompt_help.unknown_words_message(unknown))
    return encode_prompt(bundle, prompt)


@torch.no_grad()
def token_activations(bundle, dictionaries: dict, member: str, layer: int, feature: int,
                      prompt: str) -> tuple[list[str], list[float]]:
    """(tokens, the feature's activation at each) of ``prompt`` (steps 2-3)."""
    from workbench.dictionaries.features import feature_activations, model_layer_of

    if member not in dictionaries:
        raise KeyError(f"the set has no member {member!r}; its members are {', '.join(dictionaries)}")
    d = dictionaries[member]
    layers = [model_layer_of(h) for h in d.config.input_hooks]
    if int(layer) not in layers:
        raise KeyError(f"member {member!r} reads layers {layers}, not layer {int(layer)}")
    if not 0 <= int(feature) < d.config.n_features:
        raise KeyError(f"member {member!r} has features 0..{d.config.n_features - 1}, not {int(feature)}")
    tokens = encode(bundle, prompt)
    acts, _, _ = feature_activations(bundle.model, d.eval(), tokens, bundle.tokenizer.pad_id)
    values = acts[:, layers.index(int(layer)), int(feature)].float().tolist()
    return bundle.tokenizer.tokens(tokens[0].tolist()), values


__all__ = ["encode", "model_folder_of", "token_activations"]
