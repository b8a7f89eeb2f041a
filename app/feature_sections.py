"""The Features page's sections beyond the feature panel: opening the entry a link names, the feature's
label (shown and edited), "activations on my text" and "graphs containing this feature". Streamlit glue
only: the work is in :mod:`links`, :mod:`workbench.dictionaries.labels`, :mod:`feature_activations`,
:mod:`feature_graphs` and :mod:`prompt_help`.

A link (``Features?root=..&set=..&layer=..&feature=..``, :func:`links.features_link`) is applied once:
the page's boxes are moved to the entry it names, then the page writes its own choice back into the
URL, so a reload or a copied address opens what is on screen and a later pick is not undone.
"""

from __future__ import annotations

from pathlib import Path

import feature_activations
import feature_data
import feature_graphs
import links
import pandas as pd
import prompt_help
import streamlit as st
import widgets

from workbench.dictionaries import labels as feature_labels

APPLIED = "features_link_applied"  # the query parameters last applied or written back
EXTRA = "features_linked_sets"  # set folders opened by a link that the catalog does not list


def _params() -> dict[str, str]:
    return {k: str(st.query_params.get(k)) for k in links.PARAMS if st.query_params.get(k) is not None}


def _entry_folder(entry: dict) -> Path | None:
    try:
        return feature_data.safe_folder(entry["path"])
    except PermissionError:
        return None


def link_target(entries: list[dict]) -> tuple[list[dict], tuple[Path, int, int] | None]:
    """(entries, the linked (set folder, layer, feature) when it is still to be applied). The linked set
    is picked in the dictionary box; a set the catalog does not list is added after its entries, and kept
    there for this session (so the box's choices keep their places)."""
    params, extra = _params(), st.session_state.setdefault(EXTRA, [])
    fresh = bool(params) and params != st.session_state.get(APPLIED)
    target = None
    if fresh:
        st.session_state[APPLIED] = params
        try:
            target = links.features_target(params)
        except (ValueError, PermissionError) as err:
            st.warning(f"The link could not be opened: {widgets.md_escape(err)}")
    known = {_entry_folder(e) for e in entries}
    if target is not None and target[0] not in known and target[0] not in extra:
        extra.append(target[0])
    entries = entries + [{"name": feature_data.display_path(f), "path": f, "meta": {}} for f in extra if f not in known]
    if target is not None:
        st.session_state["features_dict"] = next(i for i, e in enumerate(entries) if _entry_folder(e) == target[0])
        st.session_state["features_search"] = ""  # a search must not hide the linked feature
    return entries, target


def apply_layer_and_feature(target: tuple[Path, int, int] | None, entry: dict, data: feature_data.FeatureData,
                            set_key) -> None:
    """Moves the layer and feature boxes (keys from ``set_key``) to the linked ones, before they are drawn."""
    if target is None:
        return
    pairs = feature_data.layers(data)
    found = [i for i, (_, layer) in enumerate(pairs) if layer == target[1]]
    if not found:
        st.warning(f"The link names layer {target[1]}; this set has "
                   f"{', '.join(str(layer) for _, layer in pairs)}.")
        return
    st.session_state[set_key("features_layer", entry)] = found[0]
    st.session_state[set_key("features_feature", entry)] = target[2]


def keep_link(folder: Path, layer: int, feature: int) -> None:
    """Writes the open entry into the URL (module docstring)."""
    try:
        params = links.features_params(folder, layer, feature)
    except PermissionError:
        return
    st.session_state[APPLIED] = params
    if _params() != params:
        st.query_params.from_dict(params)


# ---- label ----------------------------------------------------------------------------------------------

def current_label(data: feature_data.FeatureData, member: str, layer: int, feature: int) -> tuple[str, bool]:
    """(label, whether it is the user's) of one feature: the saved one, else the automatic one."""
    try:
        saved = feature_labels.user_labels(data.folder).get((int(layer), int(feature)))
    except ValueError as err:
        st.warning(widgets.md_escape(err))
        saved = None
    if saved:
        return saved, True
    rows = feature_data.feature_rows(data.features, member, int(layer), int(feature))
    contexts = feature_data.feature_rows(data.contexts, member, int(layer), int(feature))
    if rows.empty:
        return "", False
    return feature_labels.automatic_label(rows.iloc[0], feature_labels.top_context_tokens(contexts)), False


def label_editor(data: feature_data.FeatureData, entry: dict, member: str, layer: int, feature: int) -> str:
    """A label box and a Save button; returns the label to show (after any save)."""
    label, mine = current_label(data, member, layer, feature)
    key = f"feature_label@{entry['name']}#{int(layer)}_{int(feature)}"
    automatic = label if not mine else ""
    cols = st.columns([5, 1], vertical_alignment="bottom")
    text = cols[0].text_input("Label", value=label if mine else "", key=key, max_chars=feature_labels.MAX_LABEL_CHARS,
                              placeholder=automatic or "automatic label", help="Your name for this feature, saved "
                              "with the set's feature data (features/labels.json). Empty: the automatic label "
                              "(the tokens it reads → the tokens it writes).")
    if cols[1].button("Save label", key=f"{key}:save"):
        try:
            feature_labels.save_label(data.folder, int(layer), int(feature), text)
        except (FileNotFoundError, KeyError, ValueError, PermissionError, TimeoutError, OSError) as err:
            st.error(f"The label was not saved: {widgets.md_escape(err)}")
        else:
            st.success("Label saved." if text.strip() else "Label removed: the automatic label shows again.")
            label, mine = current_label(data, member, layer, feature)
    return label


# ---- activations on my text ----------------------------------------------------------------------------

@st.cache_resource(show_spinner=False, max_entries=2)
def _model_and_set(model_folder: str, set_folder: str, stamp: tuple):
    from workbench.dictionaries.dictionary_set import load_set_for_model
    from workbench.store.model_files import load_model_folder

    bundle = load_model_folder(model_folder)
    dictionaries, _ = load_set_for_model(bundle, set_folder)
    return bundle, dictionaries


def _stamp(*paths: Path) -> tuple:
    return tuple((str(p), p.stat().st_mtime_ns) for p in paths if p.exists())


def activations_box(data: feature_data.FeatureData, member: str, layer: int, feature: int, scale: float) -> None:
    """Runs the model and the set on a typed prompt; the feature's activation per token, shaded."""
    st.markdown("**Activations on my text**")
    try:
        model_folder = feature_activations.model_folder_of(data.folder)
        bundle, dictionaries = _model_and_set(str(model_folder), str(data.folder), _stamp(
            model_folder / "model.safetensors", data.folder / "set.json", data.folder / "config.json"))
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, PermissionError) as err:
        st.caption(f"Not available for this set: {widgets.md_escape(err)}")
        return
    examples = prompt_help.example_prompts(bundle.card, bundle.tokenizer.vocab)
    prompt = st.text_input("Text (tokens of the model's vocabulary, separated by spaces)", key="features_my_text",
                           placeholder=examples[0][1] if examples else "tokens separated by spaces")
    if examples:
        st.caption("Examples from the model's task: " + " · ".join(
            f"{widgets.md_escape(label)}: `{prompt_text}`" for label, prompt_text in examples))
    if not prompt.strip():
        return
    try:
        tokens, values = feature_activations.token_activations(bundle, dictionaries, member, layer, feature, prompt)
    except (ValueError, KeyError) as err:
        st.warning(widgets.md_escape(err))
        return
    st.html(widgets.token_highlighter(tokens, values, scale if scale > 0 else None))
    top = max(values, default=0.0)
    st.caption(f"Highest here {top:.4g}; the feature's recorded maximum {scale:.4g} (full colour).")


# ---- graphs containing this feature ----------------------------------------------------------------------

def graphs_section(folder: Path, layer: int, feature: int) -> None:
    st.markdown("**Graphs containing this feature**")
    try:
        entries = sorted(widgets.catalog().list("graph"), key=lambda e: str(e.get("created", "")), reverse=True)
    except Exception as err:  # noqa: BLE001 - a locked or damaged catalog must not break the page
        st.warning(f"The catalog could not be read: {widgets.md_escape(err)}")
        return
    hits, problems = feature_graphs.graphs_with_feature(entries, folder, layer, feature)
    for problem in problems:
        st.warning(widgets.md_escape(problem))
    if not hits:
        st.caption("No catalogued graph built with this set draws this feature.")
        return
    st.dataframe(pd.DataFrame({
        "graph": [h.name for h in hits], "prompt": [h.prompt for h in hits],
        "at positions": [", ".join(f"{p} ({t})" for p, t in zip(h.positions, h.tokens)) for h in hits],
        "open": [links.graph_link(h.name) for h in hits],
    }), hide_index=True, key="features_graphs",
        column_config={"open": st.column_config.LinkColumn("open", display_text="open graph")})


__all__ = ["activations_box", "apply_layer_and_feature", "graphs_section", "keep_link", "label_editor",
           "link_target"]
