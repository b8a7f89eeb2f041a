"""Circuit recovery: does the attribution graph of a compiled model find the program's true circuit?

A compiled MLP admits an exact transcoder: its hidden units are the features (ReLU), its ``W_in``/``b_in``
the encoder and its ``W_out``/``b_out`` the decoder, so the replacement model is the model itself
(FVU 0, no error nodes) and every graph edge is a real direct effect.

Algorithm:

1. Build one exact transcoder per layer from the compiled model's MLP weights; check FVU ~ 0 on the
   inputs (a failure means the construction, not the model, is wrong).
2. Name every hidden unit by the RASP variable it writes: the residual dimensions its ``W_out`` row
   touches carry labels ``name:value`` (categorical) or ``name`` (numerical); the variable with the
   largest weight mass wins. Dead units (an all-zero row) belong to no variable.
3. Attribute each input (``workbench.attribution.attribute``) and collapse the graph onto variables:
   token nodes are ``embed`` (token and position embeddings: ``tokens`` and ``indices``), feature nodes
   their unit's variable, logit nodes ``logits``. The weight of the edge ``A -> B`` is the mean over
   B's nodes of the share of the node's absolute input that comes from A's nodes (rows of ``|adjacency|``
   normalised to sum 1), averaged over inputs.
4. The true edges come from the program: ``A -> B`` when B's expression reads A through expressions
   that are no graph node (attention-computed aggregates carry no features, so a path through them is
   one direct edge in the graph); ``tokens`` is ``embed``, while ``indices`` (position embeddings) and
   constants are biases in the graph (no edge),
   and ``logits`` reads the program's output. The graph freezes attention patterns, so it sees value
   paths only: an Aggregate reads its SOp (not its selector's keys and queries), a SelectorWidth reads
   ``embed`` (its head attends to ``<bos>``); ``value_paths_only=False`` gives the full dependencies.
5. Candidates are the pairs that could be edges (source in an earlier layer than the target);
   predicted edges are those with weight above ``threshold``: precision and recall against the truth,
   and the AUROC of the weights as a score for "is a true edge" (Mann-Whitney, ties counted half).
   Scored twice: over all edges, and over edges between variables (``embed`` left out as a source),
   because the compiled embedding carries the constant ``one`` dimension that every MLP reads as its
   bias, so ``embed -> MLP`` edges appear where the program has none.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from workbench.attribution.attribute import attribute
from workbench.attribution.prune import normalize_rows
from workbench.dictionaries.metrics import fvu
from workbench.dictionaries.models import DictionaryConfig, Transcoder

EMBED, LOGITS = "embed", "logits"


def exact_transcoders(model) -> list[Transcoder]:
    """Step 1: per layer, a ReLU transcoder whose features are the compiled MLP's hidden units."""
    if model.cfg.act_fn != "relu":
        raise ValueError(f"an exact transcoder needs ReLU MLPs; this model's act_fn is {model.cfg.act_fn!r}")
    out = []
    for layer in range(model.cfg.n_layers):
        config = DictionaryConfig(kind="transcoder", d_in=model.cfg.d_model, n_features=model.cfg.d_mlp,
                                  activation="relu", decoder_norm="penalty",
                                  input_hooks=[f"blocks.{layer}.hook_mlp_in"],
                                  output_hooks=[f"blocks.{layer}.hook_mlp_out"])
        t = Transcoder(config)
        with torch.no_grad():
            t.W_enc.copy_(model.W_in[layer].detach()[None])
            t.b_enc.copy_(model.b_in[layer].detach()[None])
            t.W_dec[0].copy_(model.W_out[layer].detach()[:, None, :])
            t.b_dec.copy_(model.b_out[layer].detach()[None])
        out.append(t.eval())
    return out


@torch.no_grad()
def transcoder_fvu(model, transcoders: list[Transcoder], tokens: torch.Tensor) -> list[float]:
    """Step 1's check: per layer, FVU of the transcoder's output against the MLP's."""
    hooks = [h for t in transcoders for h in t.config.input_hooks + t.config.output_hooks]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hooks)
    out = []
    for t in transcoders:
        x = cache[t.config.input_hooks[0]].reshape(-1, t.config.d_in)
        y = cache[t.config.output_hooks[0]].reshape(-1, t.config.d_out)
        recon, _ = t(x)
        out.append(float(fvu(recon, y)[0]) if float(y.std()) > 0 else float((recon - y).abs().max()))
    return out


def unit_variables(model, residual_labels: list[str], tol: float = 1e-6) -> dict[int, list[str | None]]:
    """Step 2: ``{layer: [variable of each hidden unit, None if dead]}``."""
    names = np.array([label.split(":")[0] for label in residual_labels])
    distinct = sorted(set(names))
    masks = np.stack([names == n for n in distinct], 1).astype(np.float64)  # [d_model, variables]
    out = {}
    for layer in range(model.cfg.n_layers):
        mass = np.abs(model.W_out[layer].detach().double().numpy())
        mass[mass < tol] = 0.0
        per_var = mass @ masks  # [d_mlp, variables]
        out[layer] = [distinct[int(row.argmax())] if row.max() > 0 else None for row in per_var]
    return out


def node_variables(graph, units: dict[int, list[str | None]]) -> list[str | None]:
    """Step 3: the variable each graph node stands for (errors: None)."""
    out: list[str | None] = []
    for layer, _pos, feature in graph.active_features.tolist():
        out.append(units[layer][feature])
    out += [None] * graph.n_errors + [EMBED] * graph.n_pos + [LOGITS] * graph.n_logits
    return out


def variable_edge_weights(graph, variables: list[str | None]) -> dict[tuple[str, str], float]:
    """Step 3: ``{(source variable, target variable): mean share of the target's input}``."""
    shares = normalize_rows(graph.dense_adjacency().float())
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(variables):
        if name is not None:
            groups.setdefault(name, []).append(index)
    out = {}
    for target, rows in groups.items():
        if target == EMBED:
            continue
        block = shares[rows]
        for source, cols in groups.items():
            if source != target and source != LOGITS:
                out[(source, target)] = float(block[:, cols].sum(1).mean())
    return out


def _read_children(expr, value_paths_only: bool) -> list:
    """The children whose values flow into ``expr`` along paths an attribution graph can see."""
    from workbench.compare.variables import is_selector

    if not value_paths_only:
        return list(expr.children)
    # Frozen attention passes values only: an aggregate's selector (keys, queries) shapes the pattern,
    # which the graph holds fixed, and a selector width's head reads the <bos> embedding.
    return [c for c in expr.children if not is_selector(c)]


def true_edges(program, node_vars: set[str], value_paths_only: bool = True) -> set[tuple[str, str]]:
    """Step 4: the program's dependency graph seen through the graph's nodes.

    ``value_paths_only`` (the default) keeps the dependencies a graph with frozen attention can show:
    an Aggregate depends on its SOp, a SelectorWidth on ``embed`` (the ``<bos>`` its head reads), and a
    selector's keys and queries are no edge. ``False`` keeps every dependency.
    """
    from workbench.compare.variables import program_graph
    from workbench.rasp import rasp

    by_label = {expr.label: expr for expr in program_graph(program)}

    def sources(expr) -> set[str]:
        found: set[str] = {EMBED} if value_paths_only and isinstance(expr, rasp.SelectorWidth) else set()
        for child in _read_children(expr, value_paths_only):
            if child.label == "indices":
                continue  # position embeddings sit in the graph's bias terms, not its token nodes
            if child.label == "tokens":
                found.add(EMBED)
            elif child.label in node_vars:
                found.add(child.label)
            else:
                found |= sources(child)  # attention, selectors, constants: no node of their own
        return found

    edges = {(s, name) for name in node_vars if name in by_label for s in sources(by_label[name])}
    output = program.label
    logits_from = {output} if output in node_vars else sources(program)
    return edges | {(s, LOGITS) for s in logits_from}


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Step 5: the chance that a true edge outscores a false one (ties half); NaN without both kinds."""
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def recovery_scores(weights: dict[tuple[str, str], float], truth: set[tuple[str, str]],
                    layer_of: dict[str, float], threshold: float = 0.01) -> dict:
    """Step 5: precision, recall and AUROC over the candidate edges."""
    candidates = sorted(pair for pair in weights if layer_of[pair[0]] < layer_of[pair[1]])
    missing = sorted(truth - set(candidates))
    scores = np.array([weights[p] for p in candidates], dtype=np.float64)
    labels = np.array([p in truth for p in candidates], dtype=bool)
    predicted = scores > threshold
    tp = int((predicted & labels).sum())
    return {"candidates": len(candidates), "true_edges": len(truth), "predicted_edges": int(predicted.sum()),
            "precision": tp / int(predicted.sum()) if predicted.any() else float("nan"),
            "recall": tp / len(truth) if truth else float("nan"),
            "auroc": auroc(scores, labels), "threshold": threshold,
            "true_edges_not_candidates": ", ".join(f"{a}->{b}" for a, b in missing)}


def _variable_name(label: str, known: set[str]) -> str:
    """The SOp a residual label belongs to: ``name:value``, ``name``, or a hidden ``name.part``."""
    name = label.split(":")[0]
    if name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _layers_of(units: dict[int, list[str | None]]) -> dict[str, float]:
    layer_of: dict[str, float] = {EMBED: -1, LOGITS: float("inf")}
    for layer, names in units.items():
        for name in names:
            if name is not None:
                layer_of.setdefault(name, layer)
    return layer_of


def circuit_recovery(compiled, program, inputs: list[list], threshold: float = 0.01,
                     progress: bool = False) -> pd.DataFrame:
    """Steps 1-5 on a compiled model: rows (all edges; between variables) with FVU, counts, scores."""
    from workbench.compare.variables import program_graph

    if not inputs:
        raise ValueError("circuit recovery needs at least one input")
    model = compiled.model
    model.set_use_hook_mlp_in(True)  # the replacement reads hook_mlp_in; transformer_lens skips it unless asked
    tokens = torch.cat([compiled.tokenize([compiled.compiler_bos, *xs]) for xs in inputs])
    transcoders = exact_transcoders(model)
    errors = transcoder_fvu(model, transcoders, tokens)
    known = {e.label for e in program_graph(program)}
    residual_names = [_variable_name(label, known) for label in compiled.residual_labels]
    units = unit_variables(model, residual_names)
    truth = true_edges(program, {n for names in units.values() for n in names if n} | {EMBED, LOGITS})
    totals: dict[tuple[str, str], float] = {}
    for row in tokens:
        graph = attribute(model, transcoders, row, progress=progress)
        for pair, weight in variable_edge_weights(graph, node_variables(graph, units)).items():
            totals[pair] = totals.get(pair, 0.0) + weight / len(tokens)
    layer_of = _layers_of(units)
    inner = {pair: w for pair, w in totals.items() if pair[0] != EMBED}
    edges = ", ".join(f"{a}->{b} {w:.2f}" for (a, b), w in sorted(totals.items(), key=lambda kv: -kv[1]) if w > 0)
    common = {"inputs": len(tokens), "max_transcoder_fvu": max(errors, default=0.0),
              "true": ", ".join(f"{a}->{b}" for a, b in sorted(truth)), "graph_edges": edges}
    return pd.DataFrame([
        {"edges": "all", **recovery_scores(totals, truth, layer_of, threshold), **common},
        {"edges": "between variables", **recovery_scores(inner, {p for p in truth if p[0] != EMBED}, layer_of,
                                                         threshold), **common},
    ])
