"""RASP: compile a library program into an exact Transformer and look inside it.

1. Pick a program and its parameters (typed by the program's defaults, as ``wb rasp compile --param``)
   and the attention mode; the compile is cached per (program, parameters, mode).
2. Its dependency graph (columns are the sublayers that compute each variable), its layers (which heads
   and MLPs compute what) and its residual stream's layout.
3. Run an input: the interpreter's and the compiled model's outputs, and a variables x sublayers table of
   each variable decoded from the residual stream, beside the interpreter's values.
4. Compare the program with a trained zoo model of its task (``workbench.compare``): probes per layer,
   the best-matching heads, and (when the model has transcoders) feature sensitivity.
"""

import json
import sys
from pathlib import Path

import streamlit as st

APP_DIR = Path(__file__).resolve().parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))
import rasp_view
import widgets

from workbench.cli.rasp import (
    compile_program,
    format_values,
    layer_rows,
    load_program,
    parse_input,
    parse_params,
    residual_rows,
    run_input,
)
from workbench.rasp.library import PROGRAMS

ERRORS = (ValueError, KeyError)


@st.cache_resource(show_spinner="Compiling ...", max_entries=16)
def compiled_program(name: str, params_json: str, causal: bool):
    lib = load_program(name, json.loads(params_json))
    compiled, seconds = compile_program(lib, causal=causal)
    return lib, compiled, seconds


def param_items(name: str) -> list[str]:
    """Step 1: one text box per parameter, its default filled in; ``key=value`` items for the parser."""
    items = []
    cols = st.columns(max(len(PROGRAMS[name].defaults), 1))
    for col, (key, default) in zip(cols, PROGRAMS[name].defaults.items(), strict=False):
        text = col.text_input(key, "null" if default is None else str(default), key=f"rasp_param_{name}_{key}")
        items.append(f"{key}={text}")
    return items


def show_structure(lib, compiled, seconds: float) -> None:
    """Step 2."""
    cfg = compiled.model.cfg
    cols = st.columns(5)
    cols[0].metric("Layers", cfg.n_layers)
    cols[1].metric("Heads per layer", cfg.n_heads)
    cols[2].metric("Residual width", cfg.d_model)
    cols[3].metric("Parameters", f"{sum(p.numel() for p in compiled.model.parameters()):,}")
    cols[4].metric("Compile time", f"{seconds * 1000:.0f} ms")
    st.markdown("**Dependency graph** (columns: the sublayer that computes each variable)")
    st.plotly_chart(rasp_view.dependency_figure(compiled), key="rasp_graph")
    st.markdown("**Layers**")
    st.dataframe(layer_rows(compiled), key="rasp_layers", hide_index=True)
    st.markdown("**Residual stream layout**")
    st.dataframe(residual_rows(compiled), key="rasp_residual", hide_index=True)


def show_run(lib, compiled) -> None:
    """Step 3."""
    st.subheader("Run an input")
    text = st.text_input("Input (space-separated tokens, or one token per character)",
                         rasp_view.example_input(lib), key=f"rasp_input_{lib.name}")
    try:
        xs = parse_input(text)
        want, got, table = run_input(lib, compiled, xs)
    except ERRORS as err:
        st.error(f"{widgets.md_escape(err.args[0] if isinstance(err, KeyError) and err.args else err)}")
        return
    st.dataframe({"": ["input", "interpreter", "compiled"],
                  "values": [format_values(xs), format_values(want), format_values(got)]},
                 key="rasp_outputs", hide_index=True)
    (st.success if want == got else st.error)("compiled = interpreter" if want == got else
                                              "the compiled model differs from the interpreter")
    st.markdown("**Each variable decoded from the residual stream** (rows: variables; columns: after each "
                "sublayer; `-` is None, blank: not yet written)")
    st.dataframe(table, key="rasp_trace")


def show_compare(lib) -> None:
    """Step 4."""
    st.subheader("Compare with a trained model")
    try:
        from workbench.compare.run import compare, summary_lines
    except ImportError:
        st.info("The comparison (workbench.compare) is not installed.")
        return
    cards = rasp_view.comparable_cards(widgets.load_cards(report=False), lib.name)
    if not cards:
        st.info(f"No trained zoo model has a task that {widgets.md_escape(lib.name)} serves.")
        return
    card = widgets.model_picker(cards, key="rasp_compare_model", label="Trained model")
    n = st.number_input("Test rows", 32, 2048, 256, step=32, key="rasp_compare_n")
    if not st.button("Compare", key="rasp_compare"):
        return
    try:
        with st.spinner("Comparing ..."):
            tables = compare(lib.name, card["_folder"], n_inputs=int(n), circuit=False)
    except ERRORS as err:
        st.error(widgets.md_escape(err))
        return
    st.code("\n".join(summary_lines(tables)), language=None)
    for name, table in tables.items():
        st.markdown(f"**{widgets.md_escape(name)}**")
        st.dataframe(table, key=f"rasp_compare_{name}", hide_index=True)


st.title("RASP")
st.caption("Library programs compiled into exact Transformers (`wb rasp`), their circuits known by construction.")
name = st.selectbox("Program", sorted(PROGRAMS), key="rasp_program")
spec = PROGRAMS[name]
st.caption(f"{'causal-compatible' if spec.causal else 'bidirectional only'}; "
           f"task format: {widgets.md_escape(spec.task or 'none')}")
items = param_items(name)
causal = st.checkbox("Causal attention", value=False, key="rasp_causal")
try:
    lib_, compiled_, seconds_ = compiled_program(name, json.dumps(parse_params(name, items), sort_keys=True), causal)
except ERRORS as err:
    st.error(widgets.md_escape(err.args[0] if isinstance(err, KeyError) and err.args else err))
    st.stop()
show_structure(lib_, compiled_, seconds_)
show_run(lib_, compiled_)
show_compare(lib_)
