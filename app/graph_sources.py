"""Where the Attribution graph page gets its graph: a catalogued graph, one built here from a model, a
dictionary set and a prompt, or an imported graph file (uploaded, or a path under the artifacts root).
Each returns an :class:`Opened` (or None, with a message on screen saying why). A catalogued graph's
view (selection, pins, supernodes, thresholds) is saved beside it as ``qParams.json`` (:func:`save_view`)
and opens with it; a URL naming the graph (``?graph=<name>``) or a typed file (``?file=<path>``) picks it.

Every path read is checked: catalogued graphs, models and dictionary sets only inside the artifacts
root or the zoo (:func:`feature_data.safe_folder`), typed import paths only inside the artifacts root
(:func:`workbench.store.catalog.inside_root`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import feature_data
import labels
import prompt_help
import streamlit as st
import widgets

from workbench.attribution.graph import Graph
from workbench.attribution.graph_file import GraphFile, GraphFileError
from workbench.store.atomic import atomic_write_json, read_json
from workbench.store.catalog import artifacts_root, inside_root, models_root

DEFAULT_THRESHOLDS = (0.8, 0.98)
VIEW_FILE = "qParams.json"  # a catalogued graph's saved view, beside graph.json


@dataclass
class Opened:
    """A graph ready to draw: our Graph, or a file's nodes and links when it has no workbench fields."""

    key: str  # identifies the graph for caches and per-graph page state
    name: str
    graph: Graph | None = None
    file: GraphFile | None = None
    dictionaries: str | None = None  # the set folder the graph was traced with (for feature panels)
    state: dict = field(default_factory=dict)  # qParams read from a file: pins, supernodes
    thresholds: tuple[float, float] = DEFAULT_THRESHOLDS
    folder: Path | None = None  # a catalogued graph's folder, where its view is saved
    source: dict = field(default_factory=dict)  # how a URL names it: {"graph": name} or {"file": path}


def _stamp(path: Path) -> tuple:
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


@st.cache_resource(show_spinner=False, max_entries=4)
def _load_graph(folder: str, stamp: tuple) -> Graph:
    return Graph.load(folder)


def _thresholds(meta: dict) -> tuple[float, float]:
    values = [widgets.number(meta.get(k)) for k in ("node_threshold", "edge_threshold")]
    return tuple(v if v is not None and 0 <= v <= 1 else d for v, d in zip(values, DEFAULT_THRESHOLDS))


def open_entry(entry: dict) -> Opened | None:
    """A catalogued graph's folder, read (cached by its files' stamps); None with a message if not."""
    name = str(entry["name"])
    try:
        folder = feature_data.safe_folder(entry["path"])
        stamp = _stamp(folder / "graph.safetensors") + _stamp(folder / "graph.json")
        graph = _load_graph(str(folder), stamp)
    except PermissionError as err:
        st.error(widgets.md_escape(err))
        return None
    except FileNotFoundError:
        st.error(f"The files of graph {widgets.md_escape(name)} are missing (deleted or moved): "
                 f"{widgets.md_escape(entry['path'])} holds no graph.safetensors and graph.json. Build it again "
                 "here or with `wb graph`.")
        return None
    except Exception as err:  # noqa: BLE001 - safetensors, JSON and shape errors all mean a damaged graph
        st.warning(f"Graph {widgets.md_escape(name)} is damaged: {widgets.md_escape(err)}")
        return None
    meta = entry.get("meta") or {}
    # the stamp in the key: a graph built again under the same name is a new graph to the caches
    return Opened(key=f"catalog:{name}:{stamp}", name=name, graph=graph,
                  dictionaries=graph.metadata.get("dictionaries"), thresholds=_thresholds(meta),
                  state=saved_view(folder), folder=folder, source={"graph": name})


def saved_view(folder: Path) -> dict:
    """The view saved beside a catalogued graph (:func:`save_view`); {} when none or unreadable."""
    try:
        state = read_json(folder / VIEW_FILE)
    except (OSError, RuntimeError):  # RuntimeError: CorruptArtifactError, a damaged file
        return {}
    return state if isinstance(state, dict) else {}


def save_view(opened: Opened, state: dict) -> Path:
    """Write ``state`` (the page's ``qParams``) beside the catalogued graph, atomically."""
    if opened.folder is None:
        raise ValueError(f"graph {opened.name!r} is not catalogued: download it to keep its view")
    atomic_write_json(opened.folder / VIEW_FILE, state)
    return opened.folder / VIEW_FILE


def graph_entries() -> list[dict] | None:
    """Catalogued graphs, newest first (so the page opens on the graph just built, e.g. by make demo)."""
    try:
        return sorted(widgets.catalog().list("graph"), key=lambda e: str(e.get("created", "")), reverse=True)
    except Exception as err:  # noqa: BLE001 - a locked or damaged catalog must not break the page
        st.warning(f"The catalog could not be read: {widgets.md_escape(err)}")
        return None


def open_saved() -> Opened | None:
    """Pick a catalogued graph."""
    entries = graph_entries()
    if entries is None:
        return None
    if not entries:
        st.info(f"No graphs in the catalog at {widgets.md_escape(widgets.catalog().root)}. Build one from a "
                "prompt (the source above) or with `wb graph`, or import a graph file.")
        return None

    def label(i: int) -> str:
        meta = entries[i].get("meta") or {}
        size = f" · {int(meta['n_nodes']):,} nodes" if widgets.number(meta.get("n_nodes")) is not None else ""
        return f"{labels.clip_words(entries[i]['name'])}{size}"  # the browser would cut it mid-word

    wanted = st.session_state.pop("graph_url_name", None)  # a URL's ?graph=, read once per session
    names = [str(e["name"]) for e in entries]
    if wanted in names:
        st.session_state["graph_pick"] = names.index(wanted)
    elif wanted:
        st.warning(f"The link names graph {widgets.md_escape(wanted)}, which is not in the catalog; showing the newest.")
    index = st.selectbox("Graph", range(len(entries)), format_func=label, key="graph_pick")
    return open_entry(entries[index])


# ---- import --------------------------------------------------------------------------------------------

@st.cache_resource(show_spinner=False, max_entries=4)
def _parse(digest: str, name: str, _raw: bytes) -> GraphFile:
    raw = gzip.decompress(_raw) if name.endswith(".gz") else _raw
    return GraphFile.from_dict(json.loads(raw), source=name)


def _import_bytes() -> tuple[str, bytes] | None:
    upload = st.file_uploader("Graph JSON (circuit-tracer / Neuronpedia schema)", type=["json", "gz"],
                              key="graph_upload")
    typed = st.text_input("…or the path of a graph file under the artifacts root", key="graph_import_path",
                          placeholder="graphs/<name>/neuronpedia.json")
    if upload is not None:
        st.session_state.pop("graph_import_typed", None)
        return upload.name, upload.getvalue()
    if not typed.strip():
        st.info("Upload a graph file, or type the path of one under the artifacts root.")
        return None
    try:
        path = inside_root(artifacts_root(), typed.strip())
        found = path.name, path.read_bytes()
        st.session_state["graph_import_typed"] = typed.strip()  # a URL can name a typed path, not an upload
        return found
    except PermissionError as err:
        st.error(widgets.md_escape(err))
    except OSError:
        st.error(f"No graph file at {widgets.md_escape(typed.strip())} under the artifacts root.")
    return None


def import_file() -> Opened | None:
    """An uploaded or typed graph file; our own files become a Graph, others are drawn from their links."""
    found = _import_bytes()
    if found is None:
        return None
    name, raw = found
    digest = hashlib.sha256(raw).hexdigest()
    try:
        gf = _parse(digest, name, raw)
    except (GraphFileError, ValueError, OSError, EOFError) as err:
        st.error(f"{widgets.md_escape(name)} is not a graph file: {widgets.md_escape(err)}")
        return None
    typed = st.session_state.get("graph_import_typed")
    opened = Opened(key=f"file:{digest}", name=str(gf.metadata.get("slug") or name), state=dict(gf.qParams),
                    thresholds=(1.0, 1.0), source={"file": typed} if typed else {})
    if gf.has_workbench_fields:
        try:
            opened.graph = gf.to_graph()
            wb_meta = opened.graph.metadata
            opened.dictionaries = wb_meta.get("dictionaries")
            # a pruned file is already the graph to draw; a whole one is pruned as the file says
            if not wb_meta.get("json_pruned"):
                opened.thresholds = _thresholds(gf.metadata)
            return opened
        except (GraphFileError, ValueError, KeyError) as err:
            st.warning(f"Drawing the file's nodes and links: its workbench fields do not make a graph "
                       f"({widgets.md_escape(err)}).")
    opened.file = gf
    return opened


# ---- build ----------------------------------------------------------------------------------------------

def model_choices() -> list[tuple[str, Path]]:
    """(label, folder) of every model with weights: the zoo's folders, then catalogued models."""
    found: dict[Path, str] = {}
    for config in sorted(models_root().glob("*/config.json")):
        if (config.parent / "model.safetensors").is_file():
            found[config.parent.resolve()] = config.parent.name
    try:
        rows = widgets.catalog().list("model")
    except Exception:  # noqa: BLE001 - the zoo's models still work without the catalog
        rows = []
    for row in rows:
        try:
            folder = feature_data.safe_folder(row["path"])
        except PermissionError:
            continue
        if (folder / "model.safetensors").is_file():
            found.setdefault(folder, f"{row['name']} (catalog)")
    return [(label, folder) for folder, label in found.items()]


def dictionary_choices(model_name: str, model_folder: Path) -> list[tuple[str, Path]]:
    """(label, folder) of the sets this model can use: the zoo's beside it, then catalogued sets that
    name this model (or no model)."""
    found: dict[Path, str] = {}
    for set_file in sorted((model_folder / "dictionaries").glob("*/set.json")):
        found[set_file.parent.resolve()] = f"{set_file.parent.name} (zoo)"
    for entry in widgets.dictionary_entries() or []:
        meta = entry.get("meta") or {}
        if meta.get("model_name") not in (None, model_name):
            continue
        try:
            folder = feature_data.safe_folder(entry["path"])
        except PermissionError:
            continue
        if (folder / "set.json").is_file() or (folder / "config.json").is_file():
            found.setdefault(folder, str(entry["name"]))
    return [(label, folder) for folder, label in found.items()]


@st.cache_resource(show_spinner=False, max_entries=2)
def load_bundle(folder: str, stamp: tuple):
    from workbench.store.model_files import load_model_folder

    return load_model_folder(folder)


def example_prompt(bundle) -> str:
    """The first example prompt of the model's own task (:func:`prompt_help.example_prompts`); empty if
    the card names no task the workbench knows."""
    examples = prompt_help.example_prompts(bundle.card, bundle.tokenizer.vocab)
    return examples[0][1] if examples else ""


def _pick(label: str, choices: list[tuple[str, Path]], key: str) -> Path:
    index = st.selectbox(label, range(len(choices)), format_func=lambda i: choices[i][0], key=key)
    return choices[index][1]


def _prompt_box(bundle, model_folder: Path) -> None:
    """The prompt, pre-filled with an example of the model's task whenever another model is picked (or
    the box comes back: streamlit forgets a widget's value on runs that do not draw it); a choice of
    examples from the task, near matches for unknown words, and a searchable vocabulary."""
    vocab = bundle.tokenizer.vocab
    examples = prompt_help.example_prompts(bundle.card, vocab)
    if st.session_state.get("graph_prompt_model") != str(model_folder) or "graph_prompt" not in st.session_state:
        st.session_state["graph_prompt_model"] = str(model_folder)
        st.session_state["graph_prompt"] = examples[0][1] if examples else ""
    if examples:
        def use_example() -> None:  # a callback: it runs before the prompt box is drawn again
            st.session_state["graph_prompt"] = examples[st.session_state["graph_example"]][1]

        st.selectbox("Example from the model's task", range(len(examples)), key="graph_example",
                     format_func=lambda i: f"{examples[i][0]}: {examples[i][1]}", on_change=use_example)
    prompt = st.text_input("Prompt", key="graph_prompt",
                           help="Tokens of the model's vocabulary separated by spaces; <bos> is put first when missing.")
    unknown = prompt_help.unknown_words(prompt, vocab)
    if unknown:
        st.warning(widgets.md_escape(prompt_help.unknown_words_message(unknown)))
    query = st.text_input("Search the vocabulary", key="graph_vocab_search", placeholder="part of a word, any case")
    found, total = prompt_help.search_vocabulary(vocab, query)
    more = " …" if total > len(found) else ""
    st.caption(f"Vocabulary: {total:,} of {len(vocab) - 2:,} tokens match: "
               f"{widgets.md_escape(' '.join(found)) or 'none'}{more}")


def run_build(bundle, set_folder: Path, prompt: str, max_features: int,
              thresholds: tuple[float, float] = DEFAULT_THRESHOLDS) -> str | None:
    """Build, save and catalogue the graph inside a status box; its catalog name, or None on an error.
    The job names it (model, prompt and a hash of model, set and prompt: one graph per triple, confined
    to the graphs folder) and loads the set through the checks of every command (members inside the
    set, declared layers covered, trained on this model)."""
    from workbench.attribution.attribute import AttributionConfig
    from workbench.attribution.jobs import build_graph, encode_prompt

    with st.status("Building the attribution graph…", expanded=True) as status:
        bar = st.progress(0.05, text="Checking the prompt")
        try:
            n_tokens = encode_prompt(bundle, prompt).shape[1]
            bar.progress(0.2, text=f"Tracing {n_tokens} tokens: attribution, pruning, scores")
            summary = build_graph(bundle, set_folder, prompt, node_threshold=thresholds[0],
                                  edge_threshold=thresholds[1], config=AttributionConfig(max_feature_nodes=max_features),
                                  catalog=widgets.catalog(), progress=False)
            name = summary["name"]
        except (ValueError, FileNotFoundError, RuntimeError, KeyError, PermissionError) as err:
            status.update(label="The graph could not be built", state="error", expanded=True)
            st.error(widgets.md_escape(err))
            return None
        bar.progress(1.0, text="Saved and catalogued")
        status.update(label=f"Built {widgets.md_escape(name)}: {summary['n_nodes']:,} nodes, pruned to "
                            f"{summary['pruned_nodes']:,}", state="complete", expanded=False)
    return name


def build_form() -> Opened | None:
    """Model, dictionary set, prompt and a Build button; the graph built last in this session, if any."""
    models = model_choices()
    if not models:
        st.info(f"No models with weights in the zoo at {widgets.md_escape(models_root())} or in the catalog. "
                "Build the zoo with `wb zoo build`, or train a model with `wb train`.")
        return None
    model_folder = _pick("Model", models, "graph_model")
    try:
        bundle = load_bundle(str(model_folder), _stamp(model_folder / "model.safetensors"))
    except Exception as err:  # noqa: BLE001 - missing files, bad config, weights that do not fit
        st.error(f"Model {widgets.md_escape(model_folder.name)} could not be loaded: {widgets.md_escape(err)}")
        return None
    sets = dictionary_choices(bundle.name, model_folder)
    if not sets:
        st.info(f"No dictionary set for model {widgets.md_escape(bundle.name)}. Train one with:")
        st.code(f"wb dict train --model {model_folder}", language="bash")
        return None
    set_folder = _pick("Dictionary set", sets, "graph_dict")
    _prompt_box(bundle, model_folder)
    cols = st.columns(3)
    max_features = cols[0].number_input("Most features to trace", min_value=1, value=2000, step=100,
                                        key="graph_max_features",
                                        help="The most influential features first; the rest count as error.")
    node_t = cols[1].number_input("Node threshold", 0.0, 1.0, DEFAULT_THRESHOLDS[0], 0.01, key="graph_build_node",
                                  help="Pruning saved with the graph (the view's sliders start here).")
    edge_t = cols[2].number_input("Edge threshold", 0.0, 1.0, DEFAULT_THRESHOLDS[1], 0.005, key="graph_build_edge")
    if st.button("Build graph", key="graph_build", type="primary"):
        built = run_build(bundle, set_folder, st.session_state.get("graph_prompt", ""), int(max_features),
                          (float(node_t), float(edge_t)))
        if built:
            st.session_state["graph_built"] = built
    built = st.session_state.get("graph_built")
    if not built:
        return None
    try:
        return open_entry(widgets.catalog().get("graph", built))
    except KeyError:
        return None
