"""Energy: an Energy-Based Transformer's landscape over y^ and its thinking curve.

1. The 3-token toy (workbench/zoo/ebt_toy.py): a tiny EBT trained once per session (cached, seeded);
   pick a context, a number of descent steps and a grid resolution; the page draws the energy over the
   2-simplex of y^ at the context's last position, with the descent from the model's seeded start and
   from a start near each corner, and a table of each path's energies.
2. Zoo EBTs: for each card with a ``thinking`` section (workbench/zoo/ebt_steps.py), accuracy and loss
   against inference steps beside the FLOP-matched Transformer.
"""

import sys
from pathlib import Path

import streamlit as st

APP_DIR = Path(__file__).resolve().parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))
import energy_view
import widgets

from workbench.zoo.ebt_toy import VOCAB, descent_paths, landscape, train_toy

TOKENS = ["a", "b", "c"]  # the toy's three tokens; the next token is usually the following letter (c -> a)


@st.cache_resource(show_spinner="Training the 3-token EBT (once per session) ...")
def toy_model():
    return train_toy()


def parse_context(text: str) -> list[int]:
    """``"a b c"`` or ``"abc"`` -> token ids; an unknown token is an error naming the choices."""
    items = text.split() if " " in text.strip() else list(text.strip())
    if not items:
        raise ValueError("the context is empty; type tokens from: a, b, c")
    bad = [t for t in items if t not in TOKENS]
    if bad:
        raise ValueError(f"unknown token(s) {bad}; choose from: {', '.join(TOKENS)}")
    return [TOKENS.index(t) for t in items]


st.title("Energy")
st.caption("An Energy-Based Transformer predicts by gradient descent on its energy E(context, y^) over the "
           "distribution y^ of the next token. With 3 tokens, y^ lives on a triangle.")

st.subheader("3-token toy: the energy landscape over y^")
cols = st.columns(3)
text = cols[0].text_input("Context", "a b c a", key="energy_context")
steps = cols[1].slider("Descent steps", 1, 32, 8, key="energy_steps")
resolution = cols[2].slider("Grid resolution", 10, 60, 30, key="energy_resolution")
try:
    context = parse_context(text)
except ValueError as err:
    st.error(widgets.md_escape(err))
    st.stop()
model = toy_model()
land = landscape(model, context, resolution)
paths = descent_paths(model, context, steps)
st.plotly_chart(energy_view.landscape_figure(land, paths, TOKENS[:VOCAB]), key="energy_landscape")
best = paths[0].y[-1].tolist()
st.markdown(f"Prediction after {steps} steps from the seeded start: "
            + ", ".join(f"**{t}** {p:.3f}" for t, p in zip(TOKENS, best)))
st.dataframe({p.label: [round(e, 4) for e in p.energy.tolist()] for p in paths}, key="energy_paths")

st.subheader("Zoo EBTs: accuracy and loss against inference steps")
cards = [c for c in widgets.load_cards(report=False) if "thinking" in c]
if not cards:
    st.info("No zoo model has a thinking section yet (`wb zoo build ebt-recall`).")
for card in cards:
    st.markdown(f"**{widgets.md_escape(card['name'])}** ({widgets.md_escape(widgets.task_label(card))})")
    st.plotly_chart(energy_view.steps_figure(card["thinking"]), key=f"energy_steps_{card['name']}")
    flops = card["thinking"]["train_flops"]
    base = card["thinking"]["baseline"]
    st.caption(f"Transformer trained {base['train_steps']} steps (FLOP-matched: {base['flop_matched_steps']}"
               f"{', capped' if base['capped'] else ''}); an EBT training step costs {flops['ratio_per_step']}x "
               "a Transformer step's FLOPs.")
