"""The model zoo: every card as a table, one model's card and training curves, and a side-by-side
comparison. Reads only card.json and curves.parquet, so it works without the weights."""

import sys
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

# streamlit and AppTest run pages as scripts, so app/ goes on sys.path for `import widgets`
APP_DIR = Path(__file__).resolve().parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))
import widgets

CURVE_METRICS = ("loss", "accuracy", "perplexity", "answer_loss")
KNOWN_METRICS = ["test_accuracy", "test_loss", "test_perplexity", "test_answer_loss", "bigram_perplexity",
                 "test_examples"]
CARD_FIELDS = ["parameters", "training_tokens", "training_time_s", "seed"]
# Display formats through a pandas Styler: st.dataframe draws a missing value as "None", the Styler's
# na_rep draws it as "-" (sorting still uses the numbers).
ZOO_FORMATS = {
    "parameters": "{:,.0f}", "test accuracy": "{:.2%}", "test perplexity": "{:.3f}", "bigram perplexity": "{:.3f}",
    "training tokens": "{:,.0f}", "training time s": "{:.0f}", "transcoder FVU (worst layer)": "{:.4f}",
    "replacement agreement": "{:.2%}", "graph replacement score": "{:.3f}", "graph completeness score": "{:.3f}",
    "graph validation r": "{:.2f}",
}
MISSING = "-"
# What each training curve measures (the trainer's evaluate_batch): the title and y axis name it.
CURVE_MEANINGS = {
    "loss": "mean loss per target token",
    "accuracy": "exact match: share of rows with every answer right",
    "perplexity": "exp(mean loss per target token)",
    "answer_loss": "mean loss per answer token",
}
DICT_COLUMNS = {"fvu": "FVU per layer", "l0": "L0 per layer", "dead_fraction": "dead per layer",
                "agreement": "agreement (held-out)", "agreement_test": "agreement (test split)",
                "graphs.replacement": "replacement", "graphs.completeness": "completeness",
                "graphs.pruned_replacement": "pruned replacement", "graphs.pruned_completeness": "pruned completeness",
                "graphs.pruned_nodes": "pruned nodes", "graphs.n_prompts": "prompts",
                "graphs.validation.pearson": "validation r", "graphs.validation.spearman": "validation rank r"}


def fmt(value: object, spec: str) -> str:
    number = widgets.number(value)
    return "-" if number is None else format(number, spec)


def percent(value: object) -> str:
    number = widgets.number(value)
    return "-" if number is None else f"{100 * number:.2f}%"


def show_section(value: object) -> None:
    # st.json would parse a string as JSON text, so only objects and lists go through it
    if isinstance(value, (dict, list)):
        st.json(value)
    else:
        st.text("-" if value is None else str(value))


def show_card(card: dict) -> None:
    metrics = card.get("metrics", {})
    st.subheader(widgets.md_escape(card["name"]))
    st.text(f"{card.get('architecture', '?')} · task {card.get('task', {}).get('name', '?')} · "
            f"{fmt(card.get('parameters'), ',.0f')} parameters · seed {card.get('seed', '?')}")
    cols = st.columns(5)
    cols[0].metric("Test accuracy", percent(metrics.get("test_accuracy")))
    cols[1].metric("Test loss", fmt(metrics.get("test_loss"), ".4f"))
    cols[2].metric("Test perplexity", fmt(metrics.get("test_perplexity"), ".3f"))
    cols[3].metric("Bigram perplexity", fmt(metrics.get("bigram_perplexity"), ".3f"))
    cols[4].metric("Training tokens", fmt(card.get("training_tokens"), ",.0f"))
    for label, field in [("Metrics", "metrics"), ("Task", "task"), ("Model config", "model_config"),
                         ("Train config", "train_config"), ("Evaluation", "eval")]:
        with st.expander(label):
            show_section(card.get(field))
    if card.get("notes"):
        widgets.show_text("Notes", card["notes"])
    widgets.show_text("Trained", f"on {card.get('trained_on', '?')}, created {card.get('created', '?')}, "
                                 f"{fmt(card.get('training_time_s'), '.0f')} s")
    show_dictionaries(card)
    show_sweep(card)


def show_dictionaries(card: dict) -> None:
    """The model's zoo dictionaries (``wb zoo dicts``): quality and graph scores per recipe."""
    dictionaries = card.get("dictionaries")
    if not isinstance(dictionaries, dict) or not dictionaries:
        return
    st.markdown("**Dictionaries and attribution graphs**")
    rows = []
    for recipe, entry in dictionaries.items():
        if not isinstance(entry, dict):
            continue
        flat = pd.json_normalize(entry).iloc[0].to_dict()
        row = {"recipe": str(recipe), "kind": str(flat.get("recipe.kind", "?"))}
        for key, label in DICT_COLUMNS.items():
            value = flat.get(key)
            row[label] = ", ".join(f"{v:.4g}" for v in value) if isinstance(value, list) else widgets.number(value)
        rows.append(row)
    st.dataframe(pd.DataFrame(rows).style.format(precision=4, na_rep=MISSING), hide_index=True)
    st.caption("FVU, L0 and dead fraction per layer on held-out activations of the training distribution, the "
               "<bos> position left out; agreement: share of the positions that predict a target token where the "
               "model with every MLP replaced predicts the same next token as the original, on held-out rows of "
               "the training distribution and on the task's test split; graph scores: means over the card's "
               "test prompts, full graphs and graphs pruned at node 0.8 / edge 0.98; validation r: per graph, "
               "the correlation between the top-logit change the graph predicts when each of its 10 most "
               "influential features is ablated and the change the live model shows (attention, gates and "
               "norms free to respond), averaged over the prompts (Pearson; rank r: Spearman).")


def show_sweep(card: dict) -> None:
    """A recall card's sweep: accuracy against the number of pairs, one line per sequence length."""
    sweep = card.get("sweep")
    if not isinstance(sweep, list) or not sweep:
        return
    df = pd.DataFrame([r for r in sweep if isinstance(r, dict)])
    if not {"n_pairs", "slots", "accuracy", "seq_len"} <= set(df.columns):
        return
    st.markdown("**Recall sweep** (the trained model re-measured, no retraining)")
    fig = go.Figure()
    for slots, part in df.sort_values("n_pairs").groupby("slots"):
        fig.add_trace(go.Scatter(x=part["n_pairs"], y=part["accuracy"], mode="lines+markers",
                                 name=widgets.plot_text(f"{int(slots)} slots ({int(part['seq_len'].iloc[0])} tokens)")))
    unpadded = df[df["n_pairs"] == df["slots"]].sort_values("n_pairs")
    fig.add_trace(go.Scatter(x=unpadded["n_pairs"], y=unpadded["accuracy"], mode="lines+markers",
                             name="no padding", line={"dash": "dot"}))
    # the legend under the plot: at the top right it sat under plotly's toolbar
    fig.update_layout(height=360, xaxis_title="pairs in context", yaxis_title="exact match",
                      yaxis_tickformat=".0%", margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend=widgets.LEGEND_BELOW)
    st.plotly_chart(fig, key="recall_sweep")


def show_curves(card: dict) -> None:
    st.markdown("**Training curves**")
    try:
        df = widgets.load_curves(card)
    except ValueError as err:
        st.warning(widgets.md_escape(err))
        return
    if df is None:
        st.info("This model has no curves.parquet (it was not trained by the workbench's trainer).")
        return
    figures = [(m, widgets.curves_figure(df, m)) for m in CURVE_METRICS]
    figures = [(m, f) for m, f in figures if f is not None]
    if not figures:
        st.info("curves.parquet holds none of: " + ", ".join(CURVE_METRICS))
        return
    trained = str((card.get("task") or {}).get("name", "?"))
    st.caption(curves_caption(card))
    bigram = widgets.number(card.get("metrics", {}).get("bigram_perplexity"))
    cols = st.columns(2)
    for i, (metric, fig) in enumerate(figures):
        meaning = CURVE_MEANINGS.get(metric, metric)
        fig.update_layout(title=widgets.plot_text(f"{metric} on {trained}"),
                          yaxis_title=widgets.plot_text(meaning))
        if metric == "perplexity" and bigram is not None:
            fig.add_hline(y=bigram, line_dash="dash", annotation_text="bigram baseline")
        cols[i % 2].plotly_chart(fig, key=f"curve_{metric}")


def curves_caption(card: dict) -> str:
    """Which task the curves measure, and how that differs from the card's test accuracy."""
    trained = str((card.get("task") or {}).get("name", "?"))
    tested = str((card.get("eval_task") or {}).get("name", trained))
    curve_task = card.get("curves_test_task")
    if curve_task:  # built since issue #16: the test curves measure what the card measures
        return widgets.md_escape(
            f"The train loss is measured on {trained}'s training batches; the test curves on the test split of "
            f"{curve_task.get('name', '?')}, the task the card's test accuracy is measured on (accuracy: every "
            "answer of a row right).")
    text = (f"Curves are measured on the training task {trained} (loss on its training batches, the rest on its "
            f"test split); accuracy counts a row right only when every answer in it is right.")
    if tested != trained:
        text += (f" The card's test accuracy above is measured on {tested}, so the two differ: a row of "
                 f"{trained} holds several answers to get right at once.")
    return widgets.md_escape(text)


def unique_labels(cards: list[dict]) -> list[str]:
    """Card names, with the folder added where two cards share a name (table columns must differ)."""
    names = [c["name"] for c in cards]
    return [n if names.count(n) == 1 else f"{n} ({Path(c['_folder']).name})" for n, c in zip(names, cards)]


def comparison_table(cards: list[dict], labels: list[str]) -> pd.DataFrame:
    """Metrics as rows, models as columns; known metrics first, then any other numeric ones."""
    extra = sorted({k for c in cards for k, v in c.get("metrics", {}).items()
                    if k not in KNOWN_METRICS and widgets.number(v) is not None})
    rows = {}
    for field in CARD_FIELDS:
        rows[field] = [widgets.number(c.get(field)) for c in cards]
    for key in KNOWN_METRICS + extra:
        rows[key] = [widgets.number(c.get("metrics", {}).get(key)) for c in cards]
    return pd.DataFrame.from_dict(rows, orient="index", columns=labels, dtype=float)


def comparison_figure(cards: list[dict], labels: list[str]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("test accuracy", "parameters"))
    accuracy = [widgets.number(c.get("metrics", {}).get("test_accuracy")) for c in cards]
    params = [widgets.number(c.get("parameters")) for c in cards]
    labels = [widgets.plot_text(label) for label in labels]  # card names: ticks and hover
    fig.add_trace(go.Bar(x=labels, y=accuracy, name="test accuracy"), row=1, col=1)
    fig.add_trace(go.Bar(x=labels, y=params, name="parameters"), row=1, col=2)
    fig.update_yaxes(tickformat=".0%", row=1, col=1)
    fig.update_layout(height=360, showlegend=False, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def comparison_cell(value: float) -> str:
    """A whole number with thousands separators (parameters, tokens), anything else to 4 significant digits."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.4g}"


def show_comparison(cards: list[dict]) -> None:
    st.header("Compare")
    labels = unique_labels(cards)
    chosen = st.multiselect("Models to compare", range(len(cards)), default=list(range(min(2, len(cards)))),
                            format_func=lambda i: labels[i], key="models_compare")
    if not chosen:
        st.info("Pick models above to compare them.")
        return
    picked, picked_labels = [cards[i] for i in chosen], [labels[i] for i in chosen]
    st.dataframe(comparison_table(picked, picked_labels).style.format(comparison_cell, na_rep=MISSING))
    st.plotly_chart(comparison_figure(picked, picked_labels), key="compare_bars")


def show_recall_grid() -> None:
    """Issue #16's recall sweep (Zoology's plot): best accuracy against d_model per architecture."""
    table = widgets.recall_grid_table()
    if table is None:
        return
    from workbench.zoo import recall_grid

    st.header("Recall sweep: which architectures solve recall, at which width")
    st.caption(f"`wb zoo recall-sweep`: each architecture at d_model 64/128/256 and several learning rates, trained "
               f"on recall_multi, stopped early at 99% single-query recall; {len(table)} runs finished. Points: the "
               "best learning rate per width.")
    st.plotly_chart(recall_grid.sweep_figure(table), key="recall_grid")
    st.markdown(recall_grid.markdown_table(table))
    with st.expander("Every run"):
        st.dataframe(table, hide_index=True)


def main() -> None:
    st.set_page_config(page_title="Models · Workbench", layout="wide")
    st.title("Model zoo")
    cards = widgets.load_cards()
    if not cards:
        st.info(f"No models in {widgets.md_escape(widgets.models_dir())}. "
                "Build the zoo with `wb zoo build` (or `make demo`).")
        return
    st.dataframe(widgets.zoo_dataframe(cards).style.format(ZOO_FORMATS, na_rep=MISSING), hide_index=True)
    st.header("Model card")
    card = widgets.model_picker(cards, key="models_card")
    show_card(card)
    show_curves(card)
    show_comparison(cards)
    show_recall_grid()


main()
