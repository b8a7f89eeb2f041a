"""Interventions: run a patching sweep, an ablation, causal tracing or steering on a zoo model and a set of
prompt pairs, and open any stored study.

A run here is a one-step study (``workbench.studies``), so the page and ``wb study run`` share one code
path and one store:

1. Pick a model (the zoo's cards), a prompt-pair source (the model's task: corruption and number of
   pairs; or typed clean / corrupted prompts with answer and contrast tokens) and a method of
   ``workbench.studies.methods.METHODS`` (only those registered now), its parameters drawn as widgets
   from the method's declared defaults.
2. Build the spec (``parse_spec``), named ``app-<method>-<model>-<hash of the spec>``: the same inputs
   give the same name, so running them again resumes from the store at once.
3. Check the prompt pairs exactly as the runner will make them (same seed) before anything is written;
   an error (unequal lengths, an unknown token) is shown and nothing is written. A method that fails
   later takes its new study folder with it.
4. ``run_study`` with the app's catalog; draw each unit's figure and table (``study_view``).

"Stored studies" opens any catalogued study the same way.
"""

import hashlib
import json
import re
import sys
from pathlib import Path

import streamlit as st
import yaml

# streamlit and AppTest run pages as scripts, so app/ goes on sys.path for `import widgets`
APP_DIR = Path(__file__).resolve().parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))
import study_view
import widgets

from workbench.studies.methods import METHODS, load_adapters

TASK, TYPED = "The model's task", "Typed prompts"
METHOD_ORDER = ("patch", "ablate", "trace", "path_patch", "eap", "steer")  # the rest follow, by name
SEED = 0
RUN_ERRORS = (ValueError, KeyError, IndexError, RuntimeError, FileNotFoundError, PermissionError)


def method_names() -> list[str]:
    load_adapters()
    return sorted(METHODS, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m))


def model_ref(card: dict) -> str:
    """The spec's name for the model: its zoo folder name, or its folder path when it lives elsewhere."""
    folder = Path(card["_folder"])
    return folder.name if folder.parent.resolve() == widgets.models_dir().resolve() else str(folder)


def corruptions(card: dict) -> list[str]:
    """The corruptions ``task_pairs`` offers for the card's evaluation task (none: its only one)."""
    from workbench.interventions.pairs import RECALL_CORRUPTIONS, SUBJECT_SLOTS

    task = str(((card.get("eval_task") or card.get("task")) or {}).get("name", ""))
    if task in ("recall", "recall_multi"):
        return list(RECALL_CORRUPTIONS)
    return list(SUBJECT_SLOTS) if task == "toyworld" else []


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def prompt_source(card: dict) -> dict:
    """The study's ``prompts`` block from the chosen source."""
    source = st.radio("Prompt pairs", [TASK, TYPED], horizontal=True, key="iv_source")
    if source == TASK:
        cols = st.columns(2)
        options = corruptions(card)
        corrupt = cols[0].selectbox("Corruption", options, key="iv_corrupt") if options else None
        n = cols[1].number_input("Pairs", min_value=1, max_value=256, value=16, step=1, key="iv_n")
        return {"n": int(n)} | ({"corrupt": corrupt} if corrupt else {})
    st.caption("One prompt per line, tokens separated by spaces (<bos> is put first); each prompt's last token "
               "predicts the answer. One answer and one contrast token per line.")
    cols = st.columns(2)
    clean = cols[0].text_area("Clean prompts", key="iv_clean", height=100)
    corrupted = cols[1].text_area("Corrupted prompts", key="iv_corrupted", height=100)
    answer = cols[0].text_area("Answers (clean)", key="iv_answer", height=70)
    contrast = cols[1].text_area("Contrast answers (corrupted)", key="iv_contrast", height=70)
    return {"clean": _lines(clean), "corrupted": _lines(corrupted), "answer": _lines(answer),
            "contrast": _lines(contrast)}


def _as_text(default) -> str:
    return "" if default is None else ", ".join(str(v) for v in default) if isinstance(default, list) else str(default)


def parse_value(name: str, text: str, default):
    """A typed parameter: a list like its default (comma-separated), or YAML where the default is None."""
    text = text.strip()
    if not text:
        return None if default is None else []
    if isinstance(default, list):
        kind = type(default[0]) if default else str
        try:
            return [kind(v.strip()) for v in text.strip("[]").split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"parameter {name!r} expects a comma-separated list of {kind.__name__}, "
                             f"got {text!r}") from None
    if "," in text and not text.startswith(("[", "{")):
        text = f"[{text}]"  # "0, 1" means the list [0, 1]
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ValueError(f"parameter {name!r}: {text!r} is not a value (e.g. 1, [0, 1], mlp)") from None


def param_widget(method: str, name: str, default, col):
    """One parameter as a widget of its default's type; returns its value (None: left to the method)."""
    key = f"iv_{method}_{name}"
    if isinstance(default, bool):
        return col.checkbox(name, value=default, key=key)
    if isinstance(default, int):
        return int(col.number_input(name, value=default, step=1, key=key))
    if isinstance(default, float):
        return float(col.number_input(name, value=default, key=key, format="%g"))
    if isinstance(default, str):
        return col.text_input(name, value=default, key=key).strip()
    hint = "comma-separated" if isinstance(default, list) else "empty: the method's choice; e.g. 0, 1 or mlp"
    return parse_value(name, col.text_input(name, value=_as_text(default), key=key, help=hint), default)


def method_params(method: str) -> dict:
    """The method's parameters (``label`` aside) as widgets, three to a row; ValueError on a bad value."""
    declared = {k: v for k, v in METHODS[method].params.items() if k != "label"}
    cols, params = st.columns(3), {}
    for i, (name, default) in enumerate(declared.items()):
        value = param_widget(method, name, default, cols[i % 3])
        if value is not None:
            params[name] = value
    return params


def spec_data(method: str, model: str, prompts: dict, params: dict) -> dict:
    """Step 2: the one-step spec, named from a hash of everything else in it."""
    body = {"seed": SEED, "models": [model], "prompts": prompts, "steps": [{"method": method, **params}]}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model).name).strip("-.")[:40] or "model"
    return {"name": f"app-{method}-{slug}-{digest}", **body,
            "description": f"{method} on {Path(model).name}, run from the app's Interventions page"}


def check_pairs(spec, model_folder: Path) -> int:
    """Step 3: the unit's prompt pairs, made as the runner makes them; their number."""
    from workbench.studies.methods import UnitContext
    from workbench.studies.runner import unit_seed

    ctx = UnitContext(model_folder, spec.prompts, {}, unit_seed(spec.seed, 0, spec.models[0]))
    return len(ctx.pairs)


def run(data: dict, model_folder: Path) -> str | None:
    """Steps 2-4: the study's catalog name, or None with the error shown and nothing left written."""
    from workbench.studies import parse_spec, run_study

    catalog = widgets.catalog()
    try:
        spec = parse_spec(data, "the Interventions page")
        n_pairs = check_pairs(spec, model_folder)
    except RUN_ERRORS as err:
        st.error(widgets.md_escape(err.args[0] if isinstance(err, KeyError) and err.args else err))
        return None
    try:  # a failed first run leaves no folder behind (run_study removes it)
        with st.spinner(f"Running {spec.steps[0].method} on {n_pairs} prompt pairs…"):
            result = run_study(spec, catalog, models_dir=widgets.models_dir())
    except RUN_ERRORS as err:
        st.error(f"{widgets.md_escape(spec.steps[0].method)} failed: {widgets.md_escape(err)}")
        return None
    if result.resumed:
        st.caption("Ran before with these inputs: read back from the store.")
    return result.name


def run_section() -> None:
    cards = widgets.load_cards()
    card = widgets.model_picker(cards, key="iv_model")
    if card is None:
        st.info("The model zoo is empty. Build it with `wb zoo build` (or `make demo`).")
        return
    prompts = prompt_source(card)
    names = method_names()
    method = st.selectbox("Method", names, key="iv_method")
    st.caption(widgets.md_escape(METHODS[method].doc))
    try:
        params = method_params(method)
    except ValueError as err:
        st.error(widgets.md_escape(err))
        return
    data = spec_data(method, model_ref(card), prompts, params)
    if st.button("Run", key="iv_run", type="primary"):
        st.session_state["iv_last"] = run(data, Path(card["_folder"]))
    name = st.session_state.get("iv_last")
    if name:
        show_catalogued(name, "iv_result")


def show_catalogued(name: str, key: str) -> None:
    try:
        entry = widgets.catalog().get("study", name)
    except KeyError:
        st.info(f"Study {widgets.md_escape(name)} is no longer in the catalog.")
        return
    meta = study_view.load(entry)
    if meta is not None:
        study_view.show_study(meta, key)


def stored_section() -> None:
    st.header("Stored studies")
    entries = study_view.entries()
    if entries is None:
        return
    if not entries:
        st.info("No studies in the catalog yet. Run one above, or with `wb study run studies/examples/<spec>.yaml`.")
        return

    def label(i: int) -> str:
        meta = entries[i].get("meta") or {}
        methods = ", ".join(str(m) for m in meta.get("methods", []))
        return f"{entries[i]['name']} ({methods})" if methods else str(entries[i]["name"])

    index = st.selectbox("Study", range(len(entries)), format_func=label, key="iv_stored")
    meta = study_view.load(entries[index])
    if meta is not None:
        study_view.show_study(meta, "iv_stored_study")


def main() -> None:
    st.set_page_config(page_title="Interventions · Workbench", layout="wide")
    st.title("Interventions")
    st.markdown("Patch, ablate, trace or steer a model on clean / corrupted prompt pairs. Each run is a one-step "
                "study, stored and catalogued: the same inputs again read back at once.")
    run_section()
    stored_section()


main()
