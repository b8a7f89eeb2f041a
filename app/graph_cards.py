"""The graph viewer's hover cards: for each feature drawn, its label, top-activating contexts (token
windows with their activations, for shading) and top logit effects, from the dictionary set's feature
data (:mod:`feature_data`), and the link to its Features page entry (:mod:`links`).

1. Group the wanted (layer, feature) addresses by layer; find each layer's member (``member_for``).
2. One filter per layer over the features and contexts tables (never a scan per feature).
3. A card per feature: the first ``n_contexts`` top contexts by rank, ``n_effects`` raised and lowered
   logits, the label (a user's label over the automatic one: ``workbench.dictionaries.labels``).
Only the features drawn get a card, so a graph's payload grows with what is drawn, not with the set.
"""

from __future__ import annotations

import math
from pathlib import Path

import feature_data
import graph_view

from workbench.dictionaries.labels import feature_labels

N_CONTEXTS, N_EFFECTS = 5, 5


def _finite(value) -> float | None:
    value = float(value)
    return float(f"{value:.4g}") if math.isfinite(value) else None


def _context(row) -> dict:
    tokens, values, center = feature_data.context_window(row)
    return {"activation": _finite(row["activation"]), "tokens": tokens, "values": [_finite(v) for v in values],
            "center": center}


def _effects(tokens, values, n: int) -> list[list]:
    if tokens is None or values is None:
        return []
    return [[str(t), _finite(v)] for t, v in list(zip(tokens, values))[:n]]


def feature_cards(data: feature_data.FeatureData, addresses, labels: dict[tuple[int, int], str] | None = None,
                  n_contexts: int = N_CONTEXTS, n_effects: int = N_EFFECTS) -> dict[str, dict]:
    """``{"{layer}_{feature}": card}`` for the ``addresses`` the data holds (others get no card)."""
    labels = labels or {}
    by_layer: dict[int, set[int]] = {}
    for layer, feature in addresses:
        by_layer.setdefault(int(layer), set()).add(int(feature))
    cards = {}
    for layer, wanted in by_layer.items():
        try:
            member = feature_data.member_for(data, layer)
        except KeyError:
            continue
        rows = feature_data.layer_frame(data.features, member, layer)
        rows = rows[rows["feature"].isin(wanted)]
        contexts = feature_data.layer_frame(data.contexts, member, layer)
        contexts = contexts[(contexts["group"] == "top") & contexts["feature"].isin(wanted)].sort_values("rank")
        by_feature = {int(f): frame.head(n_contexts) for f, frame in contexts.groupby("feature")}
        for _, row in rows.iterrows():
            feature = int(row["feature"])
            found = by_feature.get(feature)
            cards[graph_view.card_key((layer, feature))] = {
                "label": labels.get((layer, feature), ""), "density": _finite(row["density"]),
                "max": _finite(row["max_activation"]),
                "contexts": [] if found is None else [_context(r) for _, r in found.iterrows()],
                "up": _effects(row["top_tokens"], row["top_values"], n_effects),
                "down": _effects(row["bottom_tokens"], row["bottom_values"], n_effects)}
    return cards


def labels_of(data: feature_data.FeatureData) -> dict[tuple[int, int], str]:
    """Every feature's label (user labels over automatic ones); none when the labels cannot be read."""
    try:
        return feature_labels(data.folder, data)
    except (OSError, ValueError, KeyError):  # a damaged labels file must not hide the graph: names only
        return {}


def feature_links(set_folder: Path, addresses) -> dict[str, str]:
    """``{"{layer}_{feature}": Features page URL}``; none for a set outside the zoo and artifacts root."""
    from links import features_link

    try:
        return {graph_view.card_key(a): features_link(set_folder, *a) for a in addresses}
    except PermissionError:
        return {}


__all__ = ["feature_cards", "feature_links", "labels_of"]
