"""Our dictionary trainer against SAELens's trainer: training tokens/s of a TopK SAE, ratio ours/SAELens.

Both train the same dictionary on the same activations in one run:

1. Activations: ``--source zoo`` (default) collects ``--hook`` of a zoo model (``--model``, default
   models/transformer-recall) over ``--sequences`` training sequences with the workbench's activation
   store; ``--source random`` draws ``--rows`` x ``--d-in`` sparse synthetic rows instead.
2. The same dictionary: a TopK SAE with ``d_sae = --expansion * d_in`` features, the same ``k``,
   batch size, step count, learning rate and Adam betas, no activation normalisation, on the CPU with
   ``--threads`` threads.
3. Ours: :func:`train_dictionary` on the activations in memory (its own shuffled minibatches, AuxK,
   unit-norm decoder projection, one checkpoint at the end, a one-batch final evaluation and the
   published dictionary: everything a real run does).
4. SAELens: its ``SAETrainer`` (the loop under its LanguageModelSAETrainingRunner, which takes any
   iterator of activation batches) with a ``TopKTrainingSAE`` of its defaults otherwise, fed the same
   minibatches already shuffled in memory (so SAELens pays nothing for data; ours pays its shuffle).
5. Each trainer runs ``--reps`` times, alternating, after a short warm-up; the best wall time of each
   gives tokens/s = steps * batch / seconds. Printed: both, the ratio ours/SAELens (target >= 1),
   and each trained SAE's FVU on held-out rows (they should be comparable trainers, not just fast).

    python benchmarks/dict_train.py [--steps 300] [--batch 1024] [--k 16] [--expansion 8] [--reps 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # SAELens's progress bar would garble the output

import torch

from workbench.dictionaries import (
    DictionaryConfig,
    DictTrainConfig,
    TensorActivations,
    collect_activations,
    fvu,
    train_dictionary,
)

ROOT = Path(__file__).resolve().parents[1]


def zoo_activations(model_folder: Path, hook: str, sequences: int, folder: Path) -> torch.Tensor:
    from workbench.dictionaries.jobs import bundle_task
    from workbench.store.model_files import load_model_folder

    bundle = load_model_folder(model_folder)
    store = collect_activations(bundle.model, bundle_task(bundle), folder, [hook], sequences, progress=False,
                                model_config=bundle.config, model_name=bundle.name)
    return torch.cat([store.load_shard(i, [hook])[hook] for i in range(len(store.shard_rows))]).float()


def random_activations(rows: int, d_in: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(4 * d_in, d_in, generator=g), dim=1)
    codes = torch.rand(rows, 4 * d_in, generator=g).pow(20)  # a few large codes per row
    return codes @ directions


def ours(x: torch.Tensor, args, run_dir: Path) -> tuple[float, object]:
    config = DictionaryConfig("sae", d_in=x.shape[1], n_features=args.expansion * x.shape[1], activation="topk",
                              k=args.k, input_hooks=["x"], output_hooks=["x"])
    cfg = DictTrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=0, decay_start=1.0,
                          normalize_activations=False, checkpoint_every=args.steps, eval_batches=1,
                          log_every=max(1, args.steps // 10), dead_window_tokens=1000 * args.batch)
    start = time.perf_counter()
    result = train_dictionary(config, TensorActivations({"x": x}), cfg, run_dir, progress=False)
    return time.perf_counter() - start, result.dictionary


def saelens(x: torch.Tensor, args) -> tuple[float, object]:
    from sae_lens import LoggingConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=args.expansion * x.shape[1], k=args.k,
                                                normalize_activations="none"))
    cfg = SAETrainerConfig(total_training_samples=args.steps * args.batch, train_batch_size_samples=args.batch,
                           lr=args.lr, lr_end=args.lr, device="cpu", dead_feature_window=1000, n_checkpoints=0,
                           save_final_checkpoint=False, logger=LoggingConfig(log_to_wandb=False))
    g = torch.Generator().manual_seed(1)
    order = torch.cat([torch.randperm(x.shape[0], generator=g)
                       for _ in range(args.steps * args.batch // x.shape[0] + 1)])
    batches = iter([x[order[s * args.batch:(s + 1) * args.batch]] for s in range(args.steps)])
    start = time.perf_counter()
    SAETrainer(cfg, sae, batches).fit()
    return time.perf_counter() - start, sae


@torch.no_grad()
def held_out_fvu(sae_forward, x: torch.Tensor) -> float:
    return float(fvu(sae_forward(x)[:, None], x[:, None]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["zoo", "random"], default="zoo")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "transformer-recall")
    parser.add_argument("--hook", default="blocks.1.hook_mlp_out")
    parser.add_argument("--sequences", type=int, default=512)
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.source == "zoo":
            x = zoo_activations(args.model, args.hook, args.sequences, tmp / "store")
            what = f"{args.model.name} {args.hook}"
        else:
            x, what = random_activations(args.rows, args.d_in), "random sparse rows"
        held_out, x = x[: args.batch], x[args.batch:]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {what}: {x.shape[0]:,} rows x "
              f"{x.shape[1]}; TopK SAE d_sae={args.expansion * x.shape[1]} k={args.k}, batch {args.batch}, "
              f"{args.steps} steps")
        warm = argparse.Namespace(**{**vars(args), "steps": 5})
        ours(x, warm, tmp / "warm")
        saelens(x, warm)
        times = {"ours": [], "saelens": []}
        for rep in range(args.reps):
            seconds, ours_sae = ours(x, args, tmp / f"ours-{rep}")
            times["ours"].append(seconds)
            seconds, their_sae = saelens(x, args)
            times["saelens"].append(seconds)
        tokens = args.steps * args.batch
        rate = {name: tokens / min(t) for name, t in times.items()}
        fvus = {"ours": held_out_fvu(lambda v: ours_sae(v)[0], held_out),
                "saelens": held_out_fvu(lambda v: their_sae.eval()(v), held_out)}
        for name in ("ours", "saelens"):
            print(f"{name:8s} {rate[name]:12,.0f} tokens/s  (best of {[f'{t:.2f}s' for t in times[name]]}); "
                  f"held-out FVU {fvus[name]:.4f}")
        print(f"ratio ours/SAELens: {rate['ours'] / rate['saelens']:.2f}x (target >= 1)")


if __name__ == "__main__":
    main()
