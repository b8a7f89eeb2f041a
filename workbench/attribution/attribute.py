"""Attribution: the direct-effect graph of a prompt's local replacement model, in batched backward passes.

Algorithm (one prompt; ``replacement.py`` builds the linear model, ``targets.py`` the logit targets):

1. Build the local replacement model: record gates, encode features, split MLP outputs into feature
   writes, decoder bias, skip and error (exact).
2. Pick the targets: salient next-token logits (or custom ones). Rows to compute = the logit targets,
   then every active feature's pre-activation.
3. Run the frozen linear model ONCE on a batch of ``batch_size`` copies of the prompt whose token
   embeddings and MLP writes are leaves, and keep its autograd graph.
4. For each batch of targets, one backward pass: copy b gets target b's readout vector injected as
   the gradient at its hook (``hook_mlp_in`` of a feature's layer at its position, ``hook_final`` at the
   last position for a logit). The gradients at the leaves give, for every source at once, its direct
   effect: ``embed[p] . g_embed[p]`` for a token, ``error[l, p] . g_write[l, p]`` for an error node, and
   ``activation * decoder[l'] . g_write[l', p]`` summed over the layers ``l'`` a feature writes to.
   Targets are batched by layer, so a backward pass stops at that layer.
5. Order: logits first; then features. With ``max_feature_nodes``, features are visited in order of
   their influence on the logits estimated from the rows computed so far (re-ranked every few
   batches), and the graph keeps only visited features.
6. Bias terms: one more forward pass with every source zeroed (embeddings 0, writes = decoder biases
   only) gives each target's constant part, so ``row.sum() + bias == value`` can be checked; the
   largest deviation, relative to the sum of the terms' magnitudes, is stored in the metadata
   (``identity_error``), and a model that is not
   exactly linear once frozen (``identity_error`` above ``APPROXIMATE_ABOVE`` or a model that declares
   ``linearization_note``) is marked approximate with the reason: its edges are gradient x input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from workbench.attribution.graph import Graph
from workbench.attribution.prune import compute_influence, normalize_rows
from workbench.attribution.replacement import LocalReplacement
from workbench.attribution.targets import LogitTarget, salient_logits

APPROXIMATE_ABOVE = 1e-3


@dataclass
class AttributionConfig:
    max_n_logits: int = 10
    desired_logit_prob: float = 0.95
    batch_size: int = 64
    max_feature_nodes: int | None = None
    rerank_every: int = 4  # batches between influence re-rankings (only with max_feature_nodes)
    feature_chunk: int = 2048  # features gathered at once when turning gradients into edges

    def __post_init__(self):
        for name in ("max_n_logits", "batch_size", "rerank_every", "feature_chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"attribution {name} expects a positive integer, got {value!r}")
        if self.max_feature_nodes is not None and (not isinstance(self.max_feature_nodes, int)
                                                   or self.max_feature_nodes < 1):
            raise ValueError(f"attribution max_feature_nodes expects a positive integer or None, "
                             f"got {self.max_feature_nodes!r}")
        if not 0.0 < self.desired_logit_prob <= 1.0:
            raise ValueError(f"attribution desired_logit_prob expects a value in (0, 1], got {self.desired_logit_prob!r}")


class _Rows:
    """Backward passes over the one retained forward pass (step 4)."""

    def __init__(self, rep: LocalReplacement, targets: list[LogitTarget], batch: int, chunk: int):
        self.rep, self.targets, self.batch, self.chunk = rep, targets, batch, chunk
        self.embed = rep.embed.expand(batch, -1, -1).clone().requires_grad_(True)
        self.writes = rep.constant_writes().expand(batch, -1, -1, -1).clone().requires_grad_(True)
        self.out = rep.linear_forward(self.embed, self.writes)
        self.n_sources = len(rep.active_features) + rep.n_layers * rep.n_pos + rep.n_pos
        self._pack_writes()

    def edges(self, specs: list[tuple[str, int]]) -> torch.Tensor:
        """``[len(specs), n_sources]`` rows for targets ``("logit", k)`` / ``("feature", i)``."""
        rep = self.rep
        injections: dict[int | str, torch.Tensor] = {}
        logits = [(b, i) for b, (kind, i) in enumerate(specs) if kind == "logit"]
        if logits:
            grad = injections["final"] = torch.zeros_like(self.out["final"])
            for b, i in logits:
                grad[b, -1] = self.targets[i].direction.to(grad.dtype)
        slots = torch.tensor([b for b, (kind, _) in enumerate(specs) if kind == "feature"], dtype=torch.long)
        if len(slots):
            feats = rep.active_features[[i for kind, i in specs if kind == "feature"]]
            w, _ = rep.readouts(feats)
            for layer in feats[:, 0].unique().tolist():
                mine = feats[:, 0] == layer
                grad = injections[layer] = torch.zeros_like(self.out["mlp_in"][layer])
                grad[slots[mine], feats[mine, 1]] = w[mine].to(grad.dtype)
        keys = list(injections)
        outputs = [self.out["final"] if k == "final" else self.out["mlp_in"][k] for k in keys]
        g_embed, g_writes = torch.autograd.grad(outputs, [self.embed, self.writes],
                                                [injections[k] for k in keys], retain_graph=True, allow_unused=True)
        g_embed = torch.zeros_like(self.embed) if g_embed is None else g_embed
        g_writes = torch.zeros_like(self.writes) if g_writes is None else g_writes
        with torch.no_grad():
            tokens = (g_embed * rep.embed).sum(-1)  # [B, T]
            errors = (g_writes * rep.errors).sum(-1).flatten(1)  # [B, L * T], layer-major
            features = self._feature_edges(g_writes)
            rows = torch.cat([features, errors, tokens], dim=1)
        return rows[: len(specs)]

    def _pack_writes(self) -> None:
        """Group the features' writes by position, padded to the busiest position: ``[T, L * d, slots]``,
        so turning gradients into feature edges is one batched matmul over positions."""
        rep = self.rep
        n, T = len(rep.active_features), rep.n_pos
        pos = rep.active_features[:, 1] if n else torch.zeros(0, dtype=torch.long)
        counts = torch.bincount(pos, minlength=T)
        order = torch.argsort(pos, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        self.slot = torch.empty(n, dtype=torch.long)
        self.slot[order] = torch.arange(n) - starts[pos[order]]
        flat = rep.feature_writes.reshape(n, -1).to(self.writes.dtype)
        self.packed = flat.new_zeros(T, int(counts.max()) if n else 0, flat.shape[1])
        self.packed[pos, self.slot] = flat
        self.packed = self.packed.transpose(1, 2).contiguous()  # [T, L * d, slots]
        self.feature_pos = pos

    def _feature_edges(self, g_writes: torch.Tensor) -> torch.Tensor:
        """``[B, n_features]``: activation x decoder . gradient at the feature's position, summed over
        the layers it writes (``_pack_writes``)."""
        B = g_writes.shape[0]
        by_pos = g_writes.permute(2, 0, 1, 3).reshape(self.rep.n_pos, B, -1)  # [T, B, L * d]
        per_slot = torch.bmm(by_pos, self.packed)  # [T, B, slots]
        return per_slot[self.feature_pos, :, self.slot].T


def _influence_order(rows: torch.Tensor, row_of: dict[int, int], n_features: int, logit_rows: list[int],
                     weights: torch.Tensor, visited: set[int]) -> list[int]:
    """Unvisited features sorted by their influence on the logits through the rows computed so far."""
    n_sources = rows.shape[1]
    # square matrix over sources (+ logits): a row for each computed target
    square = rows.new_zeros(n_sources + len(logit_rows), n_sources + len(logit_rows))
    if row_of:
        square[list(row_of), :n_sources] = rows[list(row_of.values())]
    square[n_sources:, :n_sources] = rows[logit_rows]
    seed = torch.zeros(square.shape[0], dtype=square.dtype)
    seed[n_sources:] = weights
    influence = compute_influence(normalize_rows(square), seed)[:n_features]
    ranked = torch.argsort(influence, descending=True).tolist()
    return [f for f in ranked if f not in visited]


def attribute(model, dictionaries, tokens: torch.Tensor, *, prompt: str = "", token_strings: list[str] | None = None,
              token_label=None, targets: list[LogitTarget] | None = None,
              config: AttributionConfig | None = None, progress: bool = True, metadata: dict | None = None) -> Graph:
    """The attribution graph of ``tokens`` (``[T]`` or ``[1, T]``): module docstring, steps 1-6."""
    config = config or AttributionConfig()
    tokens = tokens.reshape(1, -1)
    token_label = token_label or str
    rep = LocalReplacement(model, list(dictionaries), tokens)  # step 1
    if targets is None:  # step 2
        targets = salient_logits(rep.logits, rep.W_U, rep.b_U, token_label, config.max_n_logits,
                                 config.desired_logit_prob)
    if not targets:
        raise ValueError("an attribution graph needs at least one target")
    n_features = len(rep.active_features)
    budget = n_features if config.max_feature_nodes is None else min(n_features, config.max_feature_nodes)
    rows_engine = _Rows(rep, targets, config.batch_size, config.feature_chunk)  # step 3
    weights = torch.tensor([t.weight for t in targets], dtype=torch.float32)

    logit_rows = [rows_engine.edges([("logit", k) for k in range(s, min(s + config.batch_size, len(targets)))])
                  for s in range(0, len(targets), config.batch_size)]
    logit_rows = torch.cat(logit_rows)
    feature_rows, batches, row_of, visited = [], [], {}, set()
    queue = list(range(n_features))  # layer-major order: batches share a layer
    n_batches = -(-budget // config.batch_size)
    bar = tqdm(total=budget, desc="attribution", unit="feature", disable=not progress, leave=False)
    for step in range(n_batches):  # steps 4-5
        if config.max_feature_nodes is not None and step % config.rerank_every == 0:
            computed = torch.cat([logit_rows, *feature_rows]) if feature_rows else logit_rows
            offset = {f: len(targets) + r for f, r in row_of.items()}
            queue = _influence_order(computed, offset, n_features, list(range(len(targets))), weights, visited)
        batch = [f for f in queue if f not in visited][: min(config.batch_size, budget - len(visited))]
        if not batch:
            break
        rows = rows_engine.edges([("feature", f) for f in batch])
        done = sum(len(r) for r in feature_rows)
        row_of.update({f: done + i for i, f in enumerate(batch)})
        visited.update(batch)
        feature_rows.append(rows)
        batches.append(batch)
        bar.update(len(batch))
    bar.close()
    del rows_engine
    adjacency, kept = _adjacency(rep, len(targets), logit_rows, feature_rows, batches)
    return _assemble(rep, targets, adjacency, kept, prompt, token_strings, model, config, metadata)


def _adjacency(rep, n_logits: int, logit_rows, feature_rows: list, batches: list) -> tuple[torch.Tensor, list[int]]:
    """The square matrix over [visited features | errors | tokens | logits], filled batch by batch
    (each batch's rows are freed once copied, so peak memory stays near one matrix)."""
    kept = sorted(f for batch in batches for f in batch)  # visited features, in node order
    n_f, n_all = len(kept), len(rep.active_features)
    n_src = n_f + rep.n_layers * rep.n_pos + rep.n_pos
    n = n_src + n_logits
    every = n_f == n_all  # every feature visited: the columns need no reindexing
    cols = None if every else torch.tensor(kept + list(range(n_all, n_all + n_src - n_f)), dtype=torch.long)
    node_of = {f: i for i, f in enumerate(kept)}
    adjacency = torch.zeros(n, n, dtype=torch.float32)
    while feature_rows:
        rows, batch = feature_rows.pop(0), batches.pop(0)
        targets = torch.tensor([node_of[f] for f in batch], dtype=torch.long)
        adjacency[targets, :n_src] = (rows if every else rows[:, cols]).float()
    adjacency[n_src:, :n_src] = (logit_rows if every else logit_rows[:, cols]).float()
    return adjacency, kept


@torch.no_grad()
def _bias_terms(rep: LocalReplacement, targets: list[LogitTarget], features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 6: each target's value with every source zeroed."""
    out = rep.linear_forward(torch.zeros_like(rep.embed)[None], rep.bias_writes[None])
    feature_bias = rep.read_features(out["mlp_in"], features)[0]
    final = out["final"][0, -1]
    logit_bias = torch.stack([t.direction.to(final.dtype) @ final + t.bias for t in targets])
    return feature_bias, logit_bias


def _identity_error(adjacency: torch.Tensor, bias: torch.Tensor, values: torch.Tensor, rows: torch.Tensor,
                    chunk: int = 1024) -> float:
    """Largest ``|row sum + bias - value|`` relative to the summed terms' magnitude (float32 rounding
    grows with them, not with the value), in float64, a chunk of rows at a time."""
    worst = 0.0
    for s in range(0, len(rows), chunk):
        r = rows[s:s + chunk]
        block = adjacency[r].double()
        deviation = (block.sum(1) + bias[r] - values[r]).abs()
        magnitude = block.abs().sum(1) + bias[r].double().abs()
        worst = max(worst, float((deviation / magnitude.clamp_min(1e-12)).max()))
    return worst


def _assemble(rep, targets, adjacency, kept, prompt, token_strings, model, config, metadata) -> Graph:
    n_f, n_all = len(kept), len(rep.active_features)
    n_err, n = rep.n_layers * rep.n_pos, adjacency.shape[0]
    features = rep.active_features[kept]
    feature_bias, logit_bias = _bias_terms(rep, targets, features)
    final = rep.final[-1]
    logit_values = torch.stack([t.direction.to(final.dtype) @ final + t.bias for t in targets])
    values = torch.zeros(n)
    values[:n_f] = rep.pre_activations[kept].float()
    values[n_f:n_f + n_err] = rep.errors.norm(dim=-1).flatten().float()
    values[n - len(targets):] = logit_values.float()
    bias = torch.zeros(n)
    bias[:n_f] = feature_bias.float()
    bias[n - len(targets):] = logit_bias.float()
    rows = torch.cat([torch.arange(n_f), torch.arange(n - len(targets), n)])
    identity_error = _identity_error(adjacency, bias, values, rows)
    note = getattr(model, "linearization_note", None)
    approximate = bool(note) or identity_error > APPROXIMATE_ABOVE
    meta = {"architecture": type(model).__name__, "n_layers": rep.n_layers, "vocab_size": int(rep.W_U.shape[1]), "n_active_features": n_all,
            "n_visited_features": n_f, "identity_error": identity_error, "approximate": approximate,
            "approximate_reason": note or (f"row sums miss the values by up to {identity_error:.2e}: some factor is "
                                           "not behind a gate hook, edges are gradient x input" if approximate else ""),
            "config": asdict(config), "dictionary_kinds": sorted({d.config.kind for d in rep.dictionaries}),
            "unreplaced_layers": [l for l in range(rep.n_layers) if l not in rep.writers], **(metadata or {})}
    token_strings = token_strings or [str(int(t)) for t in rep.tokens[0]]
    return Graph(prompt=prompt, input_tokens=rep.tokens[0].clone(), token_strings=list(token_strings),
                 n_layers=rep.n_layers, active_features=features.clone(), activations=rep.activations[kept].float(),
                 logit_tokens=torch.tensor([t.token for t in targets], dtype=torch.long),
                 logit_probabilities=torch.tensor([t.weight for t in targets], dtype=torch.float32),
                 logit_labels=[t.label for t in targets], adjacency=adjacency, values=values, bias=bias, metadata=meta,
                 logit_directions=torch.stack([t.direction.float() for t in targets]))


__all__ = ["APPROXIMATE_ABOVE", "AttributionConfig", "attribute"]
