"""Data-parallel dictionary training: two gloo processes reach the weights of one process on the same
global batches (data_shards=2), and a distributed run resumes bit for bit.

The two processes are forked from the test (they inherit the imported workbench: a fresh interpreter
spends most of its time importing transformer_lens) and given torchrun's environment variables, so
they start exactly as under torchrun. Run as a script, ``python -m torch.distributed.run
--standalone --nproc_per_node 2 tests/test_dict_distributed.py OUT``, this file is the same worker."""

import multiprocessing
import os
import socket
import sys
import traceback
from pathlib import Path

import pytest
import torch

from workbench.dictionaries import (
    DictionaryConfig,
    DictTrainConfig,
    TensorActivations,
    load_dictionary,
    train_dictionary,
)
from workbench.dictionaries.distributed import Comm, global_minibatches, source_parts

ROWS = 501  # odd: the two parts differ by a row, so epoch-end minibatches differ in size across processes


def dataset() -> TensorActivations:
    g = torch.Generator().manual_seed(5)
    directions = torch.nn.functional.normalize(torch.randn(24, 12, generator=g), dim=1)
    chosen = torch.rand(ROWS, 24, generator=g).argsort(dim=1)[:, :3]
    codes = torch.zeros(ROWS, 24).scatter(1, chosen, 0.5 + torch.rand(ROWS, 3, generator=g))
    x = codes @ directions
    return TensorActivations({"in0": x, "out0": x @ torch.randn(12, 12, generator=g) / 3.0,
                              "in1": x.roll(1, dims=1), "out1": x.tanh()})


def train_config(**overrides) -> DictTrainConfig:
    values = {"steps": 24, "batch_size": 64, "lr": 1e-2, "warmup_steps": 4, "sparsity_warmup_steps": 4,
              "checkpoint_every": 6, "eval_batches": 2, "log_every": 4, "dead_window_tokens": 96,
              "data_shards": 2}
    return DictTrainConfig(**{**values, **overrides})


# (name, dictionary config, train overrides): TopK + AuxK + resampling, a BatchTopK CLT (global
# threshold), and JumpReLU with the tanh and pre-activation losses
CASES = {
    "topk": (DictionaryConfig("transcoder", d_in=12, n_features=24, activation="topk", k=3,
                              input_hooks=["in0"], output_hooks=["out0"]),
             {"auxk_coef": 0.1, "resample_every": 7}),
    "batchtopk_clt": (DictionaryConfig("clt", d_in=12, n_features=16, n_layers=2, activation="batchtopk", k=2,
                                       input_hooks=["in0", "in1"], output_hooks=["out0", "out1"]),
                      {"auxk_coef": 0.1}),
    "jumprelu": (DictionaryConfig("skip_transcoder", d_in=12, n_features=24, activation="jumprelu",
                                  input_hooks=["in0"], output_hooks=["out0"]),
                 {"sparsity": "tanh", "pre_act_coef": 1e-3}),
}


class PartPoisonedFrom:
    """``dataset()`` whose part 1 turns NaN from minibatch ``at`` on: only one process sees it."""

    def __init__(self, at: int, data: TensorActivations | None = None, poisoned: bool = False):
        self.data, self.at, self.poisoned = data or dataset(), at, poisoned
        self.hooks, self.widths = self.data.hooks, self.data.widths

    def fingerprint(self):
        return {"poisoned_from": self.at}

    def shard(self, index, count):
        return PartPoisonedFrom(self.at, self.data.shard(index, count), poisoned=index == 1)

    def minibatches(self, batch_size, seed, start_batch=0, hooks=None):
        for i, batch in enumerate(self.data.minibatches(batch_size, seed, start_batch, hooks), start=start_batch):
            yield {k: v * float("nan") for k, v in batch.items()} if self.poisoned and i >= self.at else batch


def worker(out: Path) -> None:
    """Each torchrun process: every case straight, the first case stopped at step 12 and resumed, and
    a run whose data turns NaN on one process only (both must stop, keeping the last checkpoint)."""
    from workbench.dictionaries.distributed import init_from_env, shutdown
    from workbench.training import TrainingDiverged

    comm = init_from_env()
    assert comm.world == 2, f"expected 2 processes, got {comm.world}"
    for name, (config, overrides) in CASES.items():
        train_dictionary(config, dataset(), train_config(**overrides), out / name, progress=False)
    config, overrides = CASES["topk"]
    first = train_dictionary(config, dataset(), train_config(**overrides), out / "resumed", progress=False,
                             stop_after=12)
    assert first.steps == 12
    train_dictionary(config, dataset(), train_config(**overrides), out / "resumed", progress=False)
    try:
        train_dictionary(config, PartPoisonedFrom(8), train_config(normalize_activations=False), out / "nan",
                         progress=False)
    except TrainingDiverged as err:
        (out / f"nan-rank{comm.rank}.txt").write_text(str(err))
    shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def forked_rank(rank: int, port: int, out: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        worker(out)
    except BaseException:
        (out / f"rank{rank}.error").write_text(traceback.format_exc())
        raise


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    context, port = multiprocessing.get_context("fork"), free_port()
    ranks = [context.Process(target=forked_rank, args=(rank, port, out)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=180)
    for process in ranks:
        if process.is_alive():
            process.kill()
    errors = "".join(p.read_text() for p in sorted(out.glob("rank*.error")))
    assert [p.exitcode for p in ranks] == [0, 0], f"exit codes {[p.exitcode for p in ranks]}\n{errors}"
    return out


def test_parts_concatenate_to_the_one_process_batches():
    source, cfg = dataset(), train_config()
    hooks = ["in0", "out0"]
    one = global_minibatches(source_parts(source, 2, Comm()), 64, 2, seed=3, start_batch=0, hooks=hooks)
    ranks = [global_minibatches(source_parts(source, 2, Comm(rank, 2)), 64, 2, 3, 0, hooks) for rank in (0, 1)]
    for _ in range(10):  # across an epoch end (8 minibatches of 32 per part)
        batch, parts = next(one), [next(r) for r in ranks]
        assert torch.equal(batch["in0"], torch.cat([p["in0"] for p in parts]))
    assert cfg.data_shards == 2
    with pytest.raises(ValueError, match=r"data_shards \(3\) must be a positive multiple of the number of processes"):
        Comm(0, 2).views(3)
    with pytest.raises(ValueError, match=r"batch_size \(64\) must be divisible by data_shards \(3\)"):
        train_config(data_shards=3).resolved(CASES["topk"][0])


def test_store_and_live_parts_split_the_rows(tmp_path):
    from conftest import TINY_CONFIGS

    from workbench.architectures import build_model, model_config
    from workbench.dictionaries import LiveActivations, collect_activations, transcoder_hooks
    from workbench.tasks import make_task

    task = make_task("toyworld")
    model = build_model(model_config("transformer", task.tokenizer.vocab_size, task.seq_len, seed=0,
                                     **TINY_CONFIGS["transformer"]))
    hooks = transcoder_hooks([0])
    store = collect_activations(model, task, tmp_path / "store", hooks, n_sequences=12, shard_sequences=4,
                                progress=False)  # 3 files

    def rows(source):
        batches = source.minibatches(7, seed=1, epochs=1, row_meta=True)
        return [(int(s), int(p)) for b in batches for s, p in zip(b["sequence_index"], b["position"], strict=True)]

    everything = sorted(rows(store))
    for count, split in ((2, "files"), (4, "rows")):  # 3 files: 2 parts take files, 4 parts take rows
        parts = [rows(store.shard(i, count)) for i in range(count)]
        assert sorted(r for part in parts for r in part) == everything, split
        assert all(parts) and len({r for part in parts for r in part}) == len(everything)
    by_file = [{s // 4 for s, _ in rows(store.shard(i, 2))} for i in range(2)]
    assert by_file == [{0, 2}, {1}]
    live = LiveActivations(model, task, hooks, chunk_sequences=4)
    part = live.shard(1, 2)
    assert torch.equal(part._chunk_tokens(3, 0), live._chunk_tokens(3, 1))
    assert torch.equal(part._chunk_tokens(3, 2), live._chunk_tokens(3, 5))
    assert next(part.minibatches(8, seed=3))[hooks[0]].shape == (8, TINY_CONFIGS["transformer"]["d_model"])


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_reach_the_one_process_weights(distributed_runs, tmp_path, name):
    config, overrides = CASES[name]
    single = train_dictionary(config, dataset(), train_config(**overrides), tmp_path / name, progress=False)
    distributed = load_dictionary(distributed_runs / name / "dictionary")
    expected = single.dictionary.state_dict()
    for key, value in distributed.state_dict().items():
        assert torch.allclose(value, expected[key], rtol=1e-4, atol=1e-5), (name, key)
    one_curves = single.curves.set_index(["step", "metric"])["value"]
    from workbench.training.checkpoint import latest_checkpoint

    saved = latest_checkpoint(distributed_runs / name)
    assert saved.step == 24 and saved.state["config"]["train"]["data_shards"] == 2
    for row in saved.state["curves"]:
        if row["metric"] in ("loss", "mse", "dead_fraction"):
            assert row["value"] == pytest.approx(one_curves[(row["step"], row["metric"])], rel=1e-4, abs=1e-6)


def test_nan_on_one_process_stops_every_process_and_keeps_the_checkpoint(distributed_runs):
    from workbench.training import list_checkpoints

    for rank in (0, 1):
        message = (distributed_runs / f"nan-rank{rank}.txt").read_text()
        assert "at step 8" in message and "step-00000006 (step 6)" in message
    assert [s for s, _ in list_checkpoints(distributed_runs / "nan")] == [6]


def test_a_distributed_run_resumes_to_the_same_bytes(distributed_runs):
    straight = load_dictionary(distributed_runs / "topk" / "dictionary").state_dict()
    resumed = load_dictionary(distributed_runs / "resumed" / "dictionary").state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
