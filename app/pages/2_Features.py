"""Features of a dictionary set: pick a set from the catalog and a layer, search its features by index
or by token, list them by density or max activation, and open one: its label (automatic, or the user's,
edited here), top-activating contexts per quantile band with per-token highlighting, activation
histogram, density, top and bottom logit effects, its activations on a typed text, and the catalogued
graphs that draw it. A link (``Features?root=..&set=..&layer=..&feature=..``, :mod:`links`) opens one
feature, and the URL follows what is open.

Reads the catalog, the set's ``features/`` folder (written by ``wb dict features``) and, for typed
text, the set's model. The feature panel is :func:`feature_panel.feature_panel` (the graph viewer's
feature cards link here); the other sections are in :mod:`feature_sections`.
"""

import sys
from pathlib import Path

import pandas as pd
import streamlit as st

# streamlit and AppTest run pages as scripts, so app/ goes on sys.path for `import widgets`
APP_DIR = Path(__file__).resolve().parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))
import feature_data
import feature_panel
import feature_sections
import widgets

SORTS = {"density": "density", "max activation": "max_activation"}
LIST_LIMIT = 1000  # rows listed and offered; a search narrows larger layers
LIST_CONFIG = {
    "density": st.column_config.NumberColumn(format="percent"),
    "max activation": st.column_config.NumberColumn(format="%.4g"),
    "mean when active": st.column_config.NumberColumn(format="%.4g"),
}


def layer_label(member: str, layer: int) -> str:
    """``layer 1`` for a per-layer member named after its layer, ``layer 1 · clt`` otherwise."""
    return f"layer {layer}" if member == f"layer{layer}" else f"layer {layer} · {member}"


def show_summary(entry: dict, data: feature_data.FeatureData) -> None:
    meta, summary = entry.get("meta") or {}, data.summary
    parts = [str(meta[k]) for k in ("kind", "activation") if meta.get(k)]
    counts = [(widgets.number(summary.get(k)), label) for k, label in
              [("n_features", "features"), ("n_sequences", "sequences"), ("n_tokens", "tokens read"),
               ("dead_features", "never fire")]]
    parts += [f"{value:,.0f} {label}" for value, label in counts if value is not None]
    if summary.get("model"):
        parts.append(f"model {feature_data.display_path(summary['model'])}")
    st.caption(widgets.md_escape(" · ".join(parts)))


def set_key(key: str, entry: dict) -> str:
    """``key`` of a widget whose options come from the chosen set, made unique to that set: streamlit
    keeps a keyed widget's identity when its options change, and the browser then went on showing the
    previous set's labels, so each set gets widgets of its own (fresh labels and choice)."""
    return f"{key}@{entry['name']}"


def pick_layer(data: feature_data.FeatureData, entry: dict) -> tuple[str, int]:
    pairs = feature_data.layers(data)
    if len(pairs) == 1:
        return pairs[0]
    index = st.selectbox("Layer", range(len(pairs)), format_func=lambda i: layer_label(*pairs[i]),
                         key=set_key("features_layer", entry))
    return pairs[index]


def search_features(features: pd.DataFrame, contexts: pd.DataFrame) -> pd.DataFrame | None:
    """The layer's features matching the search box, sorted; None (with a warning) for a bad query."""
    cols = st.columns([3, 2, 2])
    query = cols[0].text_input("Search", key="features_search",
                               placeholder="a token, or feature indices such as 12 or 3, 7",
                               help="By token: features whose top contexts fire on it, or whose top or "
                                    "bottom logit effects name it (whole token, any case).")
    mode = cols[1].radio("Search by", feature_data.SEARCH_MODES, horizontal=True, key="features_search_by")
    sort = cols[2].radio("Sort by", list(SORTS), horizontal=True, key="features_sort")
    try:
        found = feature_data.search(features, contexts, query, mode)
    except ValueError as err:
        st.warning(widgets.md_escape(err))
        return None
    return found.sort_values([SORTS[sort], "feature"], ascending=[False, True], kind="stable")


def feature_table(found: pd.DataFrame) -> pd.DataFrame:
    """The listed columns; token lists joined into text (a table shows text as text)."""
    table = pd.DataFrame({
        "feature": found["feature"].astype(int), "density": found["density"].astype(float),
        "max activation": found["max_activation"].astype(float),
        "mean when active": found["mean_active_activation"].astype(float),
        "raises logits of": [", ".join(str(t) for t in tokens[:5]) for tokens in found["top_tokens"]],
    })
    if (found["match"] != "").any():
        table["match"] = found["match"].to_numpy()
    return table


def pick_feature(found: pd.DataFrame, entry: dict) -> int:
    """A row clicked in the list opens that feature; the selectbox offers the same choice by keyboard."""
    listed = found.head(LIST_LIMIT)
    box, last_click = set_key("features_feature", entry), set_key("features_clicked", entry)
    event = st.dataframe(feature_table(listed), hide_index=True, column_config=LIST_CONFIG,
                         on_select="rerun", selection_mode="single-row", key=set_key("features_list", entry))
    if len(found) > LIST_LIMIT:
        st.caption(f"Listing the first {LIST_LIMIT:,} of {len(found):,}; search to narrow them.")
    options = listed["feature"].astype(int).tolist()
    rows = list(getattr(getattr(event, "selection", None), "rows", []) or [])
    clicked = options[rows[0]] if rows and rows[0] < len(options) else None
    # a new click moves the selectbox; an old selection must not pin it on every rerun
    if clicked is not None and clicked != st.session_state.get(last_click):
        st.session_state[box] = clicked
    st.session_state[last_click] = clicked
    if st.session_state.get(box) not in options:
        st.session_state[box] = options[0]
    by_feature = listed.set_index("feature")
    return st.selectbox("Feature", options, key=box, format_func=lambda f: (
        f"#{f} · density {100 * float(by_feature.at[f, 'density']):.3g}% · "
        f"max {float(by_feature.at[f, 'max_activation']):.4g}"))


def main() -> None:
    st.set_page_config(page_title="Features · Workbench", layout="wide")
    st.title("Features")
    entries = widgets.dictionary_entries()
    if entries is None:
        return
    entries, target = feature_sections.link_target(entries)
    if not entries:
        st.info(f"No dictionaries in the catalog at {widgets.md_escape(widgets.catalog().root)}. Train one with "
                "`wb dict train`, then write its feature data with `wb dict features`.")
        return
    entry = widgets.dictionary_picker(entries, key="features_dict")
    data, _ = widgets.load_features(entry)
    if data is None:
        return
    show_summary(entry, data)
    feature_sections.apply_layer_and_feature(target, entry, data, set_key)
    member, layer = pick_layer(data, entry)
    found = search_features(feature_data.layer_frame(data.features, member, layer),
                            feature_data.layer_frame(data.contexts, member, layer))
    if found is None:
        return
    if found.empty:
        st.info("No feature of this layer matches the search.")
        return
    feature = pick_feature(found, entry)
    feature_sections.keep_link(data.folder, layer, feature)
    label = feature_sections.label_editor(data, entry, member, layer, feature)
    if not feature_panel.feature_panel(entry, layer, feature, member=member, key="features_panel", label=label):
        return
    st.divider()
    row = feature_data.feature_rows(data.features, member, layer, feature).iloc[0]
    feature_sections.activations_box(data, member, layer, feature, float(row["max_activation"]))
    feature_sections.graphs_section(data.folder, layer, feature)


main()
