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
