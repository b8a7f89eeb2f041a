"""The app's entry page (``streamlit run app/Home.py``): what the workbench is, what the store holds,
and links to every page under ``app/pages/``."""

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
Every architecture the workbench trains (transformer, RWKV, Mamba, xLSTM, ...) exposes the same named
hooks, so one set of instruments applies to all of them: sparse transcoders replace the MLPs,
attribution graphs trace a prompt's computation, and patching, ablation and steering test it. Models
compiled from RASP programs have exactly known circuits, so every instrument is checked against ground truth.
"""


def page_label(path: Path) -> str:
    """``3_Feature_browser.py`` -> ``Feature browser``: streamlit's own naming of page files."""
    return re.sub(r"^\d+_", "", path.stem).replace("_", " ")


def show_counts() -> None:
    cards = widgets.load_cards()
    counts = widgets.store_counts() or {}
    cols = st.columns(3)
    cols[0].metric("Models", len(cards), help="model folders with a readable card.json in the zoo")
    cols[1].metric("Dictionary sets", counts.get("dictionary_set", 0),
                   help=f"replacement sets (a model's per-layer transcoders, or its CLT) in the catalog, "
                        f"besides {counts.get('dictionary', 0)} single dictionaries")
    cols[2].metric("Graphs", counts.get("graph", 0), help="registered in the catalog")
    st.caption(f"Zoo: {widgets.md_escape(widgets.models_dir())} · catalog: "
               f"{counts.get('model', 0)} models, {counts.get('run', 0)} runs, "
               f"{counts.get('study', 0)} studies")
    if not cards:
        st.info("The model zoo is empty. Build it with `wb zoo build` (or `make demo`).")


def show_links() -> None:
    st.subheader("Pages")
    for path in sorted((APP_DIR / "pages").glob("*.py")):
        st.page_link(f"pages/{path.name}", label=page_label(path))


def main() -> None:
    st.set_page_config(page_title="Workbench", layout="wide")
    st.title("Mechanistic-interpretability workbench")
    st.markdown(INTRO)
    show_counts()
    show_links()


main()
