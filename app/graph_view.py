"""What the graph viewer component (``components/graph_viewer``) is sent: a :class:`graph_data.GraphView`
as columnar JSON (ids, kinds, names, labels, rows, positions, values, influence, logit probabilities,
edges), with the feature cards and Features page links of the features drawn. Layout, thresholds,
hover and selection happen in the browser (``frontend/model.js``); this module only packs.

1. Numbers are rounded to 4 significant digits (a 1,000-node, 11,000-edge graph stays a few hundred
   kB) and NaN becomes null (JSON has no NaN).
2. Labels go as text: the browser escapes every string before it reaches HTML (``frontend/cards.js``),
   and draws node names on the canvas, where markup is never parsed.
3. A feature node points at its card by ``"{layer}_{feature}"``: one card per feature, however many
   positions it is active at.
"""

from __future__ import annotations

import math

import graph_data
import numpy as np


def rounded(values) -> list[float | None]:
    """Floats to 4 significant digits, NaN and infinities to None."""
    out = []
    for v in np.asarray(values, dtype=float).tolist():
        out.append(float(f"{v:.4g}") if math.isfinite(v) else None)
    return out


def card_key(address: tuple[int, int] | None) -> str | None:
    return None if address is None else f"{int(address[0])}_{int(address[1])}"


def row_names(view: graph_data.GraphView) -> list[str]:
    """Row labels bottom to top: tokens, the layers, logits."""
    return ["tokens"] + [f"L{r - 1}" for r in range(1, view.n_rows - 1)] + ["logits"]


def payload(view: graph_data.GraphView, key: str, cards: dict[str, dict] | None = None,
            labels: dict[tuple[int, int], str] | None = None, links: dict[str, str] | None = None) -> dict:
    """The component's ``graph`` argument for ``view``: ``key`` names the graph (a new key resets the
    browser's state), ``cards`` / ``links`` by :func:`card_key`, ``labels`` by (layer, feature)."""
    labels, cards, links = labels or {}, cards or {}, links or {}
    keys = [card_key(a) for a in view.address]
    prob = view.prob if view.prob is not None else np.full(len(view), np.nan)
    used = {k for k in keys if k is not None}
    return {
        "key": key, "tokens": [str(t) for t in view.tokens], "nRows": int(view.n_rows), "rowNames": row_names(view),
        "nodes": {"id": list(view.ids), "kind": list(view.kinds), "name": [str(s) for s in view.labels],
                  "label": [labels.get(tuple(a), "") if a is not None else "" for a in view.address],
                  "row": view.row.astype(int).tolist(), "pos": view.pos.astype(int).tolist(),
                  "value": rounded(view.value), "influence": rounded(view.influence), "prob": rounded(prob),
                  "card": keys},
        "edges": {"source": view.source.astype(int).tolist(), "target": view.target.astype(int).tolist(),
                  "weight": rounded(view.weight)},
        "cards": {k: v for k, v in cards.items() if k in used},
        "links": {k: v for k, v in links.items() if k in used},
        "notes": list(view.notes),
    }


__all__ = ["card_key", "payload", "rounded", "row_names"]
