"""The Attribution graph page's "Intervene" section: change the open graph's features in the model and
compare what happens with what the graph predicts (``workbench.interventions.features``). The section
stays closed until its toggle is turned on, and then runs these steps:

1. Find what the graph was traced with: its metadata names the model (``model``, the card's name) and
   the dictionary set folder (``dictionaries``). The set is read only inside the artifacts root or the
   zoo; the model is the set's own (``<model>/dictionaries/<set>``), else the zoo's or the catalog's
   model of that name, and must carry that name. Model and set are cached (``st.cache_resource``).
2. Edits: the selected feature nodes (the pins preselected), each at its own position, ablated, scaled
   by a factor or set to a value; or swapped: ablated, and features active on a donor prompt set to
   their donor activations (times a strength) at a chosen position.
3. Run (cached on the edits): the top next-token probabilities before and after (in the chosen mode:
   ``frozen``, the graph's own linear model, or ``live``, attention and gates responding); the change of
   the graph's logit targets predicted by the graph (``graph_prediction``) beside the frozen and the live
   passes; a short greedy continuation without and with the (live) intervention.
"""

from __future__ import annotations

import threading
from pathlib import Path

import feature_data
import graph_sources
import pandas as pd
import streamlit as st
import torch
import widgets

from workbench.store.catalog import models_root

OPS = ("ablate", "scale", "set", "swap")
MODES = ("frozen", "live")
TOP_K = 8


# ---- step 1: model and set ---------------------------------------------------------------------------

def _model_candidates(set_folder: Path, model_name: str) -> list[Path]:
    found = [set_folder.parent.parent] if set_folder.parent.name == "dictionaries" else []
    found.append(models_root() / model_name)
    try:
        rows = widgets.catalog().list("model")
    except Exception:  # noqa: BLE001 - the zoo's models still work without the catalog
        rows = []
    return found + [Path(e["path"]) for e in rows if e["name"] == model_name]


def _find_model(set_folder: Path, model_name: str) -> Path | None:
    for candidate in _model_candidates(set_folder, model_name):
        try:
            folder = feature_data.safe_folder(candidate)
        except PermissionError:
            continue
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    return None


@st.cache_resource(show_spinner=False, max_entries=2)
def _replacement_set(model_folder: str, set_folder: str, stamp: tuple, _bundle) -> list:
    from workbench.attribution.jobs import load_replacement_set

    return load_replacement_set(_bundle, set_folder)[0]


def locate(graph) -> tuple | None:
    """Step 1: ``(bundle, dictionaries, model folder, set folder)`` of the graph, or None with a note."""
    model_name, set_path = graph.metadata.get("model"), graph.metadata.get("dictionaries")
    if not model_name or not set_path:
        st.caption("This graph does not name the model and dictionary set it was traced with: no interventions.")
        return None
    try:
        set_folder = feature_data.safe_folder(set_path)
    except PermissionError as err:
        st.info(f"Interventions need the graph's dictionary set: {widgets.md_escape(err)}")
        return None
    model_folder = _find_model(set_folder, str(model_name))
    if model_folder is None or not (set_folder / "set.json").is_file():
        st.info(f"Interventions need model {widgets.md_escape(model_name)} and its set "
                f"{widgets.md_escape(set_path)}; the app cannot find them in the zoo or the artifacts root.")
        return None
    try:
        bundle = graph_sources.load_bundle(str(model_folder), graph_sources._stamp(model_folder / "model.safetensors"))
        if bundle.name != model_name:
            raise ValueError(f"the model at {model_folder} is {bundle.name!r}, not {model_name!r}")
        set_stamp = graph_sources._stamp(set_folder / "set.json")
        dictionaries = _replacement_set(str(model_folder), str(set_folder), set_stamp, bundle)
    except Exception as err:  # noqa: BLE001 - missing files, weights that do not fit, a set of another model
        st.warning(f"Model or set could not be loaded for interventions: {widgets.md_escape(err)}")
        return None
    return bundle, dictionaries, model_folder, set_folder


# ---- step 2: edits -----------------------------------------------------------------------------------

def _feature_nodes(graph, view) -> dict[str, tuple[int, int, int]]:
    """Drawn feature node id -> (layer, position, feature index)."""
    out = {}
    for i, kind in enumerate(view.kinds):
        if kind == "feature" and view.graph_index is not None:
            layer, pos, index = (int(v) for v in graph.active_features[int(view.graph_index[i])])
            out[view.ids[i]] = (layer, pos, index)
    return out


def _pick_features(view, nodes: dict, pins: list[str]) -> list[str]:
    """The multiselect of drawn feature nodes; a feature pinned since the last run joins the selection."""
    index = view.index_of
    seen = set(st.session_state.get("graph_iv_pins_seen", []))
    st.session_state["graph_iv_pins_seen"] = list(pins)
    picked = [n for n in st.session_state.get("graph_iv_features", []) if n in nodes]
    st.session_state["graph_iv_features"] = picked + [p for p in pins if p in nodes and p not in seen | set(picked)]
    return st.multiselect("Features to change (pinned features come preselected)", list(nodes), key="graph_iv_features",
                          format_func=lambda i: view.labels[index[i]])


@st.cache_resource(show_spinner=False)
def model_lock() -> threading.Lock:
    """One per app process: hooks are added to the cached model itself while a pass runs, so two
    sessions must not run passes on it at once."""
    return threading.Lock()


@st.cache_resource(show_spinner=False, max_entries=2)
def _donor_splice(key: str, tokens: tuple[int, ...], _bundle, _dictionaries):
    """The donor prompt's clean pass with the set spliced in: one pass per donor, whose activations both
    list the features to add and give their values (``swap_edits``)."""
    from workbench.interventions.features import FeatureSplice

    with model_lock():
        return FeatureSplice(_bundle.model, _dictionaries, torch.tensor([tokens]))


@st.cache_data(show_spinner=False, max_entries=8)
def _donor_features(key: str, tokens: tuple[int, ...], position: int, _bundle, _dictionaries) -> list[tuple]:
    """``(layer, position, index, activation)`` of the features active on the donor at ``position``,
    strongest first."""
    splice = _donor_splice(key, tokens, _bundle, _dictionaries)
    found = []
    for layer in splice.read_layers:
        acts = splice.activations(layer)[0, position]
        found += [(layer, position, int(i), float(acts[i])) for i in acts.nonzero().flatten()]
    return sorted(found, key=lambda row: -abs(row[3]))[:40]


def _swap_rows(located, graph, chosen: list[tuple]) -> list[tuple] | None:
    """Step 2, swap: the donor prompt and features to add; edit rows, or None (a message says why)."""
    from workbench.attribution.jobs import encode_prompt
    from workbench.interventions.features import swap_edits

    bundle, dictionaries, model_folder, set_folder = located
    donor_text = st.text_input("Donor prompt", value=graph.prompt, key="graph_iv_donor")
    try:
        donor = encode_prompt(bundle, donor_text)
    except ValueError as err:
        st.error(widgets.md_escape(err))
        return None
    cols = st.columns(3)
    n_donor, n_pos = donor.shape[1], graph.n_pos
    d_pos = int(cols[0].number_input("Donor position", 0, n_donor - 1, n_donor - 1, key="graph_iv_donor_pos"))
    at_pos = int(cols[1].number_input("Set at position", 0, n_pos - 1, min(d_pos, n_pos - 1), key="graph_iv_at_pos"))
    strength = float(cols[2].number_input("Strength", value=1.0, key="graph_iv_strength"))
    key, tokens = f"{model_folder}|{set_folder}", tuple(donor[0].tolist())
    active = _donor_features(key, tokens, d_pos, bundle, dictionaries)
    labels = {f"L{l} F{i} @{p}": (l, p, i) for l, p, i, _ in active}
    acts = {f"L{l} F{i} @{p}": a for l, p, i, a in active}
    add = st.multiselect("Features to add (active on the donor there, strongest first)", list(labels),
                         key="graph_iv_add", format_func=lambda k: f"{k}  ({acts[k]:.3g})")
    donor_splice = _donor_splice(key, tokens, bundle, dictionaries) if add else None  # only added features read it
    edits = swap_edits([(l, p, i) for l, p, i in chosen], [labels[k] for k in add], donor_splice, strength, at_pos)
    return [(e.layer, e.index, e.op, e.value, e.positions) for e in edits]


def edit_rows(located, graph, view, pins: list[str]) -> tuple[list[tuple], str] | None:
    """Step 2: ``([(layer, index, op, value, positions)], mode)``; None until there is something to do."""
    nodes = _feature_nodes(graph, view)
    if not nodes:
        st.caption("No feature nodes are drawn at these thresholds: lower them to intervene.")
        return None
    picked = _pick_features(view, nodes, pins)
    cols = st.columns([3, 2, 2])
    op = cols[0].radio("Change", OPS, horizontal=True, key="graph_iv_op")
    mode = cols[1].radio("Mode", MODES, horizontal=True, key="graph_iv_mode",
                         help="frozen: the graph's linear model (attention, gates and norms held); live: the "
                              "model with the transcoders spliced in and their errors held")
    value = 0.0
    if op in ("scale", "set"):
        value = float(cols[2].number_input("Factor" if op == "scale" else "Value", value=2.0 if op == "scale" else 0.0,
                                           key=f"graph_iv_{op}_value"))
    chosen = [nodes[n] for n in picked]
    if not chosen:
        st.caption("Pick feature nodes (or pin them above) to intervene on.")
        return None
    if op == "swap":
        rows = _swap_rows(located, graph, chosen)
        return None if rows is None else (rows, mode)
    return [(layer, index, op, value, (pos,)) for layer, pos, index in chosen], mode


# ---- step 3: results ---------------------------------------------------------------------------------

def _top_table(probs: torch.Tensor, base: torch.Tensor | None, vocab: list[str]) -> pd.DataFrame:
    top = probs.topk(min(TOP_K, len(probs)))
    table = pd.DataFrame({"token": [str(vocab[i]) for i in top.indices.tolist()],
                          "probability": top.values.double().numpy()})
    if base is not None:
        table["change"] = (top.values - base[top.indices]).double().numpy()
    return table


def _prediction_table(graph, splice, edits, passes: dict) -> tuple[pd.DataFrame | None, str]:
    from workbench.interventions.features import graph_prediction, logit_targets

    base = logit_targets(graph, splice.clean_logits)[0]
    table = pd.DataFrame({"logit target": [str(label) for label in graph.logit_labels]})
    note = ""
    try:
        table["graph prediction"] = graph_prediction(graph, edits)[1].numpy()
    except ValueError as err:
        note = str(err)
    for name, logits in passes.items():
        table[f"{name} model"] = (logit_targets(graph, logits)[0] - base).numpy()
    return table, note


@st.cache_data(show_spinner=False, max_entries=16)
def run_intervention(key: str, rows: tuple, mode: str, n_new: int, _bundle, _dictionaries, _graph) -> dict:
    """Step 3 for edit ``rows`` on the graph's prompt (cached on the graph's key and the edits)."""
    from workbench.interventions.features import FeatureEdit, FeatureSplice, generate_with_features
    from workbench.interventions.generate import generate

    edits = [FeatureEdit(layer, index, op, value, positions) for layer, index, op, value, positions in rows]
    tokens, model, vocab = _graph.input_tokens[None], _bundle.model, _bundle.tokenizer.vocab
    splice = FeatureSplice(model, _dictionaries, tokens)
    passes = {m: splice.run(edits, m) for m in MODES}
    base = torch.softmax(splice.clean_logits[0, -1].double(), -1)
    after = torch.softmax(passes[mode][0, -1].double(), -1)
    prediction, note = _prediction_table(_graph, splice, edits, passes)
    out = {"original": _top_table(base, None, vocab), "intervened": _top_table(after, base, vocab),
           "prediction": prediction, "note": note}
    if n_new == 0:
        out["continuations"] = None
        return out
    try:
        plain = generate(model, tokens, n_new)[0, tokens.shape[1]:]
        changed = generate_with_features(model, _dictionaries, tokens, edits, n_new)[0, tokens.shape[1]:]
        out["continuations"] = (_bundle.tokenizer.decode(plain.tolist()), _bundle.tokenizer.decode(changed.tolist()))
    except ValueError as err:  # e.g. no room left in the model's context
        out["continuations"] = None
        out["note"] = (note + "\n" if note else "") + f"No continuation: {err}"
    return out


def show_results(result: dict, mode: str) -> None:
    cols = st.columns(2)
    cols[0].markdown("**Next token: original**")
    cols[0].dataframe(result["original"], hide_index=True, key="graph_iv_original")
    cols[1].markdown(f"**Next token: with the intervention ({mode})**")
    cols[1].dataframe(result["intervened"], hide_index=True, key="graph_iv_intervened")
    if result["continuations"] is not None:
        plain, changed = result["continuations"]
        st.text(f"without the intervention: … {plain}")
        st.text(f"with the intervention (live): … {changed}")
    st.markdown("**Change of the graph's logit targets** (demeaned logits): predicted by the graph, and "
                "measured in the frozen and the live model")
    st.dataframe(result["prediction"], hide_index=True, key="graph_iv_prediction",
                 column_config={c: st.column_config.NumberColumn(format="%.5f")
                                for c in result["prediction"].columns if c != "logit target"})
    if result["note"]:
        st.info(widgets.md_escape(result["note"]))


def section(opened, view, pins: list[str]) -> None:
    """The Intervene section of the open graph (module docstring)."""
    st.subheader("Intervene")
    graph = opened.graph
    if graph is None:
        st.caption("An imported file without workbench fields: there is no model to intervene on.")
        return
    # Off until asked for: every click on the figure reruns the page, and a closed section loads no model
    # or dictionaries and draws no widgets. Pins made meanwhile still come preselected when it opens.
    if not st.toggle("Intervene on this graph's features", key="graph_iv_open",
                     help="Ablate, scale, set or swap features and compare the model with the graph's prediction"):
        return
    located = locate(graph)
    if located is None:
        return
    request = edit_rows(located, graph, view, pins)
    if request is None:
        return
    rows, mode = request
    n_ctx = getattr(located[0].model.cfg, "n_ctx", None)
    room = 16 if n_ctx is None else min(16, n_ctx - graph.n_pos)  # what the model's context leaves
    n_new = int(st.number_input("Tokens to generate", 0, max(room, 0), min(4, max(room, 0)), key="graph_iv_tokens",
                                help="Greedy; the model's context leaves room for at most this many."))
    current = (opened.key, tuple(rows), mode, n_new)
    if st.button("Run intervention", key="graph_iv_run", type="primary"):
        st.session_state["graph_iv_request"] = current
    if st.session_state.get("graph_iv_request") != current:
        st.caption("Press Run intervention to see the new top logits, a continuation and the graph's prediction.")
        return
    bundle, dictionaries, model_folder, set_folder = located
    key = f"{opened.key}|{model_folder}|{graph_sources._stamp(set_folder / 'set.json')}"
    try:
        with st.spinner("Running the intervention…"), model_lock():
            result = run_intervention(key, tuple(rows), mode, n_new, bundle, dictionaries, graph)
    except (ValueError, KeyError, IndexError, RuntimeError) as err:
        st.error(widgets.md_escape(err))
        return
    show_results(result, mode)
