"""Attribution graph: open a catalogued graph, build one from a model, a dictionary set and a prompt, or
import a circuit-tracer / Neuronpedia graph file; see it layered (positions across, layers up), click a
node (or pick it) for its strongest inputs and outputs and, for a feature, its feature panel; pin nodes
into a subgraph, group them into supernodes, set the node and edge thresholds, read the replacement and
completeness scores, and download the graph JSON with the pins and supernodes. Intervene: ablate, scale,
set or swap the selected features and compare the model with the graph's prediction (``graph_interventions``).

Large graphs are pruned on their non-zero edges (``workbench.attribution.prune_sparse``), and what is
still over the draw budget keeps only its most influential nodes (``graph_data.cap_to_budget``), so a
10,000-node graph never reaches the browser whole. Sources: ``graph_sources``; drawing: ``graph_view``.
"""

import json
import math
import re
import sys
from pathlib import Path

import streamlit as st

# streamlit and AppTest run pages as scripts, so app/ goes on sys.path for `import widgets`
APP_DIR = Path(__file__).resolve().parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))
import graph_data
import graph_interventions
import graph_sources
import graph_view
import widgets

from workbench.attribution.prune_sparse import graph_edges, graph_scores_sparse, prune_graph_sparse

SOURCES = {"Saved graphs": graph_sources.open_saved, "Build from a prompt": graph_sources.build_form,
           "Import a file": graph_sources.import_file}
EDGE_COLUMNS = {"weight": st.column_config.NumberColumn(format="%.4g")}


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


# Streamlit forgets a widget's state on a run that does not draw it (another source picked), so the
# graph's widgets are copied here each run and put back when the graph is drawn again.
KEPT_WIDGETS = ("graph_node_threshold", "graph_edge_threshold", "graph_pins", "graph_node")


def enter(opened: graph_sources.Opened) -> None:
    """Reset the per-graph state (thresholds, pins, supernodes, node) when another graph is opened, and
    put back this graph's widget values when it is drawn again."""
    if st.session_state.get("graph_key") == opened.key:
        for key, value in st.session_state.get("graph_kept", {}).items():
            if key not in st.session_state:
                st.session_state[key] = value
        return
    st.session_state["graph_key"] = opened.key
    st.session_state["graph_node_threshold"], st.session_state["graph_edge_threshold"] = opened.thresholds
    st.session_state["graph_pins"] = [str(p) for p in opened.state.get("pinnedIds", [])]
    st.session_state["graph_supernodes"] = [[str(x) for x in group] for group in opened.state.get("supernodes", [])
                                            if isinstance(group, list) and len(group) > 1]
    st.session_state["graph_node"] = str(opened.state.get("clickedId") or "")
    # a selection left in the figure from the last graph is not a click on this one
    st.session_state["graph_clicked"] = graph_view.clicked_node(st.session_state.get("graph_plot"))


def keep_widgets() -> None:
    st.session_state["graph_kept"] = {key: st.session_state[key] for key in KEPT_WIDGETS if key in st.session_state}


def thresholds() -> tuple[float, float]:
    cols = st.columns(2)
    node = cols[0].slider("Node threshold", 0.0, 1.0, step=0.01, key="graph_node_threshold",
                          help="Keep the most influential nodes that together hold this share of the influence.")
    edge = cols[1].slider("Edge threshold", 0.0, 1.0, step=0.005, key="graph_edge_threshold",
                          help="Keep the edges that together hold this share of the influence.")
    return float(node), float(edge)


def graph_view_of(opened, node_t: float, edge_t: float):
    """(view, pruned, node mask, edge mask) of the opened graph at these thresholds."""
    if opened.graph is None:
        return graph_data.view_from_file(opened.file, node_t, edge_t), None, None, None
    pruned = pruned_of(opened.key, node_t, edge_t, opened.graph)
    node_mask, edge_keep, notes = graph_data.cap_to_budget(opened.graph, pruned)
    return graph_data.view_from_graph(opened.graph, pruned, node_mask, edge_keep, notes), pruned, node_mask, edge_keep


def show_header(opened, view, pruned, node_t: float, edge_t: float) -> None:
    graph = opened.graph
    widgets.show_text("Prompt", graph.prompt if graph is not None else opened.file.metadata.get("prompt", ""))
    if graph is None:
        st.caption(f"An imported file: {len(opened.file.nodes):,} nodes and {len(opened.file.links):,} links, "
                   f"{len(view):,} nodes and {len(view.weight):,} edges drawn. Replacement and completeness "
                   "scores need the whole graph, which this file does not hold.")
        return
    cols = st.columns(4)
    for col, (label, value) in zip(cols, scores_of(opened.key, node_t, edge_t, graph).items()):
        col.metric(label, f"{value:.3f}")
    st.caption(f"{graph.n_nodes:,} nodes ({graph.n_features:,} features), {len(edges_of(opened.key, graph)):,} "
               f"edges; pruned to {pruned.n_nodes:,} nodes and {pruned.n_edges:,} edges; drawn: {len(view):,} "
               f"nodes and {len(view.weight):,} edges.")
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


def default_node(view) -> str:
    logits = [i for i, kind in enumerate(view.kinds) if kind == "logit"]
    return view.ids[logits[0] if logits else 0]


def pick_node(view) -> int:
    """The node clicked in the figure (read from its state before it is drawn again) or picked in the
    selectbox, which offers the same choice by keyboard; draws the figure."""
    clicked = graph_view.clicked_node(st.session_state.get("graph_plot"))
    if clicked in view.index_of and clicked != st.session_state.get("graph_clicked"):
        st.session_state["graph_node"] = clicked  # a new click moves the selectbox; an old one must not pin it
    st.session_state["graph_clicked"] = clicked
    if st.session_state.get("graph_node") not in view.index_of:
        st.session_state["graph_node"] = default_node(view)
    index = view.index_of
    selected = index[st.session_state["graph_node"]]
    pinned = [index[p] for p in st.session_state.get("graph_pins", []) if p in index]
    st.plotly_chart(graph_view.graph_figure(view, selected, pinned), on_select="rerun", selection_mode="points",
                    key="graph_plot")
    st.caption("Click a node, or pick it below. Edges: red excites, blue inhibits; width and opacity show "
               "|weight| relative to the strongest drawn edge.")
    node = st.selectbox("Node", view.ids, key="graph_node", format_func=lambda i: view.labels[index[i]])
    return index[node]


def edge_rows(opened, view, pruned, node: int, incoming: bool) -> list[tuple[str, str, float, bool]]:
    if opened.graph is None:
        return [(view.labels[o], view.kinds[o], w, True) for o, w in graph_data.view_edges(view, node, incoming)]
    graph, drawn = opened.graph, set(view.graph_index.tolist())
    found = graph_data.strongest(graph, pruned.edges, int(view.graph_index[node]), incoming)
    return [(graph.node_label(o), graph.node_kind(o), w, o in drawn) for o, w in found]


def show_feature(opened, view, node: int) -> None:
    layer, feature = view.address[node]
    st.markdown("**Feature**")
    if opened.dictionaries:
        try:
            from widgets import feature_panel
        except ImportError:
            feature_panel = None
        if feature_panel is not None:
            feature_panel(opened.dictionaries, layer, feature, key="graph_feature")
            return
    st.text(f"Feature {feature} of layer {layer}, activation {view.value[node]:.4g}")
    st.caption("This graph names no dictionary set, so the feature's contexts cannot be shown.")


def node_panel(opened, view, pruned, node: int) -> None:
    kind = view.kinds[node]
    st.subheader(f"{kind.capitalize()} node")
    st.text(f"{view.labels[node]}   (id {view.ids[node]})")
    cols = st.columns(2)
    value = view.value[node]
    cols[0].metric("Activation" if kind == "feature" else "Value", "-" if math.isnan(value) else f"{value:.4g}")
    infl = view.influence[node]
    cols[1].metric("Cumulative influence", "-" if math.isnan(infl) else f"{infl:.3g}")
    pinned = view.ids[node] in st.session_state.get("graph_pins", [])
    st.button("Unpin this node" if pinned else "Pin this node", key="graph_pin_toggle", on_click=toggle_pin,
              args=(view.ids[node],))
    scope = "the whole graph" if opened.graph is not None else "the drawn graph"
    for col, title, incoming in zip(st.columns(2), ("Strongest inputs", "Strongest outputs"), (True, False)):
        col.markdown(f"**{title}** (top 10 of {scope})")
        rows = edge_rows(opened, view, pruned, node, incoming)
        if rows:
            col.dataframe(graph_view.edge_table(rows), hide_index=True, column_config=EDGE_COLUMNS)
        else:
            col.caption("none")
    if kind == "feature" and view.address[node] is not None:
        show_feature(opened, view, node)


def toggle_pin(node_id: str) -> None:
    pins = list(st.session_state.get("graph_pins", []))
    st.session_state["graph_pins"] = [p for p in pins if p != node_id] if node_id in pins else pins + [node_id]


def add_supernode(ids: list[str]) -> None:
    """on_click of the Add button (callbacks may reset the inputs they read)."""
    name = st.session_state.get("graph_supernode_name", "").strip()
    members = [m for m in st.session_state.get("graph_supernode_members", []) if m in ids]
    if not name or not members:
        st.session_state["graph_supernode_problem"] = "Name the supernode and pick at least one node."
        return
    st.session_state["graph_supernodes"] = st.session_state.get("graph_supernodes", []) + [[name, *members]]
    st.session_state["graph_supernode_name"], st.session_state["graph_supernode_members"] = "", []


def remove_supernode(i: int) -> None:
    groups = list(st.session_state.get("graph_supernodes", []))
    if 0 <= i < len(groups):
        del groups[i]
    st.session_state["graph_supernodes"] = groups


def supernode_editor(view, pins: list[str]) -> list[list[str]]:
    """Name a group of pinned nodes and add it as a supernode; the supernodes so far, each removable.
    (Members come from the pins, as in circuit-tracer's viewer: a second list of every drawn node would
    double what the browser lays out for a large graph.)"""
    index = view.index_of
    st.session_state["graph_supernode_members"] = [m for m in st.session_state.get("graph_supernode_members", [])
                                                   if m in pins]
    cols = st.columns([2, 4, 1])
    cols[0].text_input("Supernode name", key="graph_supernode_name")
    cols[1].multiselect("Its nodes (from the pinned)", pins, key="graph_supernode_members",
                        format_func=lambda i: view.labels[index[i]])
    cols[2].button("Add supernode", key="graph_supernode_add", on_click=add_supernode, args=(pins,))
    problem = st.session_state.pop("graph_supernode_problem", None)
    if problem:
        st.warning(problem)
    groups = st.session_state.get("graph_supernodes", [])
    for i, (name, *members) in enumerate(groups):
        row = st.columns([6, 1])
        shown = [view.labels[index[m]] if m in index else f"{m} (not drawn)" for m in members]
        row[0].text(f"{name}: " + "; ".join(shown))
        row[1].button("Remove", key=f"graph_supernode_remove_{i}", on_click=remove_supernode, args=(i,))
    return groups


def pins_and_supernodes(view) -> tuple[list[str], list[list[str]]]:
    """Pinned nodes, supernodes, and the pinned subgraph (supernodes merged) drawn on its own."""
    st.subheader("Pinned subgraph")
    index = view.index_of
    st.session_state["graph_pins"] = [p for p in st.session_state.get("graph_pins", []) if p in index]
    pins = st.multiselect("Pinned nodes", view.ids, key="graph_pins", format_func=lambda i: view.labels[index[i]])
    groups = supernode_editor(view, pins)
    members = {m for _, *ms in groups for m in ms if m in index}
    keep = sorted({index[p] for p in pins} | {index[m] for m in members})
    if not keep:
        st.caption("Pin nodes (or group them into supernodes) to see them here as a subgraph.")
        return pins, groups
    sub = graph_data.merge_supernodes(graph_data.subview(view, keep), groups)
    st.plotly_chart(graph_view.graph_figure(sub, height=420), key="graph_pinned_plot")
    return pins, groups


def download(opened, view, pruned, node_mask, edge_keep, state: dict, node_t: float) -> None:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", opened.name).strip(".-") or "graph"

    def document() -> bytes:  # deferred: made only when the button is pressed
        if opened.graph is None:
            doc = graph_data.file_document(opened.file, view, state)
        else:
            doc = graph_data.graph_document(opened.graph, pruned, node_mask, edge_keep, state, slug, node_t)
        return (json.dumps(doc, allow_nan=False, ensure_ascii=False) + "\n").encode()

    st.download_button("Download graph JSON", data=document, file_name=f"{slug}.json", mime="application/json",
                       key="graph_download", help="The drawn graph in circuit-tracer / Neuronpedia's schema, with "
                                                  "the pins and supernodes as its qParams.")


def show_graph(opened: graph_sources.Opened) -> None:
    enter(opened)
    st.header(f"Graph {widgets.md_escape(opened.name)}")
    node_t, edge_t = thresholds()
    view, pruned, node_mask, edge_keep = graph_view_of(opened, node_t, edge_t)
    show_header(opened, view, pruned, node_t, edge_t)
    if not len(view):
        keep_widgets()
        st.info("Nothing left to draw at these thresholds; raise them.")
        return
    node = pick_node(view)
    node_panel(opened, view, pruned, node)
    pins, groups = pins_and_supernodes(view)
    graph_interventions.section(opened, view, pins)  # ablate / scale / set / swap the selected features
    keep_widgets()
    state = graph_data.view_state(view, pins, groups, view.ids[node])
    download(opened, view, pruned, node_mask, edge_keep, state, node_t)


def main() -> None:
    st.set_page_config(page_title="Attribution graph · Workbench", layout="wide")
    st.title("Attribution graph")
    source = st.radio("Source", list(SOURCES), horizontal=True, key="graph_source")
    opened = SOURCES[source]()
    if opened is not None:
        show_graph(opened)


main()
