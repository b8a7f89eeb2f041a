"""Our attribution graphs against circuit-tracer's, on the same weights: time, peak memory, agreement.

circuit-tracer (https://github.com/safety-research/circuit-tracer) is the anchor to beat. It is not a
project dependency: 0.5.0 requires ``transformers<=4.57.3``, ``huggingface-hub<1.0`` and ``nnsight``, so
a plain ``pip install circuit-tracer`` would replace our CPU torch with torch 2.15 and the CUDA 13
wheels, and downgrade transformers and transformer-lens. Install it *beside* ours, without its
dependencies (everything its TransformerLens backend imports is already in our venv), on
``PYTHONPATH``::

    .venv/bin/python -m pip install --target /tmp/ct_pkgs --no-deps circuit-tracer==0.5.0
    PYTHONPATH=/tmp/ct_pkgs .venv/bin/python benchmarks/attribution_vs_circuit_tracer.py

Without it the script says so and exits 0. One shim makes 0.5.0 import beside huggingface-hub >= 1.0:
``circuit_tracer.utils.hf_utils`` imports ``huggingface_hub.constants.HF_HUB_ENABLE_HF_TRANSFER``, which
hub 1.0 removed; we define it as ``False`` when it is missing (it only steers Hub downloads; nothing here
downloads).

For each prompt length (16, 64, 256 tokens; position 0 is ``<bos>``, the rest random ids), on the zoo
Transformer's config (d_model 64, 2 layers, rotary; d_vocab 46 as models/transformer-recall; freshly
initialised, ``n_ctx`` = the longest prompt or 64) with per-layer transcoders of the zoo's size (512
features) that circuit-tracer can load: JumpReLU (default) or ReLU, calibrated on 32 random 64-token
sequences to about 16 active features per position and layer (per-feature thresholds, or encoder
biases for ReLU):

1. ours: ``attribute(model, dicts, tokens, batch_size=--batch-size)``;
2. circuit-tracer: the same transcoders written with :func:`save_circuit_tracer`, read back by its own
   ``load_transcoders`` (eagerly, no lazy decoder reads from disk), its ``ReplacementModel.from_config``
   (TransformerLens backend) around a copy of the same model weights (and a stand-in tokenizer: the
   prompt is token ids), then ``circuit_tracer.attribute(tokens, model, batch_size=--ct-batch-size)``.
   The batch size defaults to ours: circuit-tracer's own default, 512, runs every backward pass on 512
   copies of the prompt, which on a CPU made it 4-6x slower than at 64 here.

Each runs in a fresh subprocess (peak resident memory ``ru_maxrss`` is its own; "+MB" is the growth
during the call, sampled) and is called ``--reps`` times, the fastest reported (the machine is shared).
Then the two adjacency matrices are compared on their common nodes, matched by identity (feature
(layer, pos, index), error (layer, pos), token pos, logit token), not by index.

Conventions that differ (found reading circuit-tracer 0.5.0; the comparison accounts for them):

- circuit-tracer zeroes every feature and error at position 0 (``zero_positions``, the BOS position),
  folding that position's MLP outputs into constants; ours keeps them as nodes. Position-0 features
  and errors are therefore ours only; their outgoing edges are printed separately.
- Feature hooks: our transcoders say ``feature_input_hook: hook_mlp_in`` (the shared name, which on our
  Transformer is the alias of ``ln2.hook_normalized``); on a plain HookedTransformer that name is
  TransformerLens's own pre-LayerNorm ``hook_mlp_in`` (fired only with ``use_hook_mlp_in``), so the
  config is translated to the native name before circuit-tracer loads it.
- Logit targets: both use demeaned unembedding columns ``W_U[:, v] - mean_u W_U[:, u]`` at the last
  position; circuit-tracer picks them with a float32 softmax, ours with float64. circuit-tracer guesses
  ``W_U``'s orientation from its shape; when d_vocab == d_model (64 and 64 in benchmarks/attribution.py)
  it takes rows for columns and every logit row of its graph is wrong (relative Frobenius difference
  ~1). With ``--vocab 64`` its targets are therefore passed explicitly, correctly oriented.
- circuit-tracer's loader ignores ``activation: topk`` / ``k`` in a transcoder set's config and reads
  such a set as ReLU, which is why TopK transcoders are not used here.

    python benchmarks/attribution_vs_circuit_tracer.py [--lengths 16 64 256] [--activation jumprelu|relu]
        [--batch-size 64] [--ct-batch-size B (default: the same)] [--reps 3] [--vocab 46]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ZOO_TRANSFORMER = {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_mlp": 256, "positional_embedding_type": "rotary"}
VOCAB, BOS, N_FEATURES, L0 = 46, 1, 512, 16  # models/transformer-recall's vocabulary
CALIBRATION = (32, 64)  # random sequences x tokens that set the transcoders' thresholds
FEATURE, ERROR, TOKEN, LOGIT = 0, 1, 2, 3  # node kinds in the saved keys
INSTALL = ".venv/bin/python -m pip install --target /tmp/ct_pkgs --no-deps circuit-tracer==0.5.0"


def rss_mb() -> float:
    """This process's peak resident memory so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class RssGrowth:
    """How far resident memory rises above its level at entry during a block (sampled every 5 ms):
    the call's own peak, which ``ru_maxrss`` hides when imports and set-up peaked higher."""

    def __enter__(self):
        self.before = self.peak = current_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, current_rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mb())
        self.growth = self.peak - self.before


def build(activation: str, n_tokens: int, n_ctx: int, vocab: int = VOCAB):
    """The model, per-layer transcoders calibrated to ~L0 active features per position, and the prompt."""
    from workbench.architectures import build_model, model_config
    from workbench.dictionaries.models import DictionaryConfig, build_dictionary

    torch.manual_seed(0)
    model = build_model(model_config("transformer", d_vocab=vocab, n_ctx=n_ctx, **ZOO_TRANSFORMER)).eval()
    calibration = torch.randint(2, vocab, CALIBRATION, generator=torch.Generator().manual_seed(1))
    calibration[:, 0] = BOS
    tokens = torch.randint(2, vocab, (1, n_tokens), generator=torch.Generator().manual_seed(0))
    tokens[0, 0] = BOS
    with torch.no_grad():
        _, cache = model.run_with_cache(calibration)
    dicts = []
    for layer in range(model.cfg.n_layers):
        x = cache[f"blocks.{layer}.hook_mlp_in"].reshape(-1, model.cfg.d_model)
        d = build_dictionary(DictionaryConfig(
            "transcoder", d_in=x.shape[-1], d_out=x.shape[-1], n_features=N_FEATURES, activation=activation,
            seed=layer, input_hooks=[f"blocks.{layer}.hook_mlp_in"], output_hooks=[f"blocks.{layer}.hook_mlp_out"]))
        with torch.no_grad():
            cut = torch.quantile(x @ d.W_enc[0] + d.b_enc[0], 1 - L0 / N_FEATURES, dim=0)  # per feature
            if activation == "jumprelu":
                d.activation.log_threshold[0] = cut.clamp_min(1e-4).log()
            else:
                d.b_enc[0] -= cut
        dicts.append(d.eval())
    return model, dicts, tokens


def save_graph(path: Path, adjacency, keys, activations, meta: dict) -> None:
    from safetensors.torch import save_file

    save_file({"adjacency": adjacency.float().contiguous(), "keys": keys.long().contiguous(),
               "activations": activations.float().contiguous()}, str(path), {"meta": json.dumps(meta)})


def node_keys(features, n_layers: int, n_pos: int, tokens, logit_tokens) -> torch.Tensor:
    """``[n, 4]`` (kind, layer, pos, index) in graph node order: features, errors, tokens, logits."""
    f = torch.as_tensor(features).long().reshape(-1, 3)
    layer, pos = torch.meshgrid(torch.arange(n_layers), torch.arange(n_pos), indexing="ij")
    errors = torch.stack([torch.full((n_layers * n_pos,), ERROR), layer.flatten(), pos.flatten(),
                          torch.full((n_layers * n_pos,), -1)], 1)
    toks = torch.stack([torch.full((n_pos,), TOKEN), torch.full((n_pos,), -1), torch.arange(n_pos),
                        torch.as_tensor(tokens).long().flatten()], 1)
    n_logits = len(logit_tokens)
    logits = torch.stack([torch.full((n_logits,), LOGIT), torch.full((n_logits,), -1), torch.full((n_logits,), -1),
                          torch.as_tensor(logit_tokens).long()], 1)
    return torch.cat([torch.cat([torch.full((len(f), 1), FEATURE), f], 1), errors, toks, logits])


def best_of(reps: int, make_graph) -> tuple[float, object]:
    """The fastest of ``reps`` calls (the machine is shared) and the last graph."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        graph = make_graph()
        times.append(time.perf_counter() - start)
    return min(times), graph


def run_ours(activation: str, n: int, n_ctx: int, vocab: int, batch_size: int, reps: int, out: Path) -> dict:
    from workbench.attribution.attribute import AttributionConfig, attribute

    model, dicts, tokens = build(activation, n, n_ctx, vocab)
    config = AttributionConfig(batch_size=batch_size)
    with RssGrowth() as memory:
        seconds, graph = best_of(reps, lambda: attribute(model, dicts, tokens, config=config, progress=False))
    meta = {"seconds": seconds, "peak_rss_mb": rss_mb(), "growth_mb": memory.growth,
            "rows": graph.n_features + graph.n_logits, "identity_error": graph.metadata["identity_error"]}
    keys = node_keys(graph.active_features, model.cfg.n_layers, n, tokens, graph.logit_tokens)
    save_graph(out, graph.adjacency, keys, graph.activations, meta)
    return meta


def import_circuit_tracer():
    """circuit_tracer, importable beside huggingface-hub >= 1.0 (module docstring)."""
    import huggingface_hub.constants as hub_constants

    if not hasattr(hub_constants, "HF_HUB_ENABLE_HF_TRANSFER"):
        hub_constants.HF_HUB_ENABLE_HF_TRANSFER = False
    import circuit_tracer
    from circuit_tracer.replacement_model import ReplacementModel  # noqa: F401 (fails early if it cannot)

    return circuit_tracer


class IdTokenizer:
    """What circuit-tracer asks of a tokenizer when the prompt is token ids: our ``<pad>`` 0 and ``<bos>``
    1 are the special ids (a prompt starting with one gets no extra BOS prepended)."""

    bos_token_id, pad_token_id, eos_token_id, all_special_ids = BOS, 0, None, [0, BOS]
    padding_side = "right"  # HookedTransformer.forward reads it

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def decode(self, ids) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return " ".join(str(i) for i in (ids if isinstance(ids, list) else [ids]))


def circuit_tracer_model(model, dicts, folder: Path):
    """circuit-tracer's replacement model around a copy of ``model``'s weights and ``dicts`` (read back
    from circuit-tracer's layout by its own loader)."""
    import yaml
    from circuit_tracer.replacement_model import ReplacementModel
    from circuit_tracer.utils.hf_utils import load_transcoders

    from workbench.dictionaries.interop_circuit_tracer import save_circuit_tracer

    # model=...: the config names transformer_lens's own hooks (ln2.hook_normalized), which it hooks
    save_circuit_tracer(dicts, folder, model_name="benchmark", absolute_paths=True, model=model)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["scan"] = "workbench-benchmark"
    transcoders = load_transcoders(config, device=torch.device("cpu"), dtype=torch.float32,
                                   lazy_encoder=False, lazy_decoder=False)
    ct_model = ReplacementModel.from_config(copy.deepcopy(model.cfg), transcoders, backend="transformerlens")
    renamed = {}
    for name, value in model.state_dict().items():  # its MLPs and unembedding sit one module deeper
        name = name.replace(".mlp.", ".mlp.old_mlp.") if ".mlp." in name else name
        renamed[name.replace("unembed.", "unembed.old_unembed.", 1) if name.startswith("unembed.") else name] = value
    missing, unexpected = ct_model.load_state_dict(renamed, strict=False)
    if unexpected or any(not k.startswith("transcoders.") for k in missing):
        raise RuntimeError(f"weights did not map onto circuit-tracer's model: missing {missing}, "
                           f"unexpected {unexpected}")
    ct_model.tokenizer = IdTokenizer(model.cfg.d_vocab)
    return ct_model.eval(), config


def oriented_targets(ct_model, tokens: torch.Tensor) -> list:
    """circuit-tracer's own salient-logit rule (float32 softmax, top 10 until 0.95), with demeaned
    unembedding *columns*: 0.5.0 guesses ``W_U``'s orientation from its shape and, when d_vocab ==
    d_model, reads rows instead. Passed as custom targets labelled with their token ids."""
    from circuit_tracer.attribution.targets import CustomTarget

    with torch.no_grad():
        probs = torch.softmax(ct_model(tokens)[0, -1], dim=-1)
    top_p, top_idx = torch.topk(probs, 10)
    cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), 0.95)) + 1
    W_U = ct_model.unembed.W_U.detach()
    return [CustomTarget(str(int(v)), float(p), W_U[:, v] - W_U.mean(dim=1))
            for v, p in zip(top_idx[:cutoff], top_p[:cutoff], strict=True)]


def run_circuit_tracer(activation: str, n: int, n_ctx: int, vocab: int, batch_size: int, reps: int,
                       out: Path) -> dict:
    ct = import_circuit_tracer()
    model, dicts, tokens = build(activation, n, n_ctx, vocab)
    ct_model, config = circuit_tracer_model(model, dicts, out.parent / f"ct_transcoders_{n}")
    n_layers, square = model.cfg.n_layers, model.cfg.d_vocab == model.cfg.d_model
    del model, dicts
    targets = oriented_targets(ct_model, tokens) if square else None  # outside the timing: not its cost
    with RssGrowth() as memory:
        seconds, graph = best_of(reps, lambda: ct.attribute(tokens[0], ct_model, attribution_targets=targets,
                                                            batch_size=batch_size, verbose=False))
    meta = {"seconds": seconds, "peak_rss_mb": rss_mb(), "growth_mb": memory.growth, "version": ct.__version__,
            "rows": len(graph.selected_features) + len(graph.logit_targets),
            "feature_input_hook": config["feature_input_hook"], "custom_targets": square}
    features = graph.active_features[graph.selected_features]
    logit_ids = [int(t.token_str) if square else t.vocab_idx for t in graph.logit_targets]
    keys = node_keys(features, n_layers, n, graph.input_tokens, logit_ids)
    save_graph(out, graph.adjacency_matrix, keys, graph.activation_values[graph.selected_features], meta)
    return meta


def load_graph(path: Path) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file

    graph: dict = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        graph["meta"] = json.loads(f.metadata()["meta"])
    return graph


def agreement(ours: dict, theirs: dict) -> dict:
    """The two adjacency matrices on their common nodes (matched by identity)."""
    ours_at = {tuple(k): i for i, k in enumerate(ours["keys"].tolist())}
    theirs_at = {tuple(k): i for i, k in enumerate(theirs["keys"].tolist())}
    # circuit-tracer zeroes position 0's features and errors (module docstring): those are compared apart
    common = [k for k in ours_at if k in theirs_at and not (k[0] in (FEATURE, ERROR) and k[2] == 0)]
    in_common = set(common)
    io = torch.tensor([ours_at[k] for k in common])
    it = torch.tensor([theirs_at[k] for k in common])
    a, b = ours["adjacency"][io][:, io].double(), theirs["adjacency"][it][:, it].double()
    diff = (a - b).abs()
    is_feature = torch.tensor([k[0] == FEATURE for k in common])
    n_feat = [int((keys[:, 0] == FEATURE).sum()) for keys in (ours["keys"], theirs["keys"])]
    ours_only = torch.tensor([i for k, i in ours_at.items() if k not in in_common], dtype=torch.long)
    theirs_rest = theirs["adjacency"][:, [i for k, i in theirs_at.items() if k not in in_common]]
    pos0_out = ours["adjacency"][io][:, ours_only].abs().max().item() if len(ours_only) else 0.0
    act_o = ours["activations"][io[is_feature] if is_feature.any() else io[:0]]
    act_t = theirs["activations"][it[is_feature] if is_feature.any() else it[:0]]
    logits = [g["keys"][g["keys"][:, 0] == LOGIT].tolist() for g in (ours, theirs)]
    return {"common": len(common), "features": n_feat, "ours_only": len(ours_only),
            "theirs_only": len(theirs_at) - len(common), "theirs_rest_max": theirs_rest.abs().max().item(),
            "logits_match": logits[0] == logits[1],
            "max_abs": a.abs().max().item(), "max_diff": diff.max().item(),
            "rel_max": (diff.max() / a.abs().max()).item(), "rel_fro": ((a - b).norm() / a.norm()).item(),
            "act_diff": (act_o - act_t).abs().max().item() if len(act_o) else 0.0, "pos0_out_max": pos0_out}


def in_child(tool: str, args, n: int, n_ctx: int, out: Path) -> dict:
    batch_size = args.batch_size if tool == "ours" else args.ct_batch_size
    spec = [tool, args.activation, n, n_ctx, args.vocab, batch_size, args.reps, str(out)]
    command = [sys.executable, __file__, "--child", json.dumps(spec)]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{tool} at {n} tokens failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(n: int, ours: dict, theirs: dict, agree: dict) -> None:
    o, t = ours["meta"], theirs["meta"]
    print(f"{n:6d} {o['rows']:6d} {t['rows']:7d} {o['seconds']:8.2f} {o['peak_rss_mb']:7.0f} "
          f"{o['growth_mb']:+7.0f} {t['seconds']:8.2f} {t['peak_rss_mb']:7.0f} "
          f"{t['growth_mb']:+7.0f} {t['seconds'] / o['seconds']:6.2f}x", flush=True)
    print(f"       agreement on {agree['common']} common nodes (features ours {agree['features'][0]}, "
          f"theirs {agree['features'][1]}; ours-only {agree['ours_only']}, theirs-only {agree['theirs_only']}; "
          f"logit targets {'identical' if agree['logits_match'] else 'DIFFER'}): max |edge| {agree['max_abs']:.3e}, "
          f"max |diff| {agree['max_diff']:.3e} (relative {agree['rel_max']:.1e}, Frobenius {agree['rel_fro']:.1e}); "
          f"activations max |diff| {agree['act_diff']:.1e}; ours' position-0 sources: max |edge| "
          f"{agree['pos0_out_max']:.3e} (constants in circuit-tracer; its position-0 error columns: max |edge| "
          f"{agree['theirs_rest_max']:.1e})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--activation", choices=["jumprelu", "relu"], default="jumprelu")
    parser.add_argument("--vocab", type=int, default=VOCAB, help="d_vocab (d_model is 64; equal sizes trip "
                        "circuit-tracer's W_U orientation guess, so its targets are then passed explicitly)")
    parser.add_argument("--batch-size", type=int, default=64, help="ours (benchmarks/attribution.py's)")
    parser.add_argument("--ct-batch-size", type=int, default=None,
                        help="circuit-tracer's (default: the same as ours; its own default is 512)")
    parser.add_argument("--reps", type=int, default=3, help="calls per measurement; the fastest is reported")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.ct_batch_size = args.ct_batch_size or args.batch_size
    if args.child:
        tool, *spec, out = json.loads(args.child)
        run = run_ours if tool == "ours" else run_circuit_tracer
        print(json.dumps(run(*spec, Path(out))))
        return
    if importlib.util.find_spec("circuit_tracer") is None:
        print(f"circuit_tracer is not importable: skipped. It is not a project dependency; install it beside "
              f"ours with\n    {INSTALL}\nand run with PYTHONPATH=/tmp/ct_pkgs (module docstring).")
        return
    try:
        version = import_circuit_tracer().__version__
    except ImportError as err:
        print(f"circuit_tracer is installed but does not import beside our packages ({err}): skipped.")
        return
    n_ctx = max(*args.lengths, CALIBRATION[1])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; circuit-tracer {version}; "
          f"transcoders {args.activation}, {N_FEATURES} features, ~{L0} active per position and layer; batch sizes: "
          f"ours {args.batch_size}, circuit-tracer {args.ct_batch_size}")
    if args.vocab == ZOO_TRANSFORMER["d_model"]:
        print("d_vocab == d_model: circuit-tracer gets its logit targets explicitly (oriented_targets)")
    print(f"{'tokens':>6s} {'rows':>6s} {'ct rows':>7s} {'ours s':>8s} {'ours MB':>7s} {'+MB':>7s} "
          f"{'ct s':>8s} {'ct MB':>7s} {'+MB':>7s} {'ct/ours':>7s}")
    with tempfile.TemporaryDirectory(prefix="attribution_vs_ct_") as tmp:
        for n in args.lengths:
            paths = {tool: Path(tmp) / f"{tool}_{n}.safetensors" for tool in ("ours", "ct")}
            in_child("ours", args, n, n_ctx, paths["ours"])
            in_child("ct", args, n, n_ctx, paths["ct"])
            ours, theirs = load_graph(paths["ours"]), load_graph(paths["ct"])
            report(n, ours, theirs, agreement(ours, theirs))
            paths["ours"].unlink()
            paths["ct"].unlink()


if __name__ == "__main__":
    main()
