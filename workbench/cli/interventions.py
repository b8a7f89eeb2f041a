"""`wb patch | ablate | steer | trace`: one intervention on one model, run as a one-step study.

Each command builds a study spec from its options (the model, the prompt pairs, the method's
parameters), runs it through :func:`workbench.studies.run_study`, prints the unit's summary and where
its table (parquet) and figure (plotly JSON) went. The study name is derived from the spec, so the same
command twice reuses the stored result; ``--fresh`` recomputes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import ArtifactsOpt, ModelsOpt, app, friendly_errors, parse_assignments

ModelName = Annotated[str, typer.Option("--model", help="A zoo model name (transformer-recall) or a model folder.")]
TaskOpt = Annotated[str | None, typer.Option("--task", help="Prompt-pair task (default: the model card's task).")]
CorruptOpt = Annotated[str | None, typer.Option("--corrupt", help="What the corrupted prompt changes: recall key|"
                                                                  "value; toyworld a fact kind (two_hop, city_state...).")]
NOpt = Annotated[int, typer.Option("--n", min=1, help="Prompt pairs.")]
CleanOpt = Annotated[list[str] | None, typer.Option("--clean", help="Typed clean prompt (space-separated tokens); "
                                                                    "repeat for several.")]
CorruptedOpt = Annotated[list[str] | None, typer.Option("--corrupted", help="Typed corrupted prompt, one per --clean.")]
AnswerOpt = Annotated[list[str] | None, typer.Option("--answer", help="The clean prompt's answer token, one per --clean.")]
ContrastOpt = Annotated[list[str] | None, typer.Option("--contrast", help="The corrupted prompt's answer token.")]
ParamOpt = Annotated[list[str] | None, typer.Option("--param", help="Any other method parameter key=value (see "
                                                                    "`wb study methods`).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the prompt sampler and any noise.")]
FreshOpt = Annotated[bool, typer.Option(help="Recompute even when this exact run is stored.")]


def _prompts(task, corrupt, n, clean, corrupted, answer, contrast) -> dict:
    typed = {"clean": clean, "corrupted": corrupted, "answer": answer, "contrast": contrast}
    if any(typed.values()):
        return typed
    return {k: v for k, v in {"task": task, "corrupt": corrupt, "n": n}.items() if v is not None}


def run_one(method: str, model: str, prompts: dict, params: dict, seed: int, fresh: bool, models, artifacts) -> None:
    from workbench.store import Catalog
    from workbench.studies import parse_spec, run_study

    params = {k: v for k, v in params.items() if v is not None}
    body = {"seed": seed, "models": [model], "prompts": prompts, "steps": [{"method": method, **params}]}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:10]
    spec = parse_spec({"name": f"{method}-{Path(model).name}-{digest}", **body}, f"wb {method}")
    result = run_study(spec, Catalog(artifacts), fresh=fresh, models_dir=models)
    unit = result.units[0]
    stored = " (stored earlier; --fresh recomputes)" if result.resumed else ""
    typer.echo(f"{method} on {unit['model']}{stored}: " + ", ".join(f"{k} {v}" for k, v in unit["summary"].items()))
    typer.echo(f"table: {result.folder / unit['table']}")
    if unit.get("figure"):
        typer.echo(f"figure: {result.folder / unit['figure']}")


@app.command("patch")
@friendly_errors
def patch_cmd(model: ModelName, hook: Annotated[str, typer.Option(help="Hook family: a shared kind (resid_pre, "
                                                                       "mixer_out, ...) or a template with {l}.")] = "resid_pre",
              sweep: Annotated[str, typer.Option(help="layer_position, heads or channels.")] = "layer_position",
              direction: Annotated[str, typer.Option(help="denoise (corrupted run, clean values in) or noise.")] = "denoise",
              metric: Annotated[str, typer.Option(help="logit_diff, answer_prob or kl.")] = "logit_diff",
              task: TaskOpt = None, corrupt: CorruptOpt = None, n: NOpt = 16, clean: CleanOpt = None,
              corrupted: CorruptedOpt = None, answer: AnswerOpt = None, contrast: ContrastOpt = None,
              param: ParamOpt = None, seed: SeedOpt = 0, fresh: FreshOpt = False, models: ModelsOpt = None,
              artifacts: ArtifactsOpt = None):
    """Activation patching sweep (batched): every layer x position (or head, or channel) of a hook."""
    params = {"hook": hook, "sweep": sweep, "direction": direction, "metric": metric,
              **parse_assignments(param, "--param")}
    run_one("patch", model, _prompts(task, corrupt, n, clean, corrupted, answer, contrast), params, seed, fresh,
            models, artifacts)


@app.command("ablate")
@friendly_errors
def ablate_cmd(model: ModelName, ablation: Annotated[str, typer.Option(help="zero, mean or resample.")] = "zero",
               kinds: Annotated[list[str] | None, typer.Option("--kind", help="head, mixer, mlp, state or a state "
                                                                          "family; repeat (default: all).")] = None,
               metric: Annotated[str, typer.Option(help="logit_diff, answer_prob or kl.")] = "logit_diff",
               task: TaskOpt = None, corrupt: CorruptOpt = None, n: NOpt = 16, clean: CleanOpt = None,
               corrupted: CorruptedOpt = None, answer: AnswerOpt = None, contrast: ContrastOpt = None,
               param: ParamOpt = None, seed: SeedOpt = 0, fresh: FreshOpt = False, models: ModelsOpt = None,
               artifacts: ArtifactsOpt = None):
    """Ablate every head, mixer, MLP and state channel (batched) and rank them by the metric's change."""
    params = {"ablation": ablation, "kinds": kinds, "metric": metric, **parse_assignments(param, "--param")}
    run_one("ablate", model, _prompts(task, corrupt, n, clean, corrupted, answer, contrast), params, seed, fresh,
            models, artifacts)


@app.command("steer")
@friendly_errors
def steer_cmd(model: ModelName, hook: Annotated[str, typer.Option(help="Shared hook kind per layer.")] = "resid_pre",
              coef: Annotated[list[float] | None, typer.Option("--coef", help="Coefficients; repeat.")] = None,
              metric: Annotated[str, typer.Option(help="logit_diff, answer_prob or kl.")] = "logit_diff",
              task: TaskOpt = None, corrupt: CorruptOpt = None, n: NOpt = 16, clean: CleanOpt = None,
              corrupted: CorruptedOpt = None, answer: AnswerOpt = None, contrast: ContrastOpt = None,
              param: ParamOpt = None, seed: SeedOpt = 0, fresh: FreshOpt = False, models: ModelsOpt = None,
              artifacts: ArtifactsOpt = None):
    """Steer the corrupted prompts with the clean-minus-corrupted mean difference at each layer."""
    params = {"hook": hook, "coefs": coef, "metric": metric, **parse_assignments(param, "--param")}
    run_one("steer", model, _prompts(task, corrupt, n, clean, corrupted, answer, contrast), params, seed, fresh,
            models, artifacts)


@app.command("trace")
@friendly_errors
def trace_cmd(model: ModelName,
              kinds: Annotated[list[str] | None, typer.Option("--kind", help="resid_pre, resid_post, mixer_out, "
                                                                         "mlp_out, state; repeat.")] = None,
              samples: Annotated[int, typer.Option(min=1, help="Noise samples per prompt.")] = 10,
              task: TaskOpt = None, corrupt: CorruptOpt = None, n: NOpt = 16, param: ParamOpt = None,
              seed: SeedOpt = 0, fresh: FreshOpt = False, models: ModelsOpt = None, artifacts: ArtifactsOpt = None):
    """Causal tracing (ROME): where the model carries a fact, as a layer x position map per restored kind."""
    params = {"kinds": kinds, "samples": samples, **parse_assignments(param, "--param")}
    run_one("trace", model, _prompts(task, corrupt, n, None, None, None, None), params, seed, fresh, models,
            artifacts)
