"""The attribution graph as data: nodes in circuit-tracer's order, the direct-effect matrix, and files.

Node order (the same as circuit-tracer's, so indices carry over)::

    [ features (n_features) | errors (n_layers * n_pos, layer-major) | tokens (n_pos) | logits (n_logits) ]

``adjacency[target, source]`` is the direct effect of ``source`` on ``target`` in the local replacement
model (``workbench.attribution.attribute``). Only feature and logit rows can be non-zero: errors and
tokens have no inputs. ``values[i]`` is node i's value (a feature's pre-activation, a logit target's
value, an error node's norm, 0 for tokens) and ``bias[i]`` the part of a target's value no node
explains (decoder and encoder biases, positional embeddings, ...), so for every feature and logit row::

    adjacency[i].sum() + bias[i] == values[i]

On disk a graph is a folder: ``graph.safetensors`` (tensors) + ``graph.json`` (everything else),
published atomically. ``workbench.attribution.graph_file`` writes and reads the JSON schema that
circuit-tracer and Neuronpedia use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench.store.atomic import (
    CorruptArtifactError,
    atomic_write_json,
    load_safetensors,
    publish_dir,
    read_json,
    save_safetensors,
    staging_dir,
)

TENSORS_FILE, META_FILE = "graph.safetensors", "graph.json"
NODE_KINDS = ("feature", "error", "token", "logit")


@dataclass
class Graph:
    """One prompt's attribution graph (module docstring for the node order and the identity)."""

    prompt: str
    input_tokens: torch.Tensor  # [n_pos] int64
    token_strings: list[str]
    n_layers: int
    active_features: torch.Tensor  # [n_features, 3] int64: (layer, pos, feature index)
    activations: torch.Tensor  # [n_features] the features' activations (post-nonlinearity)
    logit_tokens: torch.Tensor  # [n_logits] int64 vocabulary ids (-1 for a custom direction)
    logit_probabilities: torch.Tensor  # [n_logits] the targets' weights in influence (softmax probs)
    logit_labels: list[str]  # one per logit target: the token, or the custom target's label
    adjacency: torch.Tensor  # [n_nodes, n_nodes] target x source, dense (or sparse COO when large)
    values: torch.Tensor  # [n_nodes]
    bias: torch.Tensor  # [n_nodes]
    metadata: dict = field(default_factory=dict)
    # [n_logits, d_model]: each logit target's direction at the last position's hook_final (targets.py),
    # kept so a graph can be checked by intervention and its custom targets re-read
    logit_directions: torch.Tensor | None = None

    # --- sizes and index ranges -------------------------------------------------------------------
    @property
    def n_pos(self) -> int:
        return int(self.input_tokens.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.active_features.shape[0])

    @property
    def n_errors(self) -> int:
        return self.n_layers * self.n_pos

    @property
    def n_logits(self) -> int:
        return int(self.logit_tokens.shape[0])

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_pos + self.n_logits

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_errors

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    def error_index(self, layer: int, pos: int) -> int:
        return self.error_start + layer * self.n_pos + pos

    def token_index(self, pos: int) -> int:
        return self.token_start + pos

    def logit_index(self, k: int) -> int:
        return self.logit_start + k

    def node_kind(self, index: int) -> str:
        for kind, end in zip(NODE_KINDS, (self.error_start, self.token_start, self.logit_start, self.n_nodes)):
            if index < end:
                return kind
        raise IndexError(f"node {index} outside a graph of {self.n_nodes} nodes")

    def logit_weights(self) -> torch.Tensor:
        """``[n_nodes]``: the logits' probabilities at the logit nodes, 0 elsewhere (influence's seed)."""
        w = torch.zeros(self.n_nodes, dtype=torch.float32)
        w[self.logit_start:] = self.logit_probabilities.float()
        return w

    def dense_adjacency(self) -> torch.Tensor:
        return self.adjacency.to_dense() if self.adjacency.is_sparse else self.adjacency

    def node_address(self, index: int) -> tuple[str, int | None, int, int | None]:
        """``(kind, layer, position, number)`` of a node: a feature's layer, position and feature index;
        an error's layer and position (number None); a token's position and vocabulary id (layer
        None); a logit's slot k among the logit targets, at the last position (layer None)."""
        kind = self.node_kind(index)
        if kind == "feature":
            layer, pos, feat = (int(v) for v in self.active_features[index])
            return kind, layer, pos, feat
        if kind == "error":
            layer, pos = divmod(index - self.error_start, self.n_pos)
            return kind, layer, pos, None
        if kind == "token":
            pos = index - self.token_start
            return kind, None, pos, int(self.input_tokens[pos])
        return kind, None, self.n_pos - 1, index - self.logit_start

    def node_label(self, index: int) -> str:
        kind, layer, pos, number = self.node_address(index)
        if kind == "feature":
            return f"L{layer} F{number} @{pos} {self.token_strings[pos]!r}"
        if kind == "error":
            return f"L{layer} error @{pos} {self.token_strings[pos]!r}"
        if kind == "token":
            return f"token {self.token_strings[pos]!r} @{pos}"
        return f"logit {self.logit_labels[number]!r}"

    def check(self) -> None:
        """Raise if the parts disagree in size (a damaged or hand-edited file)."""
        n = self.n_nodes
        problems = []
        if tuple(self.adjacency.shape) != (n, n):
            problems.append(f"adjacency {tuple(self.adjacency.shape)} != ({n}, {n})")
        for name in ("values", "bias"):
            if getattr(self, name).shape != (n,):
                problems.append(f"{name} {tuple(getattr(self, name).shape)} != ({n},)")
        if self.activations.shape != (self.n_features,):
            problems.append(f"activations {tuple(self.activations.shape)} != ({self.n_features},)")
        if len(self.token_strings) != self.n_pos or len(self.logit_labels) != self.n_logits:
            problems.append("token_strings / logit_labels do not match the tokens / logit targets")
        if problems:
            raise ValueError("inconsistent graph: " + "; ".join(problems))

    # --- files ------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.check()
        stage = staging_dir(folder)
        adjacency = self.adjacency.coalesce() if self.adjacency.is_sparse else self.adjacency
        tensors = {"input_tokens": self.input_tokens, "active_features": self.active_features,
                   "activations": self.activations, "logit_tokens": self.logit_tokens,
                   "logit_probabilities": self.logit_probabilities, "values": self.values, "bias": self.bias}
        if self.logit_directions is not None:
            tensors["logit_directions"] = self.logit_directions
        if adjacency.is_sparse:
            tensors |= {"adjacency_indices": adjacency.indices(), "adjacency_values": adjacency.values()}
        else:
            tensors["adjacency"] = adjacency
        save_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, stage / TENSORS_FILE)
        atomic_write_json(stage / META_FILE, {
            "prompt": self.prompt, "token_strings": self.token_strings, "n_layers": self.n_layers,
            "logit_labels": self.logit_labels, "adjacency_format": "sparse" if adjacency.is_sparse else "dense",
            "metadata": self.metadata})
        return publish_dir(stage, folder)

    @classmethod
    def load(cls, folder: str | Path) -> Graph:
        folder = Path(folder)
        for required in (TENSORS_FILE, META_FILE):
            if not (folder / required).is_file():
                raise FileNotFoundError(f"graph folder {folder} lacks {required}")
        meta = read_json(folder / META_FILE)
        t = load_safetensors(folder / TENSORS_FILE)
        n = sum(int(t[k].shape[0]) for k in ("active_features", "logit_tokens")) + \
            int(t["input_tokens"].shape[0]) * (meta["n_layers"] + 1)
        if meta.get("adjacency_format") == "sparse":
            try:  # checked: indices from a file must not reach out of range (a damaged file, not a crash)
                adjacency = torch.sparse_coo_tensor(t["adjacency_indices"], t["adjacency_values"], (n, n),
                                                    check_invariants=True).coalesce()
            except RuntimeError as err:
                raise CorruptArtifactError(f"graph folder {folder}: its sparse adjacency does not fit {n} nodes "
                                           f"({err}); the file is damaged") from None
        else:
            adjacency = t["adjacency"]
        graph = cls(prompt=meta["prompt"], input_tokens=t["input_tokens"], token_strings=meta["token_strings"],
                    n_layers=meta["n_layers"], active_features=t["active_features"], activations=t["activations"],
                    logit_tokens=t["logit_tokens"], logit_probabilities=t["logit_probabilities"],
                    logit_labels=meta["logit_labels"], adjacency=adjacency, values=t["values"], bias=t["bias"],
                    metadata=meta.get("metadata", {}), logit_directions=t.get("logit_directions"))
        graph.check()
        return graph


__all__ = ["NODE_KINDS", "Graph"]
