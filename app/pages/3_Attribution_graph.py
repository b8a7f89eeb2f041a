"""Attribution graph: open a catalogued graph, build one from a model, a dictionary set and a prompt, or
import a circuit-tracer / Neuronpedia graph file, and explore it in the graph viewer
(``components/graph_viewer``): layered (positions across, layers up), hover cards, click a node for its
panel beside the graph and walk its inputs and outputs, pin, group nodes into supernodes, set the node
and edge thresholds: all in the browser. Python does what only Python can: build the graph, read the
replacement and completeness scores at the chosen thresholds, save the view with the graph, put it in
the URL, download the graph JSON with it, and intervene on the pinned features (``graph_interventions``).

1. On a session's first run the URL's query parameters (``graph_data.state_to_query``) pick the graph
   and the view to open it at; otherwise a graph opens at its saved view (``qParams.json``, or a file's
   ``qParams``), else at its own thresholds.
2. The graph is sent once at thresholds 1.0 / 1.0 (the browser's sliders cut it further), pruned on
   its non-zero edges (``workbench.attribution.prune_sparse``) and capped to the draw budget
   (``graph_data.cap_to_budget``), so a 10,000-node graph never reaches the browser whole.
3. The viewer's value (its state, sent a moment after the user's last change) becomes the page's view
   state, and the URL follows it.
"""

import json
import re
import sys
from pathlib import Path

import streamlit as st

# streamlit and AppTest run pages as scripts, so app/ goes on sys.path for `import widgets`
APP_DIR = Path(__file__).resolve().parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))
import feature_data
import graph_cards
import graph_data
import graph_interventions
import graph_sources
import graph_view
import widgets
from components.graph_viewer import graph_viewer

from workbench.attribution.prune_sparse import graph_edges, graph_scores_sparse, prune_graph_sparse

SOURCES = {"Saved graphs": graph_sources.open_saved, "Build from a prompt": graph_sources.build_form,
           "Import a file": graph_sources.import_file}


@st.cache_resource(show_spinner=False, max_entries=4)
def edges_of(key: str, _graph):
    return graph_edges(_graph)


@st.cache_resource(show_spinner=False, max_entries=16)
def pruned_of(key: str, node_threshold: float, edge_threshold: float, _graph):
    return prune_graph_sparse(_graph, node_threshold, edge_threshold, edges=edges_of(key, _graph))


@st.cache_data(show_spinner=False, max_entries=16)
def scores_of(key: str, node_threshold: float, edge_threshold: float, _graph) -> dict:
    edges, pruned = edges_of(key, _graph), pruned_of(key, node_threshold, edge_threshold, _graph)
    full, kept = graph_scores_sparse(_graph, edges=edges), graph_scores_sparse(_graph, pruned.node_mask, edges=edges)
    return {"Replacement": full[0], "Completeness": full[1], "Replacement (pruned)": kept[0],
            "Completeness (pruned)": kept[1]}


def read_url() -> None:
    """Step 1: on a session's first run (a page load: a reload or a followed link) the URL picks the
    source and the graph, before their widgets are drawn. Only then: on later runs the browser may still
    hold the URL of a run before the last, and must not undo a choice made since."""
    if st.session_state.get("graph_url_read"):
        return
    st.session_state["graph_url_read"] = True
    params = st.query_params.to_dict()
    if params.get("graph"):
        st.session_state["graph_source"], st.session_state["graph_url_name"] = "Saved graphs", params["graph"]
    elif params.get("file"):
        st.session_state["graph_source"], st.session_state["graph_import_path"] = "Import a file", params["file"]
    else:
        return
    st.session_state["graph_url_params"] = params


def enter(opened: graph_sources.Opened) -> dict:
    """The opened graph's view state: kept while it stays open; a new URL naming this graph sets it;
    else, on opening, the graph's saved view, else its own thresholds."""
    params = st.session_state.pop("graph_url_params", None)
    state = graph_data.clean_state(opened.state, opened.thresholds)
    source, from_url = graph_data.state_from_query(params or {}, (state["nodeThreshold"], state["edgeThreshold"]))
    if params and source and source == opened.source:
        st.session_state["graph_key"], st.session_state["graph_state"] = opened.key, from_url
    elif st.session_state.get("graph_key") != opened.key:
        st.session_state["graph_key"], st.session_state["graph_state"] = opened.key, state
    return st.session_state["graph_state"]


def follow_viewer(value: dict | None, state: dict) -> dict:
    """Step 3: a new value from the viewer becomes the view state."""
    if value is None or value == st.session_state.get("graph_viewer_seen"):
        return state
    st.session_state["graph_viewer_seen"] = value
    state = graph_data.clean_state(value, (state["nodeThreshold"], state["edgeThreshold"]))
    st.session_state["graph_state"] = state
    return state


def write_url(opened: graph_sources.Opened | None, state: dict | None = None) -> None:
    """The URL names the open graph and its view (nothing when no graph is open, or an upload is)."""
    query = graph_data.state_to_query(opened.source, state) if opened is not None and opened.source else {}
    if st.query_params.to_dict() != query:
        st.query_params.from_dict(query)


def sent_view(opened: graph_sources.Opened):
    """Step 2: the view the browser gets (thresholds 1.0 / 1.0, capped), made once per graph."""
    cached = st.session_state.get("graph_sent")
    if cached and cached[0] == opened.key:
        return cached[1]
    if opened.graph is None:
        view = graph_data.view_from_file(opened.file, 1.0, 1.0)
    else:
        pruned = pruned_of(opened.key, 1.0, 1.0, opened.graph)
        view = graph_data.view_from_graph(opened.graph, pruned, *graph_data.cap_to_budget(opened.graph, pruned))
    st.session_state["graph_sent"] = (opened.key, view)
    return view


def feature_data_of(opened, view):
    """The graph's dictionary set's feature data when a feature is drawn (else None; messages say why
    there is none: no feature data yet, a damaged file)."""
    if not opened.dictionaries or not any(a is not None for a in view.address):
        return None
    return widgets.load_features(opened.dictionaries)[0]


def _stamp(path: Path) -> tuple:
    return (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else (0, 0)


def payload_of(opened, view, data) -> dict:
    """The viewer's graph, made again only for another graph or changed feature data or labels."""
    stamp = None if data is None else (feature_data.signature(data.folder),
                                       _stamp(data.folder / feature_data.FEATURES_DIR / "labels.json"))
    cached = st.session_state.get("graph_payload")
    if cached and cached[0] == (opened.key, stamp):
        return cached[1]
    cards, labels, links = {}, {}, {}
    if data is not None:
        addresses = sorted({a for a in view.address if a is not None})
        labels = graph_cards.labels_of(data)
        cards = graph_cards.feature_cards(data, addresses, labels)
        links = graph_cards.feature_links(data.folder, addresses)
    payload = graph_view.payload(view, opened.key, cards, labels, links)
    st.session_state["graph_payload"] = ((opened.key, stamp), payload)
    return payload


def show_header(opened, view, state: dict) -> None:
    graph = opened.graph
    widgets.show_text("Prompt", graph.prompt if graph is not None else opened.file.metadata.get("prompt", ""))
    if graph is None:
        st.caption(f"An imported file: {len(opened.file.nodes):,} nodes and {len(opened.file.links):,} links, "
                   f"{len(view):,} nodes and {len(view.weight):,} edges sent to the viewer. Replacement and "
                   "completeness scores need the whole graph, which this file does not hold.")
        return
    node_t, edge_t = state["nodeThreshold"], state["edgeThreshold"]
    cols = st.columns(4)
    for col, (label, value) in zip(cols, scores_of(opened.key, node_t, edge_t, graph).items()):
        col.metric(label, f"{value:.3f}")
    pruned = pruned_of(opened.key, node_t, edge_t, graph)
    st.caption(f"{graph.n_nodes:,} nodes ({graph.n_features:,} features), {len(edges_of(opened.key, graph)):,} "
               f"edges; at node threshold {node_t:g} and edge threshold {edge_t:g} the pruned graph (which the "
               f"scores measure) has {pruned.n_nodes:,} nodes and {pruned.n_edges:,} edges; the viewer holds "
               f"{len(view):,} nodes and {len(view.weight):,} edges and cuts them at the same thresholds.")
    show_validation(graph.metadata.get("validation"))
    if graph.metadata.get("approximate"):
        st.warning("Approximate graph: " + widgets.md_escape(graph.metadata.get("approximate_reason", "")))
    for note in view.notes:
        st.warning(note)


def show_validation(record: dict | None) -> None:
    """The graph's validation by intervention (``workbench.interventions.validation``), when it was run."""
    if not isinstance(record, dict):
        return
    if record.get("pearson") is None:
        st.caption("Validation by intervention: " + widgets.md_escape(record.get("note", "not measured")))
        return
    st.caption(f"Validation by intervention: ablating the graph's {int(record.get('n_features', 0))} most influential "
               f"features one at a time, the top-logit change it predicts correlates with the live model's at "
               f"r = {float(record['pearson']):.2f} (rank r = {float(record.get('spearman') or 0):.2f}); the frozen "
               f"replacement model matches the prediction to {float(record.get('frozen_max_deviation') or 0):.1e}.")


def save_and_download(opened, view, state: dict) -> None:
    qparams = graph_data.view_state(view, state["pinnedIds"], state["supernodes"], state["clickedId"],
                                    (state["nodeThreshold"], state["edgeThreshold"]))
    cols = st.columns([1, 1, 3])
    if opened.folder is not None and cols[0].button("Save view with the graph", key="graph_save_view",
                                                    help="Selection, pins, supernodes and thresholds: the graph "
                                                         "opens with them next time (its qParams)."):
        graph_sources.save_view(opened, qparams)
        st.toast("View saved with the graph")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", opened.name).strip(".-") or "graph"

    def document() -> bytes:  # deferred: made only when the button is pressed
        if opened.graph is None:
            doc = graph_data.file_document(opened.file, view, qparams)
        else:
            pruned = pruned_of(opened.key, 1.0, 1.0, opened.graph)
            node_mask, edge_keep, _ = graph_data.cap_to_budget(opened.graph, pruned)
            doc = graph_data.graph_document(opened.graph, pruned, node_mask, edge_keep, qparams, slug,
                                            state["nodeThreshold"])
        return (json.dumps(doc, allow_nan=False, ensure_ascii=False) + "\n").encode()

    cols[1].download_button("Download graph JSON", data=document, file_name=f"{slug}.json", mime="application/json",
                            key="graph_download", help="The graph in circuit-tracer / Neuronpedia's schema, with "
                                                       "the view (pins, supernodes, thresholds) as its qParams.")


def show_graph(opened: graph_sources.Opened) -> None:
    state = enter(opened)
    st.header(f"Graph {widgets.md_escape(opened.name)}")
    messages = st.container()  # filled before the viewer, which must keep its place in the page
    view = sent_view(opened)
    with messages:
        payload = payload_of(opened, view, feature_data_of(opened, view))
    state = follow_viewer(graph_viewer(payload, state, key="graph_viewer"), state)
    write_url(opened, state)
    show_header(opened, view, state)
    pins = [p for p in state["pinnedIds"] if p in view.index_of]
    graph_interventions.section(opened, view, pins)  # ablate / scale / set / swap the pinned features
    save_and_download(opened, view, state)


def main() -> None:
    st.set_page_config(page_title="Attribution graph · Workbench", layout="wide")
    st.title("Attribution graph")
    read_url()
    source = st.radio("Source", list(SOURCES), horizontal=True, key="graph_source")
    opened = SOURCES[source]()
    if opened is None:
        write_url(None)
    else:
        show_graph(opened)


main()
