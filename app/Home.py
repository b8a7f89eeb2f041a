"""The app's entry page (``streamlit run app/Home.py``): what the app does, what the store holds, and
links to every page under ``app/pages/`` with what each does."""

import re
import sys
from pathlib import Path

import streamlit as st

APP_DIR = Path(__file__).resolve().parent
# streamlit and AppTest run pages as scripts, so app/ goes on sys.path for `import widgets`
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))
import widgets

INTRO = """
Every architecture the workbench trains (transformer, RWKV, Mamba, xLSTM, minGRU, LSTM) exposes the same
named hooks, so one set of instruments applies to all of them. This app browses what the workbench has
made; each page below says what it does.
"""

# What each page does, by its file's stem: only what the page itself does (tests/test_app_fixes.py holds
# every page to a note here and each named intervention method to one the Interventions page offers).
PAGE_NOTES = {
    "1_Models": "the zoo table, each card's metrics and training curves, comparisons",
    "2_Features": "a dictionary's features: labels (automatic or your own), density, top-activating contexts, "
                  "histograms, logit effects, activations on a typed text, and the graphs that draw each one",
    "3_Attribution_graph": "open, build or import an attribution graph; inspect nodes, pin and group them; "
                           "intervene on its features beside the graph's prediction",
    "4_Interventions": "run activation patching, ablation, causal tracing or steering on prompt pairs as a "
                       "stored study; open any stored study",
    "5_RASP": "compile a RASP program into an exact transformer, look inside it, run an input, and compare "
              "it with a trained model of its task",
    "6_Energy": "an energy-based transformer's energy landscape over its prediction on a 3-token toy, with "
                "its descent paths, and the zoo's energy-based models' accuracy against inference steps",
}
# The methods the Interventions page's note names, as the page registers them (workbench.studies.methods).
NOTED_METHODS = {"activation patching": "patch", "ablation": "ablate", "causal tracing": "trace",
                 "steering": "steer"}


def page_label(path: Path) -> str:
    """``3_Feature_browser.py`` -> ``Feature browser``: streamlit's own naming of page files."""
    return re.sub(r"^\d+_", "", path.stem).replace("_", " ")


def show_counts() -> None:
    cards = widgets.load_cards()
    counts = widgets.store_counts() or {}
    cols = st.columns(4)
    cols[0].metric("Models", len(cards), help="model folders with a readable card.json in the zoo")
    cols[1].metric("Dictionary sets", counts.get("dictionary_set", 0),
                   help=f"replacement sets (a model's per-layer transcoders, or its CLT) in the catalog, "
                        f"besides {counts.get('dictionary', 0)} single dictionaries")
    cols[2].metric("Graphs", counts.get("graph", 0), help="registered in the catalog")
    cols[3].metric("Studies", counts.get("study", 0), help="intervention studies in the catalog (Interventions page)")
    st.caption(f"Zoo: {widgets.md_escape(widgets.models_dir())} · catalog: "
               f"{counts.get('model', 0)} models, {counts.get('run', 0)} runs")
    if not cards:
        st.info("The model zoo is empty. Build it with `wb zoo build` (or `make demo`).")


def show_links() -> None:
    st.subheader("Pages")
    for path in sorted((APP_DIR / "pages").glob("*.py")):
        st.page_link(f"pages/{path.name}", label=page_label(path))
        if path.stem in PAGE_NOTES:
            st.caption(PAGE_NOTES[path.stem])


def main() -> None:
    st.set_page_config(page_title="Workbench", layout="wide")
    st.title("Mechanistic-interpretability workbench")
    st.markdown(INTRO)
    show_counts()
    show_links()


main()
