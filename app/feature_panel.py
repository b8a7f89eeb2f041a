"""One feature of a dictionary set on screen (the Features page; the graph viewer's cards link here):
density and maximum, top-activating contexts per quantile band with every token shaded, the activation
histogram, top and bottom logit effects. Split from :mod:`widgets`, whose loaders and highlighter it uses.
"""

from __future__ import annotations

from pathlib import Path

import feature_data
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from widgets import load_features, md_escape, token_highlighter


def feature_panel(dictionary: str | Path | dict, layer: int, feature: int, member: str | None = None,
                  key: str = "feature", label: str | None = None) -> bool:
    """One feature of a dictionary: density, top-activating contexts (per quantile band) with
    per-token highlighting, activation histogram, top and bottom logit effects.

    ``dictionary`` is a catalog entry, a catalogued name (``set`` or ``set/member``) or a set folder;
    ``layer`` the model layer of the feature (a per-layer set's member for that layer, or the CLT's
    features read at that layer); ``member`` only where two members read the same layer; ``label`` the
    feature's label, shown under its title. Returns whether the feature was shown (else a message says why)."""
    data, hint = load_features(dictionary)
    if data is None:
        return False
    try:
        member = feature_data.member_for(data, int(layer), member or hint)
    except KeyError as err:
        st.warning(md_escape(err.args[0]))
        return False
    layer_features = feature_data.layer_frame(data.features, member, int(layer))
    rows = layer_features[layer_features["feature"] == int(feature)]
    if rows.empty:
        st.warning(f"Layer {int(layer)} ({md_escape(member)}) has no feature {int(feature)}; it has features "
                   f"0..{len(layer_features) - 1}.")
        return False
    row = rows.iloc[0]
    st.subheader(f"Feature {int(feature)} · layer {int(layer)}")
    if label:
        st.markdown(f"**{md_escape(label)}**")
    st.caption(f"{md_escape(member)} in {md_escape(data.folder.name)}")
    _feature_metrics(row, layer_features)
    if row["density"] > 0:
        contexts = feature_data.feature_rows(data.contexts, member, int(layer), int(feature))
        _feature_contexts(contexts, float(row["max_activation"]), _n_bands(data.contexts))
        bins = feature_data.feature_rows(data.histograms, member, int(layer), int(feature))
        _feature_histogram(bins, key)
    else:
        st.info("This feature never fired on the tokens it was read on: no contexts, no histogram.")
    _logit_effects(row)
    return True


def _feature_metrics(row: pd.Series, layer_features: pd.DataFrame) -> None:
    density = float(row["density"])
    rank = float((layer_features["density"] < density).mean())  # share of the layer's features it beats
    cols = st.columns(4)
    cols[0].metric("Density", f"{100 * density:.3g}%", help="fraction of tokens where the feature is nonzero")
    cols[1].metric("Denser than", f"{100 * rank:.0f}%", help="of this layer's features")
    cols[2].metric("Max activation", f"{float(row['max_activation']):.4g}")
    cols[3].metric("Mean when active", f"{float(row['mean_active_activation']):.4g}")


def _n_bands(contexts: pd.DataFrame) -> int:
    bands = contexts.loc[contexts["group"] == "band", "band"]
    return int(bands.max()) + 1 if len(bands) else 0


def contexts_html(contexts: pd.DataFrame, scale: float) -> str:
    """One line per context: its activation, then its window, each token escaped and shaded."""
    lines = []
    for _, row in contexts.iterrows():
        tokens, values, center = feature_data.context_window(row)
        lines.append('<div style="display:flex;gap:10px;align-items:baseline">'
                     f'<code style="min-width:5em;text-align:right">{float(row["activation"]):.4g}</code>'
                     f"{token_highlighter(tokens, values, scale, center)}</div>")
    return "".join(lines)


def _feature_contexts(contexts: pd.DataFrame, scale: float, n_bands: int) -> None:
    top = contexts[contexts["group"] == "top"].sort_values("rank")
    st.markdown("**Top-activating contexts**")
    if not any(c in contexts.columns for c in feature_data.WINDOW_COLUMNS):
        st.caption("Shaded by activation; this feature data records the activation of each context's own "
                   "(outlined) token only.")
    st.html(contexts_html(top, scale))
    for band in reversed(range(n_bands)):  # the highest quantiles first
        rows = contexts[(contexts["group"] == "band") & (contexts["band"] == band)].sort_values("rank")
        lo, hi = 100 * band / n_bands, 100 * (band + 1) / n_bands
        with st.expander(f"Quantile band {band + 1} of {n_bands}: {lo:.0f}-{hi:.0f}% of nonzero activations "
                         f"({len(rows)} samples)"):
            if len(rows):
                st.html(contexts_html(rows, scale))


def histogram_figure(bins: pd.DataFrame) -> go.Figure:
    """Counts of the nonzero bins as bars over activation (bin 0, the exact zeros, is not drawn)."""
    nonzero = bins[bins["bin"] > 0].sort_values("bin")
    fig = go.Figure(go.Bar(x=(nonzero["lo"] + nonzero["hi"]) / 2, y=nonzero["count"],
                           width=nonzero["hi"] - nonzero["lo"], marker_color="rgb(220,38,38)"))
    fig.update_layout(height=280, margin={"l": 10, "r": 10, "t": 40, "b": 10}, title="Activation histogram",
                      xaxis_title="activation (nonzero)", yaxis_title="tokens", bargap=0.05)
    return fig


def _feature_histogram(bins: pd.DataFrame, key: str) -> None:
    if bins.empty:
        st.info("No histogram recorded for this feature.")
        return
    zeros, total = int(bins.loc[bins["bin"] == 0, "count"].sum()), int(bins["count"].sum())
    st.plotly_chart(histogram_figure(bins), key=f"{key}_histogram")
    st.caption(f"{zeros:,} of {total:,} tokens read are exactly 0 (not drawn).")


def _logit_effects(row: pd.Series) -> None:
    """Top and bottom direct logit effects as tables: a table shows a token as text, whatever it holds."""
    cols = st.columns(2)
    for col, title, tokens, values in [(cols[0], "Raises logits of", "top_tokens", "top_values"),
                                       (cols[1], "Lowers logits of", "bottom_tokens", "bottom_values")]:
        col.markdown(f"**{title}**")
        table = pd.DataFrame({"token": [str(t) for t in row[tokens]], "effect": [float(v) for v in row[values]]})
        col.dataframe(table, hide_index=True, column_config={"effect": st.column_config.NumberColumn(format="%.4f")})
