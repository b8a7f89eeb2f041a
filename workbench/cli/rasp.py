"""`wb rasp list | compile | run | compare`: the RASP program library, compiled into exact Transformers.

The tables these commands print are plain functions here, which the app's RASP page shows too:

1. :func:`load_program`: a library program with ``--param`` values (typed by the program's defaults);
   ``--max-len`` sets the program's ``max_seq_len`` parameter where it has one, else the compiled length.
2. :func:`compile_program`: the compiled model and its compile time; a causal compile of a program that
   looks forward is one line naming the program and the selector.
3. :func:`layer_rows` (which heads and MLPs compute which variable, per layer), :func:`residual_rows`
   (the residual stream's named blocks) and :func:`trace_table` (each variable decoded from the residual
   stream after each sublayer, beside the interpreter's values); :func:`run_input` runs an input once for
   the outputs and that table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import app, friendly_errors, parse_assignments

rasp_app = typer.Typer(help="RASP programs compiled into exact Transformers: list, compile, run, compare.",
                       no_args_is_help=True)
app.add_typer(rasp_app, name="rasp")

MaxLenOpt = Annotated[int | None, typer.Option("--max-len", help="Longest input (default: the program's).")]
CausalOpt = Annotated[bool, typer.Option("--causal/--bidirectional", help="Causal attention mask.")]
ParamOpt = Annotated[list[str] | None, typer.Option("--param", help="A program parameter, key=value.")]


# ---------------------------------------------------------------- shared with the app's RASP page


def load_program(name: str, params: dict | None = None, max_len: int | None = None):
    """Step 1: the library program ``name`` with ``params``; ``max_len`` as described above."""
    from workbench.rasp.library import PROGRAMS, make_program

    params = dict(params or {})
    if name in PROGRAMS and max_len is not None and "max_seq_len" in PROGRAMS[name].defaults:
        params.setdefault("max_seq_len", max_len)
    return make_program(name, **params)


def parse_params(name: str, items: list[str] | None) -> dict:
    """``["n_symbols=4"]`` -> ``{"n_symbols": 4}``, typed by the program's defaults (any integer: an offset
    may be 0); a parameter whose default is None takes JSON or text."""
    from workbench.fields import Field
    from workbench.rasp.library import PROGRAMS, make_program

    if name not in PROGRAMS:
        make_program(name)  # the unknown-name error with the choices
    kinds = {bool: bool, int: int, float: float, str: str}
    fields = {k: Field(kinds.get(type(v))) for k, v in PROGRAMS[name].defaults.items()}
    return parse_assignments(items, "--param", fields, "parameter")


def compile_program(lib, max_len: int | None = None, causal: bool = False):
    """Step 2: ``(compiled model, seconds)``."""
    import warnings

    from workbench.rasp.compile import EmptySelectionWarning, compile_rasp_to_model

    if causal and not lib.causal:
        from workbench.rasp.library import PROGRAMS

        able = ", ".join(n for n, s in sorted(PROGRAMS.items()) if s.causal)
        prefix = f"program {lib.name!r} cannot be compiled causally (causal-compatible: {able}): "
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():  # an aggregate selecting nothing is None by design (shift_by)
            warnings.simplefilter("ignore", EmptySelectionWarning)
            compiled = compile_rasp_to_model(lib.program, lib.vocab, max_len or lib.max_seq_len, causal=causal)
    except ValueError as err:
        raise ValueError(f"{prefix}{err}" if causal and not lib.causal else str(err)) from None
    return compiled, time.perf_counter() - start


def parse_input(text: str) -> list[str]:
    """``"a b c"`` -> ``["a", "b", "c"]``; text without spaces is one token per character (``"683+345="``)."""
    return text.split() if any(ch.isspace() for ch in text.strip()) else list(text.strip())


def format_value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_values(values) -> str:
    return " ".join(format_value(v) for v in values)


def layer_rows(compiled) -> list[dict]:
    """Step 3: per layer, its heads (variable each computes) and its MLPs (variable and hidden width)."""
    rows = []
    for layer in range(compiled.plan.n_layers):
        heads, mlps = [], []
        for name, entry in compiled.circuit.items():
            heads += [f"H{h}: {name}" for lay, h in entry["heads"] if lay == layer]
            if entry["mlp"] == layer:
                mlps.append(f"{name} ({compiled.components[name].mlp.width})")
        rows.append({"layer": layer, "heads": ", ".join(heads) or "-", "mlps": ", ".join(mlps) or "-"})
    return rows


def residual_rows(compiled) -> list[dict]:
    """Step 3: the residual stream's blocks in order: name, first dimension, width, what it holds."""
    res, rows, start = compiled.residual, [], 0
    labels = res.labels
    while start < len(labels):
        head = labels[start].split(":")[0].split(".")[0]
        end = start
        while end < len(labels) and labels[end].split(":")[0].split(".")[0] == head:
            end += 1
        rows.append({"block": head, "dims": f"{start}-{end - 1}" if end - start > 1 else str(start),
                     "width": end - start, "holds": ", ".join(labels[start:end][:6]) + (" ..." if end - start > 6
                                                                                       else "")})
        start = end
    return rows


def trace_sites(compiled) -> list[tuple[str, str]]:
    """(column, hook): the embedding, then after each layer's attention and after its MLP."""
    sites = [("embed", "blocks.0.hook_resid_pre")]
    for layer in range(compiled.plan.n_layers):
        sites += [(f"L{layer} attn", f"blocks.{layer}.hook_resid_mid"), (f"L{layer} mlp",
                                                                          f"blocks.{layer}.hook_resid_post")]
    return sites


def trace_table(compiled, xs: list, run):
    """Step 3: variables x sites, each cell the variable's decoded values at every input position
    ("" before the variable is written), and the interpreter's values beside them. ``run``: the
    compiled model's ``apply`` on ``xs`` (its activation cache is what is decoded)."""
    import pandas as pd

    from workbench.rasp.interpreter import evaluate_each

    rows = {}
    for column, hook in trace_sites(compiled):
        decoded = compiled.decode(hook, run.cache[hook][0])
        for name in compiled.graph.order:
            rows.setdefault(name, {})[column] = format_values(decoded[name][1:]) if name in decoded else ""
    interpreted = evaluate_each(compiled.program, list(xs))
    for name in compiled.graph.order:
        rows[name]["interpreter"] = format_values(interpreted[name])
    return pd.DataFrame.from_dict(rows, orient="index")


def run_input(lib, compiled, xs: list):
    """``(interpreter outputs, compiled outputs, trace_table)`` of ``xs``, from one forward pass."""
    run = compiled.apply([compiled.compiler_bos, *xs])  # checks tokens and length first
    return lib.evaluate(xs), run.outputs, trace_table(compiled, xs, run)


def describe(compiled, seconds: float) -> list[str]:
    """The summary ``wb rasp compile`` prints."""
    from workbench.architectures import count_parameters

    cfg = compiled.model.cfg
    mode = "causal" if compiled.causal else "bidirectional"
    lines = [(f"{compiled.output}: {cfg.n_layers} layers, {cfg.n_heads} head(s) of width {cfg.d_head} per layer, "
              f"MLP width {cfg.d_mlp}, residual width {cfg.d_model}, {count_parameters(compiled.model):,} "
              f"parameters, {mode}, compiled in {seconds:.3f} s")]
    lines += [f"  layer {r['layer']}: heads {r['heads']}; MLP {r['mlps']}" for r in layer_rows(compiled)]
    lines.append("residual layout:")
    lines += [f"  {r['dims']:>9} {r['block']} ({r['width']}): {r['holds']}" for r in residual_rows(compiled)]
    return lines


def save_compiled(compiled, lib, seconds: float, folder: Path) -> Path:
    """A model folder for the compiled program, on a tokenizer of its vocabulary and output values."""
    from workbench.architectures import count_parameters
    from workbench.store.model_files import save_model_folder
    from workbench.zoo.rasp_models import own_tokenizer, rasp_card_section, rewire

    tokenizer = own_tokenizer(compiled)
    model, config = rewire(compiled, tokenizer, str, compiled.max_seq_len + 1)
    section = rasp_card_section(lib, compiled, seconds) | {"causal": compiled.causal,
                                                         "max_seq_len": compiled.max_seq_len}
    card = {"name": folder.name, "architecture": "transformer", "parameters": count_parameters(model),
            "metrics": {}, "rasp": section,
            "notes": f"compiled RASP program {lib.name!r}; outputs are written as the tokens str(value)"}
    return save_model_folder(folder, model, config, tokenizer, card)


# ---------------------------------------------------------------- commands


@rasp_app.command("list")
def rasp_list():
    """The library programs: parameters (defaults), causal-compatible, the task whose format they serve."""
    from workbench.rasp.library import PROGRAMS

    for name, spec in sorted(PROGRAMS.items()):
        params = ", ".join(f"{k}={v!r}" for k, v in spec.defaults.items()) or "-"
        causal = "causal" if spec.causal else "bidirectional only"
        typer.echo(f"{name:16s} {causal:18s} task {spec.task or '-':14s} {params}")


@rasp_app.command("compile")
@friendly_errors
def rasp_compile(program: str, max_len: MaxLenOpt = None, causal: CausalOpt = False, param: ParamOpt = None,
                 save: Annotated[Path | None, typer.Option("--save", help="Write a model folder here.")] = None):
    """Compile a library program: layers, heads, MLP widths, residual layout, parameters, compile time."""
    lib = load_program(program, parse_params(program, param), max_len)
    compiled, seconds = compile_program(lib, max_len, causal)
    for line in describe(compiled, seconds):
        typer.echo(line)
    if save is not None:
        typer.echo(f"wrote {save_compiled(compiled, lib, seconds, save)}")


@rasp_app.command("run")
@friendly_errors
def rasp_run(program: str, input: Annotated[str, typer.Argument(help="Tokens, space-separated ('a b c') or "
                                                                     "one per character ('683+345=').")],
             max_len: MaxLenOpt = None, causal: CausalOpt = False, param: ParamOpt = None):
    """Run a program on INPUT: interpreter and compiled outputs side by side, then each variable decoded
    from the residual stream at each layer."""
    lib = load_program(program, parse_params(program, param), max_len)
    compiled, _ = compile_program(lib, max_len, causal)
    xs = parse_input(input)
    want, got, table = run_input(lib, compiled, xs)  # unknown token or too long: one line
    typer.echo(f"input       {format_values(xs)}")
    typer.echo(f"interpreter {format_values(want)}")
    typer.echo(f"compiled    {format_values(got)}   {'(equal)' if want == got else '(DIFFERENT)'}")
    typer.echo("each variable decoded from the residual stream (- is None; blank: not yet written):")
    typer.echo(table.to_string())


@rasp_app.command("compare")
@friendly_errors
def rasp_compare(program: Annotated[str | None, typer.Option("--program", help="Library program (default: the "
                                                                               "model task's).")] = None,
                 model: Annotated[Path, typer.Option("--model", help="A trained model folder.")] = ...,
                 n_inputs: Annotated[int, typer.Option("--n", help="Test rows to compare on.")] = 512,
                 circuit: Annotated[bool, typer.Option(help="Also score the compiled circuit's graph.")] = True):
    """Compare a RASP program with a trained model: probes, head matches, features, circuit recovery."""
    try:
        from workbench.compare.run import compare, summary_lines
    except ImportError as err:
        raise ValueError(f"the comparison (workbench.compare) is not available: {err}") from None
    tables = compare(program, model, n_inputs=n_inputs, circuit=circuit)
    for line in summary_lines(tables):
        typer.echo(line)
    for name, table in tables.items():
        typer.echo(f"\n{name} ({len(table)} rows)")
        typer.echo(table.to_string(max_rows=40))
