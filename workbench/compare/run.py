"""Compiled versus trained: every comparison of a RASP program with a trained model, as tables.

``compare(program_name, model_folder)`` is what ``wb rasp compare --program P --model M`` runs.

Algorithm:

1. Load the trained model and the task on its card (``eval_task``, else ``task``); draw ``n_inputs``
   test rows; ``workbench.rasp.library_tasks`` gives the program in the task's format and maps each
   row to its input (the row after ``<bos>`` without its last token), so program position ``i`` sits
   at token position ``offset + i`` (``offset = 1``).
2. Evaluate every named SOp and every attention selector of the program with the interpreter
   (:mod:`workbench.compare.variables`).
3. ``probes``: per residual site and variable, held-out linear-probe accuracy (R^2 for numerical
   variables) beside the majority baseline (:mod:`workbench.compare.probes`).
4. ``heads`` / ``head_scores`` (transformers): the best-matching trained head per selector
   (:mod:`workbench.compare.heads`).
5. ``sensitivity``: with the model's per-layer transcoders, for each layer, categorical variable and
   value, the feature whose firing best predicts "variable == value" (largest Youden's J), with its
   sensitivity and specificity (:mod:`workbench.compare.sensitivity`).
6. ``circuit``: the compiled program's attribution graph against its true dependency graph
   (:mod:`workbench.compare.circuit`); a table with one row per scored edge set.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from workbench.compare.heads import head_patterns, match_heads, score_matrix
from workbench.compare.probes import gather_positions, probe_table, residual_streams
from workbench.compare.sensitivity import best_feature_per_value, features_vs_variable
from workbench.compare.variables import Variable, evaluate_variables, selector_matrices

DICT_SUBFOLDER = Path("dictionaries") / "transcoders"


def comparison_inputs(program_name: str | None, bundle, n_inputs: int, seed: int):
    """Step 1: ``(library program, tokens [n, T], program inputs, offset)`` from the model's own task.

    ``workbench.rasp.library_tasks`` fixes the alignment: the input is the row after ``<bos>`` without
    its last token, so program index ``i`` is token position ``i + 1`` (``offset = 1``).
    """
    from workbench.rasp.library_tasks import task_input, task_program
    from workbench.tasks import make_task

    spec = dict(bundle.card.get("eval_task") or bundle.card.get("task") or {})
    if "name" not in spec:
        raise ValueError(f"model {bundle.name!r} ({bundle.folder}) has no task on its card; "
                         "comparison needs the task the model was trained on")
    task = make_task(spec.pop("name"), **spec)
    library_program = task_program(task, program_name)
    batch = task.sample("test", n_inputs, seed)
    inputs = [task_input(task, row.tolist()) for row in batch.tokens]
    return library_program, batch.tokens, inputs, 1


def is_transformer(model) -> bool:
    return "blocks.0.attn.hook_pattern" in getattr(model, "hook_dict", {})


@torch.no_grad()
def transcoder_sensitivity(bundle, dict_folder: Path, tokens: torch.Tensor, variables: dict[str, Variable],
                           lengths: list[int], offset: int = 1, threshold: float = 0.0) -> pd.DataFrame:
    """Step 5: per (transcoder layer, categorical variable, value) the best feature's counts and rates."""
    from workbench.attribution.jobs import load_replacement_set
    from workbench.attribution.replacement import hook_layer

    dictionaries, _ = load_replacement_set(bundle, dict_folder)
    hooks = [h for d in dictionaries for h in d.config.input_hooks]
    _, cache = bundle.model.run_with_cache(tokens, names_filter=lambda n: n in hooks)
    tables = []
    for d in dictionaries:
        if d.config.n_layers != 1:
            raise ValueError(f"{dict_folder}: sensitivity reads per-layer transcoders; a {d.config.kind} "
                             f"over {d.config.n_layers} layers is not one")
        hook = d.config.input_hooks[0]
        acts = d.encode(gather_positions(cache[hook].float(), lengths, offset)).numpy()
        for name, var in variables.items():
            if var.numerical:
                continue
            best = best_feature_per_value(features_vs_variable(acts, var.values, threshold))
            best.insert(0, "variable", name)
            best.insert(0, "layer", hook_layer(hook, "in"))
            tables.append(best)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def compiled_circuit(program, inputs: list[list], vocab=None, max_seq_len: int | None = None,
                     progress: bool = False) -> pd.DataFrame:
    """Step 6: compile the program (by default for these inputs' tokens and length), score its graphs."""
    from workbench.compare.circuit import circuit_recovery
    from workbench.rasp.compile import compile_rasp_to_model

    vocab = {tok for xs in inputs for tok in xs} if vocab is None else vocab
    compiled = compile_rasp_to_model(program, vocab, max_seq_len or max(len(xs) for xs in inputs))
    return circuit_recovery(compiled, program, inputs, progress=progress)


def compare(program_name: str | None, model_folder: str | Path, n_inputs: int = 512, seed: int = 0,
            circuit: bool = True, circuit_inputs: int = 4, progress: bool = False) -> dict[str, pd.DataFrame]:
    """Every comparison of ``program_name`` with the trained model in ``model_folder`` (steps 1-6).

    ``program_name`` None picks the library's program for the model's task.
    """
    from workbench.store.model_files import load_model_folder

    bundle = load_model_folder(model_folder)
    bundle.model.eval()
    library_program, tokens, inputs, offset = comparison_inputs(program_name, bundle, n_inputs, seed)
    program = library_program.program
    lengths = [len(xs) for xs in inputs]
    variables = evaluate_variables(program, inputs)  # step 2
    tables = {"probes": probe_table(residual_streams(bundle.model, tokens), variables, lengths, offset)}
    if is_transformer(bundle.model):  # step 4
        selectors = selector_matrices(program, inputs)
        patterns = head_patterns(bundle.model, tokens)
        tables["heads"] = match_heads(selectors, patterns, offset)
        tables["head_scores"] = score_matrix(selectors, patterns, offset)
    dict_folder = Path(model_folder) / DICT_SUBFOLDER
    if dict_folder.is_dir():  # step 5
        tables["sensitivity"] = transcoder_sensitivity(bundle, dict_folder, tokens, variables, lengths, offset)
    if circuit:  # step 6
        tables["circuit"] = compiled_circuit(program, inputs[:circuit_inputs], library_program.vocab,
                                             library_program.max_seq_len, progress)
    for table in tables.values():
        table.attrs.update({"program": library_program.name, "model": bundle.name, "n_inputs": len(inputs)})
    return tables


def summary_lines(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Short text for the CLI: probe scores as a layer x variable grid, then head matches and circuit."""
    lines = []
    probes = tables.get("probes")
    if probes is not None and len(probes):
        # a variable that exists only at some positions is scored there (its own probe; probes.py step 7)
        partial = probes["baseline_defined"].ne(probes["baseline"]) if "baseline_defined" in probes else False
        shown = probes.assign(shown=probes["score"].where(~partial, probes.get("score_defined")),
                              shown_base=probes["baseline"].where(~partial, probes.get("baseline_defined")),
                              partial=partial)
        grid = shown.pivot(index="variable", columns="layer", values="shown")
        first = shown.groupby("variable")[["shown_base", "partial"]].first()
        lines.append("probe score per residual site (layer = stream entering it; last = output), baseline "
                     "(* = scored only where the variable exists):")
        for name, row in grid.iterrows():
            cells = " ".join(f"{v:6.3f}" for v in row.tolist())
            mark = "*" if first.loc[name, "partial"] else " "
            lines.append(f"  {name:>19}{mark} {cells}   base {first.loc[name, 'shown_base']:.3f}")
    for _, r in tables.get("heads", pd.DataFrame()).iterrows():
        lines.append(f"selector {r.selector} ({r.computes}): best {r.best_head} {r.score:.3f}, runner-up "
                     f"{r.runner_up} {r.runner_up_score:.3f}; on selecting rows {r.best_head_selecting} "
                     f"{r.score_selecting:.3f}")
    for _, r in tables.get("circuit", pd.DataFrame()).iterrows():
        lines.append(f"circuit: precision {r.precision:.3f} recall {r.recall:.3f} AUROC {r.auroc:.3f} "
                     f"({r.true_edges} true edges, {r.predicted_edges} predicted; transcoder FVU "
                     f"{r.max_transcoder_fvu:.1e})")
    return lines
