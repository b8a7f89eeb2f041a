"""Edge attribution patching (EAP, EAP-IG) against real edge patching on the zoo Transformer.

On ``models/transformer-recall`` and ``--pairs`` recall prompt pairs (``pairs.recall_pairs``, the query
key corrupted), on one component graph (embedding, every head, every MLP -> every later mixer input,
MLP input and the logits; ``attribution_patching``), in one run:

1. EAP: one forward and one backward pass on the clean prompts -> a score for every edge;
2. EAP-IG: the same with the gradients averaged over ``--ig-steps`` interpolation points (one pass of
   ``k N`` rows);
3. real edge patching: every edge patched alone (the sender's corrupted change added to that receiver's
   input only), the edges stacked into batched forward passes;
4. AtP per node against real node patching (``patching.patch_runs``).

Printed: the time of each (best of ``--reps`` after a warm-up), the speed ratios real / EAP and real /
EAP-IG, and the agreement of each with real patching: Spearman rank correlation and top-10 overlap.

    OMP_NUM_THREADS=1 python benchmarks/eap.py [--model models/transformer-recall] [--pairs 32]
                                               [--ig-steps 5] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from workbench.interventions.attribution_patching import (
    agreement,
    attribution_scores,
    real_edge_effects,
    real_node_effects,
)
from workbench.interventions.pairs import recall_pairs
from workbench.interventions.path_patching import receivers, senders
from workbench.store.model_files import load_model_folder
from workbench.zoo.build import task_from_spec

ROOT = Path(__file__).resolve().parents[1]


def best_time(fn, reps: int):
    result = fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "transformer-recall"))
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--ig-steps", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    bundle = load_model_folder(args.model)
    model = bundle.model.float().eval()
    task = task_from_spec(bundle.card.get("eval_task") or bundle.card["task"])
    pairs = recall_pairs(task, args.pairs, seed=args.seed, corrupt="key")
    sender_list, receiver_list = senders(model, pairs.clean), receivers(model)
    graph = (model, pairs, sender_list, receiver_list)
    print(f"{Path(args.model).name}: {len(pairs)} pairs x {pairs.n_pos} tokens, {len(sender_list)} senders, "
          f"{len(receiver_list)} receivers; threads {torch.get_num_threads()} "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), load {os.getloadavg()[0]:.2f}")

    t_eap, (atp, eap) = best_time(lambda: attribution_scores(*graph, steps=1), args.reps)
    t_ig, (_, eap_ig) = best_time(lambda: attribution_scores(*graph, steps=args.ig_steps), args.reps)
    t_real, real = best_time(lambda: real_edge_effects(*graph), args.reps)
    t_nodes, real_nodes = best_time(lambda: real_node_effects(model, pairs, sender_list), args.reps)
    n_edges = int((~real.isnan()).sum())

    print(f"\n{n_edges} edges")
    print(f"  real edge patching   {t_real * 1e3:8.1f} ms  ({n_edges} patched runs)")
    print(f"  EAP                  {t_eap * 1e3:8.1f} ms  speed ratio real/EAP    {t_real / t_eap:7.1f}x")
    print(f"  EAP-IG ({args.ig_steps} steps)    {t_ig * 1e3:8.1f} ms  speed ratio real/EAP-IG {t_real / t_ig:7.1f}x")
    for name, scores in (("EAP", eap), ("EAP-IG", eap_ig)):
        stats = agreement(scores, real, args.top_k)
        print(f"  {name:7s} vs real: Spearman {stats['spearman']:.3f}, top-{stats['k']} overlap "
              f"{stats['top_k_overlap']:.2f} ({round(stats['top_k_overlap'] * stats['k'])}/{stats['k']})")
    stats = agreement(atp, real_nodes, args.top_k)
    print(f"\n{len(sender_list)} nodes: AtP {t_eap * 1e3:.1f} ms (the EAP pass) vs real node patching "
          f"{t_nodes * 1e3:.1f} ms; Spearman {stats['spearman']:.3f}, top-{stats['k']} overlap "
          f"{stats['top_k_overlap']:.2f}")


if __name__ == "__main__":
    main()
