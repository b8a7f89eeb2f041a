"""Study methods: each turns a step's parameters into calls of one ``workbench.interventions`` module and
returns its table, figure and summary (see :mod:`.methods`). Imported lazily by ``check_step``."""

from __future__ import annotations

import pandas as pd
import torch

from workbench.studies.figures import component_bars, layer_position_heatmap
from workbench.studies.methods import UnitContext, UnitResult, method


@method("ablate", "Zero, mean or resample ablation of heads, mixers, MLPs and state channels (clean prompts).",
        ablation="zero", kinds=None, layers=None, metric="logit_diff", reference="clean", mean_positions=False)
def run_ablate(ctx: UnitContext) -> UnitResult:
    from workbench.interventions.ablation import ablate, components

    p, pairs, model = ctx.params, ctx.pairs, ctx.bundle.model
    if p["reference"] not in ("clean", "corrupted"):
        raise ValueError(f"ablate reference {p['reference']!r}; choose one of: clean, corrupted")
    reference = pairs.clean if p["reference"] == "clean" else pairs.corrupted
    comps = components(model, pairs.clean, p.get("kinds"), p.get("layers"))
    table = ablate(model, pairs.clean, comps, pairs.answer, pairs.contrast, (p["metric"],), pairs.positions,
                   p["ablation"], reference, mean_positions=p["mean_positions"], seed=ctx.seed)
    top = table.reindex(table["change"].abs().sort_values(ascending=False).index).iloc[0]
    figure = component_bars(table, "change", f"{ctx.model_path.name}: {p['ablation']} ablation, change in "
                                             f"{p['metric']}")
    return UnitResult(table, figure, {"components": len(comps), "clean": round(float(top["clean"]), 4),
                                      "largest_change": f"{top['label']} {float(top['change']):+.4f}"})


@method("steer", "Add the clean-minus-corrupted mean difference at a hook of each layer to the corrupted "
                 "prompts, at the answer position, for several coefficients (all coefficients in one pass).",
        hook="resid_pre", layers=None, coefs=[0.5, 1.0, 2.0], metric="logit_diff")
def run_steer(ctx: UnitContext) -> UnitResult:
    from workbench.architectures.hooked import hook_name
    from workbench.interventions.hooks import check_layers
    from workbench.interventions.metrics import logits_at, metric
    from workbench.interventions.steering import mean_difference, steer

    p, pairs, model = ctx.params, ctx.pairs, ctx.bundle.model
    fn = metric(p["metric"])
    coefs = torch.tensor([float(c) for c in p["coefs"]])
    n, k = len(pairs), len(coefs)
    at = int(pairs.positions[0])
    if not bool((pairs.positions == at).all()):
        raise ValueError("steer needs every prompt's answer at one position; these pairs differ")
    with torch.no_grad():
        clean_logits = logits_at(model(pairs.clean), pairs.positions)
        corrupted = fn(logits_at(model(pairs.corrupted), pairs.positions), pairs.answer, pairs.contrast, clean_logits)
    rows = []
    for layer in check_layers(p.get("layers"), model.cfg.n_layers):
        hook = hook_name(p["hook"], layer)
        direction = mean_difference(model, pairs.clean, pairs.corrupted, hook, [at])
        row_coefs = coefs.repeat_interleave(n).view(-1, 1, 1)  # k blocks of n rows
        logits = steer(model, pairs.corrupted.repeat(k, 1), hook, direction, row_coefs, [at])
        values = fn(logits_at(logits, pairs.positions.repeat(k)), pairs.answer.repeat(k), pairs.contrast.repeat(k),
                    clean_logits.repeat(k, 1)).double().view(k, n).mean(1)
        rows += [{"layer": layer, "hook": hook, "coef": float(c), "metric": p["metric"], "value": float(v),
                  "corrupted": float(corrupted.double().mean()), "change": float(v - corrupted.double().mean())}
                 for c, v in zip(coefs, values, strict=True)]
    table = pd.DataFrame(rows)
    figure = layer_position_heatmap(table, "change", f"{ctx.model_path.name}: steering {p['hook']} toward the clean "
                                                     f"answer, change in {p['metric']}", row="layer", column="coef")
    best = table.loc[table["change"].idxmax()]
    return UnitResult(table, figure, {"best": f"layer {int(best['layer'])} coef {best['coef']}: "
                                              f"{float(best['change']):+.4f}"})


@method("patch", "Activation patching sweep: every layer x position of a hook family (resid_pre, mixer_out, "
                 "a template like blocks.{l}.mixer.hook_state, or 'state': every recurrent state hook of the "
                 "layer together), or every layer x head / channel; batched.",
        hook="resid_pre", sweep="layer_position", direction="denoise", metric="logit_diff", layers=None,
        positions=None, position=None, dim=-1)
def run_patch(ctx: UnitContext) -> UnitResult:
    from workbench.interventions import patching
    from workbench.interventions.causal_tracing import state_hooks

    p, pairs, model = ctx.params, ctx.pairs, ctx.bundle.model
    common = {"direction": p["direction"], "metric_name": p["metric"]}
    if p["hook"] == "state" and not any(state_hooks(model, layer) for layer in range(model.cfg.n_layers)):
        # a study over several architectures: the Transformer has no state to patch, which is a finding
        return UnitResult(pd.DataFrame(columns=["layer", "position", "value", "normalised"]), None,
                          {"note": "no recurrent state hooks in this model"})
    if p["sweep"] == "layer_position":
        result = patching.sweep_layer_position(model, pairs, p["hook"], p.get("layers"), p.get("positions"), **common)
    elif p["sweep"] in ("heads", "channels"):
        sweep = patching.sweep_heads if p["sweep"] == "heads" else patching.sweep_channels
        hook = p["hook"] if p["hook"] != "resid_pre" or p["sweep"] == "channels" else "blocks.{l}.attn.hook_z"
        kwargs = {"dim": p["dim"] if p["sweep"] == "channels" else 2}
        result = sweep(model, pairs, hook, p.get("layers"), None, position=p.get("position"), **kwargs, **common)
    else:
        raise ValueError(f"unknown patching sweep {p['sweep']!r}; choose one of: layer_position, heads, channels")
    table = result.table()
    column = result.axes[1]
    figure = layer_position_heatmap(table, "normalised", f"{ctx.model_path.name}: {p['direction']} patching of "
                                    f"{p['hook']} ({p['metric']}, normalised: 0 corrupted, 1 clean)",
                                    ctx.tokens() if column == "position" else None, column=column)
    best = table.loc[table["normalised"].abs().idxmax()]
    return UnitResult(table, figure, {"clean": round(float(result.clean.mean()), 4),
                                      "corrupted": round(float(result.corrupted.mean()), 4),
                                      "strongest": f"layer {int(best['layer'])} {column} {best[column]}: "
                                                   f"{float(best['normalised']):.3f}"})


@method("trace", "Causal tracing (ROME): noise the subject's embeddings, restore one hidden state at a time "
                 "(resid_post, mixer_out, mlp_out, recurrent state); average indirect effect per layer x position.",
        kinds=None, samples=10, noise_scale=None, subject_positions=None)
# subject: subject_positions when given; for toyworld the template's subject slot; otherwise the positions
# where the clean and corrupted prompts differ
def run_trace(ctx: UnitContext) -> UnitResult:
    from workbench.interventions.causal_tracing import causal_trace, toyworld_subject_mask

    p, pairs, model = ctx.params, ctx.pairs, ctx.bundle.model
    if p.get("subject_positions") is not None:
        subject = torch.zeros(pairs.clean.shape, dtype=torch.bool)
        subject[:, list(p["subject_positions"])] = True
    elif pairs.source.startswith("toyworld"):
        kind = ctx.prompts.get("corrupt") or "two_hop"
        mask = toyworld_subject_mask(kind, int(ctx.prompts.get("template") or 0), pairs.n_pos)
        subject = mask.expand(len(pairs), -1).clone()
    else:  # the subject is what the pair's corruption changes (recall: the query key or the value)
        subject = pairs.clean != pairs.corrupted
        if not bool(subject.any(1).all()):
            raise ValueError("trace: some pairs do not differ anywhere; give subject_positions")
    result = causal_trace(model, pairs.clean, subject, pairs.answer, pairs.positions, p.get("kinds"),
                          n_samples=int(p["samples"]), noise_scale=p.get("noise_scale"), seed=ctx.seed)
    table = result.frame()
    figure = trace_figure(table, f"{ctx.model_path.name}: causal tracing, AIE on p(answer) (clean "
                                 f"{result.p_clean:.3f}, noised {result.p_noised:.3f})", ctx.tokens())
    best = table.loc[table["aie"].idxmax()]
    return UnitResult(table, figure, {"p_clean": round(result.p_clean, 4), "p_noised": round(result.p_noised, 4),
                                      "strongest": f"{best['kind']} layer {int(best['layer'])} position "
                                                   f"{int(best['position'])}: {float(best['aie']):.3f}"})


def trace_figure(table: pd.DataFrame, title: str, tokens: list[str]):
    """One layer x position heatmap per restored kind, stacked."""
    from plotly.subplots import make_subplots

    from workbench.studies.figures import plain

    kinds = list(dict.fromkeys(table["kind"]))
    fig = make_subplots(rows=len(kinds), cols=1, subplot_titles=[plain(k) for k in kinds], shared_xaxes=True,
                        vertical_spacing=0.08)
    for row, kind in enumerate(kinds, start=1):
        panel = layer_position_heatmap(table[table["kind"] == kind], "aie", kind, tokens)
        trace = panel.data[0]
        trace.update(colorscale="Purples", zmid=None, zmin=0, zmax=float(table["aie"].max()) or 1.0,
                     showscale=row == 1)
        fig.add_trace(trace, row=row, col=1)
    fig.update_layout(title=plain(title), height=260 * len(kinds) + 80, margin={"l": 60, "r": 20, "t": 70, "b": 80})
    return fig


def _dictionaries(ctx: UnitContext, recipe: str):
    """A replacement set: a recipe committed beside the model (transcoders, clt) or a set folder."""
    from workbench.attribution.jobs import load_replacement_set

    folder = ctx.model_path / "dictionaries" / recipe
    return load_replacement_set(ctx.bundle, folder if folder.is_dir() else recipe)[0]


@method("features", "Feature swap (the Biology paper's Texas -> California): at the positions where the corrupted "
                    "prompt differs, set every feature of every layer to its value on the corrupted prompt, live "
                    "(attention and gates respond) and frozen (what the graph predicts); does the answer flip?",
        dictionaries="transcoders", metric="logit_diff")
def run_features(ctx: UnitContext) -> UnitResult:
    from workbench.interventions.features import FeatureEdit, FeatureSplice
    from workbench.interventions.metrics import logits_at, metric

    p, pairs, model = ctx.params, ctx.pairs, ctx.bundle.model
    dicts, fn = _dictionaries(ctx, p["dictionaries"]), metric(p["metric"])
    clean, donor = FeatureSplice(model, dicts, pairs.clean), FeatureSplice(model, dicts, pairs.corrupted)
    edits = []
    for row, pos in (pairs.clean != pairs.corrupted).nonzero().tolist():
        for layer in clean.read_layers:
            a, b = clean.activations(layer)[row, pos], donor.activations(layer)[row, pos]
            for f in ((a != 0) | (b != 0)).nonzero().flatten().tolist():
                edits.append(FeatureEdit(layer, f, "set", float(b[f]), positions=(pos,), rows=(row,)))
    score = lambda logits: fn(logits_at(logits, pairs.positions), pairs.answer, pairs.contrast,
                              logits_at(clean.clean_logits, pairs.positions)).double()
    values = {"clean": score(clean.clean_logits), "corrupted": score(donor.clean_logits),
              "swapped_live": score(clean.run(edits, "live")), "swapped_frozen": score(clean.run(edits, "frozen"))}
    span = values["clean"] - values["corrupted"]
    table = pd.DataFrame({"pair": range(len(pairs)), **{k: v.numpy() for k, v in values.items()},
                          "flip_live": ((values["clean"] - values["swapped_live"]) / span).numpy(),
                          "flip_frozen": ((values["clean"] - values["swapped_frozen"]) / span).numpy()})
    long = table.melt(id_vars="pair", value_vars=["flip_live", "flip_frozen"], var_name="label", value_name="flip")
    figure = component_bars(long.groupby("label", as_index=False)["flip"].mean(), "flip",
                            f"{ctx.model_path.name}: feature swap at the changed positions (1 = the answer moves "
                            "all the way to the corrupted prompt's)")
    return UnitResult(table, figure, {"edits": len(edits), "flip_live": round(float(table["flip_live"].mean()), 3),
                                      "flip_frozen": round(float(table["flip_frozen"].mean()), 3)})


@method("validate", "Graph validation by intervention on the clean prompts: per graph, the correlation between "
                    "the top-logit change predicted for ablating each top feature and the live change.",
        dictionaries="transcoders", top_k=10)
def run_validate(ctx: UnitContext) -> UnitResult:
    import plotly.graph_objects as go

    from workbench.attribution.attribute import AttributionConfig, attribute
    from workbench.interventions.validation import validate_graph
    from workbench.studies.figures import plain

    p, pairs, model = ctx.params, ctx.pairs, ctx.bundle.model
    dicts = _dictionaries(ctx, p["dictionaries"])
    rows, points = [], []
    for i, tokens in enumerate(pairs.clean):
        graph = attribute(model, dicts, tokens, config=AttributionConfig(), progress=False)
        v = validate_graph(model, dicts, graph, int(p["top_k"]))
        rows.append({"prompt": i, "pearson": v["pearson"], "spearman": v["spearman"], "n_features": v["n_features"],
                     "frozen_max_deviation": v.get("frozen_max_deviation")})
        points += [(i, f, a, b) for f, a, b in zip(v.get("features", []), v.get("predicted", []),
                                                   v.get("actual", []), strict=True)]
    table = pd.DataFrame(rows)
    fig = go.Figure(go.Scatter(x=[q[2] for q in points], y=[q[3] for q in points], mode="markers",
                               text=[plain(f"prompt {q[0]}: {q[1]}") for q in points],
                               hovertemplate="%{text}<br>predicted %{x:.3f}<br>live %{y:.3f}<extra></extra>"))
    fig.update_layout(title=plain(f"{ctx.model_path.name}: top-logit change when a top feature is ablated"),
                      xaxis_title="predicted by the graph", yaxis_title="live model", height=420)
    return UnitResult(table, fig, {"graphs": len(table), "pearson": round(float(table["pearson"].mean()), 3),
                                   "spearman": round(float(table["spearman"].mean()), 3)})


@method("path_patch", "Path patching (IOI): each sender (embedding, heads or mixers, MLPs) takes its corrupted "
                      "value, its effect reaching only the receivers (default: the logits, i.e. direct effects).",
        receivers=["logits"], heads=None, metric="logit_diff")
def run_path_patch(ctx: UnitContext) -> UnitResult:
    from workbench.interventions.path_patching import Receiver, path_patch, senders

    p, pairs, model = ctx.params, ctx.pairs, ctx.bundle.model
    chosen = []
    for r in p["receivers"]:  # "logits", "L1 mlp_in", "L0 mixer_in"
        if r == "logits":
            chosen.append(Receiver("logits", model.cfg.n_layers))
            continue
        layer, _, kind = str(r).partition(" ")
        if not layer.startswith("L") or not layer[1:].isdigit():
            raise ValueError(f"unknown receiver {r!r}; write 'logits' or 'L<layer> mixer_in|mlp_in'")
        chosen.append(Receiver(kind, int(layer[1:])))
    table = path_patch(model, pairs, senders(model, pairs.clean, p.get("heads")), chosen, p["metric"])
    figure = component_bars(table.rename(columns={"sender": "label"}), "normalised",
                            f"{ctx.model_path.name}: path patching to {', '.join(map(str, p['receivers']))} "
                            f"(normalised {p['metric']}: 0 corrupted, 1 clean)")
    best = table.loc[(table["effect"]).abs().idxmax()]
    return UnitResult(table, figure, {"senders": len(table), "strongest": f"{best['sender']} "
                                                                          f"{float(best['effect']):+.4f}"})


@method("eap", "Edge attribution patching (EAP, EAP-IG) and node AtP over the component graph, ranked and "
               "compared with real edge and node patching (Spearman, top-k overlap).",
        heads=None, metric="logit_diff", ig_steps=5, top_k=10)
def run_eap(ctx: UnitContext) -> UnitResult:
    import plotly.graph_objects as go

    from workbench.interventions.attribution_patching import edge_attribution
    from workbench.studies.figures import plain

    p, pairs, model = ctx.params, ctx.pairs, ctx.bundle.model
    result = edge_attribution(model, pairs, p.get("heads"), p["metric"], int(p["ig_steps"]), int(p["top_k"]))
    edges = result.edges.assign(edge=result.edges["sender"] + " -> " + result.edges["receiver"])
    fig = go.Figure([go.Scatter(x=edges["real"], y=edges[m], mode="markers", name=m,
                                text=[plain(e) for e in edges["edge"]],
                                hovertemplate="%{text}<br>real %{x:.4f}<br>score %{y:.4f}<extra></extra>")
                     for m in ("eap", "eap_ig")])
    fig.update_layout(title=plain(f"{ctx.model_path.name}: edge scores against real edge patching"),
                      xaxis_title="real edge patching", yaxis_title="attribution score", height=420)
    stats = {row["method"]: row for row in result.agreement.to_dict("records")}
    summary = {m: f"spearman {stats[m]['spearman']:.3f}, top-{stats[m]['k']} {stats[m]['top_k_overlap']:.2f}"
               for m in stats}
    return UnitResult(edges, fig, {"edges": len(edges), **summary})
