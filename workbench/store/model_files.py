"""A model on disk: one folder, published atomically.

    config.json        the architecture config (``build_model(config)`` rebuilds the module)
    model.safetensors  the weights
    tokenizer.json     the vocabulary, so the model can be read without its task code
    card.json          task spec, metrics, parameters, training tokens and time, seed
    curves.parquet     training curves (step, tokens, split, metric, value), when trained here
    checksums.json     sha256 of each file above, written last (:mod:`workbench.store.integrity`)

A model is rebuilt from ``config.json`` and its weights loaded strictly: a missing or unexpected tensor
is an error naming it, never a silently half-initialised model. Loading checks, in order: the weights
fit the config, the checksums (a changed weights, config or tokenizer file is an error; an edited card
a warning), and every weight is finite (a NaN or inf is an error naming the tensor). A card rewritten
after publication goes through :func:`write_card`, which keeps its checksum current.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from workbench.architectures import build_model
from workbench.store.atomic import (
    atomic_write_json,
    atomic_write_text,
    load_safetensors,
    publish_dir,
    read_json,
    save_safetensors,
    staging_dir,
)
from workbench.store.integrity import (
    check_checksums,
    check_finite,
    non_finite_constants,
    rewrite_json,
    write_checksums,
)
from workbench.tasks.tokenizer import Tokenizer


@dataclass
class ModelBundle:
    model: torch.nn.Module
    config: dict
    tokenizer: Tokenizer
    card: dict
    folder: Path

    @property
    def name(self) -> str:
        return self.card.get("name", self.folder.name)


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage, and buffers may alias each other
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_model_folder(
    folder: str | Path,
    model: torch.nn.Module,
    config: dict,
    tokenizer: Tokenizer,
    card: dict,
    curves: pd.DataFrame | None = None,
) -> Path:
    folder = Path(folder)
    stage = staging_dir(folder)
    save_safetensors(weights_of(model), stage / "model.safetensors", {"architecture": config["architecture"]})
    atomic_write_json(stage / "config.json", config)
    atomic_write_text(stage / "tokenizer.json", tokenizer.to_json())
    atomic_write_json(stage / "card.json", card)
    if curves is not None:
        curves.to_parquet(stage / "curves.parquet", index=False)
    write_checksums(stage)
    return publish_dir(stage, folder)


def write_card(folder: str | Path, card: dict) -> Path:
    """Rewrite a published model's ``card.json``, its checksum updated with it."""
    return rewrite_json(folder, "card.json", card)


def load_weights_strict(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"weights in {source} do not fit the model built from its config: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


def load_model_folder(folder: str | Path) -> ModelBundle:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}")
    for required in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / required).is_file():
            raise FileNotFoundError(f"model folder {folder} lacks {required}")
    config = read_json(folder / "config.json")
    model = build_model(config, source=folder / "config.json")
    weights_path = folder / "model.safetensors"
    weights = load_safetensors(weights_path)
    fresh = non_finite_constants(model)
    load_weights_strict(model, weights, weights_path)
    check_checksums(folder)
    check_finite(weights, weights_path, fresh)
    tokenizer = Tokenizer.from_json((folder / "tokenizer.json").read_text())
    card = read_json(folder / "card.json") if (folder / "card.json").is_file() else {}
    if not isinstance(card, dict):
        raise ValueError(f"{folder / 'card.json'} should hold a JSON object, not {type(card).__name__}")  # noqa: TRY004
    return ModelBundle(model.eval(), config, tokenizer, card, folder)


def load_curves(folder: str | Path) -> pd.DataFrame | None:
    path = Path(folder) / "curves.parquet"
    return pd.read_parquet(path) if path.is_file() else None
