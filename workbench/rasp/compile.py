"""Compile a RASP program into an exact transformer_lens ``HookedTransformer`` with its known circuit.

    from workbench.rasp import rasp
    from workbench.rasp.compile import compile_rasp_to_model

    hist = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)).named("hist")
    compiled = compile_rasp_to_model(hist, vocab={"a", "b"}, max_seq_len=5)
    compiled.apply(["BOS", "a", "b", "a"]).decoded     # ["BOS", 2, 1, 2]  (tracr's call and layout)
    compiled.model                                     # the HookedTransformer
    compiled.residual_labels                           # ["one", "bos", "tokens:a", ..., "hist:0", ...]
    compiled.decode("blocks.0.hook_resid_post", vec)   # {"tokens": [...], "hist": [...], ...}
    compiled.circuit["hist"]                           # {"layer": 0, "heads": [0], "mlp": 0, "reads": [...]}

Steps (each a module of ``workbench.rasp.compiler``):
1. graph: validate the program and build its dependency graph.
2. values: infer every SOp's exact value set, with the static emptiness test of ``analysis``.
3. analysis: in causal mode refuse a selector that may look forward (error names it); warn where an
   Aggregate without default may select nothing (its value there is None; numerical ones must have a
   default, since a number cannot be None).
4. components, layers, residual, assemble: heads and MLPs, their layers, the residual layout, the model.
5. decode: the output block at the unembedding (numerical outputs snapped to their value set).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from workbench.rasp import rasp
from workbench.rasp.compiler import decode as dec
from workbench.rasp.compiler.analysis import StaticAnalysis, check_causal
from workbench.rasp.compiler.assemble import assemble
from workbench.rasp.compiler.components import build_components
from workbench.rasp.compiler.graph import build_graph
from workbench.rasp.compiler.layers import allocate_layers
from workbench.rasp.compiler.residual import allocate_residual
from workbench.rasp.compiler.values import infer_value_sets, nullable_sops, sort_values


class EmptySelectionWarning(UserWarning):
    """An Aggregate without default may select nothing: its value there is None."""


@dataclass
class RunResult:
    decoded: list  # [compiler_bos, value at token 1, ...] (tracr's layout)
    logits: torch.Tensor  # [pos, d_vocab_out], BOS included
    cache: Any  # transformer_lens ActivationCache of the run

    @property
    def outputs(self) -> list:
        return self.decoded[1:]


class CompiledModel:
    def __init__(self, program, graph, sets, plan, components, residual, model, vocab, max_seq_len, causal, bos):
        self.program, self.graph, self.value_sets, self.plan = program, graph, sets, plan
        self.components, self.residual, self.model = components, residual, model
        self.vocab, self.max_seq_len, self.causal, self.compiler_bos = vocab, max_seq_len, causal, bos
        self.token_ids = {bos: 0, **{t: i for i, t in enumerate(vocab, start=1)}}

    @property
    def residual_labels(self) -> list[str]:
        return self.residual.labels

    @property
    def output(self) -> str:
        return self.graph.output

    def tokenize(self, inputs: list) -> torch.Tensor:
        """Token ids of ``[bos, *xs]``; errors name the bad token or length."""
        if not inputs or inputs[0] != self.compiler_bos:
            raise ValueError(f"input must start with the BOS token {self.compiler_bos!r}, got {list(inputs)[:3]}")
        if len(inputs) - 1 > self.max_seq_len:
            raise ValueError(f"input has {len(inputs) - 1} tokens, more than max_seq_len={self.max_seq_len}")
        for tok in inputs[1:]:
            if tok not in self.token_ids or tok == self.compiler_bos:
                raise ValueError(f"unknown token {tok!r}; the vocabulary is {sort_values(self.vocab)}")
        return torch.tensor([[self.token_ids[t] for t in inputs]])

    def _decode_logits(self, logits: torch.Tensor) -> list:
        values = dec.decode_output(logits[1:], self.residual, self.output)
        if self.residual.encodings[self.output] is rasp.Encoding.NUMERICAL:
            values = [dec.snap(v, self.value_sets[self.output]) for v in values]
        return values

    def apply(self, inputs: list) -> RunResult:
        tokens = self.tokenize(inputs)
        logits, cache = self.model.run_with_cache(tokens)
        return RunResult([self.compiler_bos, *self._decode_logits(logits[0])], logits[0], cache)

    def run_batch(self, batch: list[list]) -> list[list]:
        """Decoded outputs (BOS dropped) for inputs of equal length, in one forward pass."""
        tokens = torch.cat([self.tokenize([self.compiler_bos, *xs]) for xs in batch])
        with torch.no_grad():
            logits = self.model(tokens)
        return [self._decode_logits(row) for row in logits]

    def decode(self, hook: str, vector: torch.Tensor) -> dict[str, list]:
        """RASP variables held by ``vector`` ([pos, d_model] or [d_model]) at ``hook``, per position."""
        vec = vector if vector.dim() > 1 else vector[None]
        if vec.shape[-1] != self.residual.d_model:
            raise ValueError(f"vector has width {vec.shape[-1]}, the residual stream {self.residual.d_model}")
        present = dec.variables_at(hook, self.plan)
        return {lab: dec.decode_block(self.residual, lab, vec) for lab in self.graph.order if lab in present}

    @property
    def circuit(self) -> dict[str, dict]:
        """Ground truth: for each SOp, where it is computed and which SOps it reads."""
        out = {}
        for label in self.graph.order:
            comp = self.components.get(label)
            entry = {"reads": list(self.graph.reads[label]), "kind": comp.kind if comp else "embedding",
                     "layer": None, "heads": [], "mlp": None}
            if comp is not None:
                if comp.heads:
                    layer = self.plan.head_sublayer[label] // 2
                    names = [lab for lab in self.plan.heads_in(layer)]
                    first = sum(len(self.components[lab].heads) for lab in names[: names.index(label)])
                    entry["heads"] = [(layer, first + i) for i in range(len(comp.heads))]
                if comp.mlp is not None:
                    entry["mlp"] = self.plan.sublayer[label] // 2
                entry["layer"] = self.plan.sublayer[label] // 2
            out[label] = entry
        return out


def compile_rasp_to_model(program: rasp.SOp, vocab, max_seq_len: int, compiler_bos: str = "BOS",
                          causal: bool = False, dtype: torch.dtype = torch.float32) -> CompiledModel:
    vocab = sort_values(set(vocab))
    if not vocab:
        raise ValueError("the vocabulary is empty; give the tokens the program reads")
    if compiler_bos in vocab:
        raise ValueError(f"the BOS token {compiler_bos!r} is also in the vocabulary; choose another compiler_bos")
    if not isinstance(max_seq_len, int) or max_seq_len < 1:
        raise ValueError(f"max_seq_len must be a positive integer, got {max_seq_len!r}")
    graph = build_graph(program)
    if rasp.is_numerical(graph.sop("tokens")) if "tokens" in graph.exprs else False:
        raise ValueError("tokens must be categorical")
    sets: dict[str, list] = {}
    analysis = StaticAnalysis(max_seq_len, sets)
    sets.update(infer_value_sets(graph, vocab, max_seq_len, analysis.may_be_empty))
    if causal:
        check_causal(graph, analysis)
    _check_empty_aggregates(graph, analysis)
    nullable = nullable_sops(graph, sets, analysis.may_be_empty)
    components = build_components(graph, sets, nullable, max_seq_len)
    plan = allocate_layers(graph, components)
    residual = allocate_residual(graph, sets, {lab: c.hidden for lab, c in components.items()})
    model = assemble(graph, components, plan, residual, vocab, max_seq_len, causal, dtype)
    model.eval()
    return CompiledModel(program, graph, sets, plan, components, residual, model, vocab, max_seq_len, causal,
                         compiler_bos)


def _check_empty_aggregates(graph, analysis: StaticAnalysis) -> None:
    for label in graph.order:
        sop = graph.sop(label)
        if not isinstance(sop, rasp.Aggregate) or sop.default is not None or not analysis.may_be_empty(sop.selector):
            continue
        if rasp.is_numerical(sop):
            raise ValueError(f"numerical {sop!r} may select nothing (selector {sop.selector.label!r}) and has no "
                             f"default; give it default=0 (a number cannot be None)")
        warnings.warn(f"{sop!r} may select nothing (selector {sop.selector.label!r}); its value there is None",
                      EmptySelectionWarning, stacklevel=3)
