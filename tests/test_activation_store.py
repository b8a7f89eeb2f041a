"""The activation store: real-token rows, widths from the cache, manifest, resume to the same bytes,
refusals, the deterministic shuffled reader, live mode, and a CLT trained from a store."""

import pytest
import torch
from conftest import TINY_CONFIGS

from workbench.architectures import build_model, model_config
from workbench.dictionaries import (
    ActivationStore,
    DictionaryConfig,
    DictTrainConfig,
    HookNotFound,
    LiveActivations,
    collect_activations,
    layer_hooks,
    load_dictionary,
    real_token_rows,
    train_dictionary,
    transcoder_hooks,
)
from workbench.dictionaries import activations as activations_module
from workbench.tasks import make_task

TASK = make_task("toyworld")  # padded sequences: real tokens != positions
HOOKS = transcoder_hooks([0, 1])


def tiny_model(arch: str):
    return build_model(model_config(arch, TASK.tokenizer.vocab_size, TASK.seq_len, seed=0, **TINY_CONFIGS[arch]))


def collect(model, folder, **overrides):
    values = {"hooks": HOOKS, "n_sequences": 20, "shard_sequences": 6, "batch_size": 4, "seed": 5,
              "progress": False, "model_config": {"arch": type(model).__name__}}
    return collect_activations(model, TASK, folder, **{**values, **overrides})


@pytest.fixture(scope="module")
def rwkv():
    return tiny_model("rwkv")


def test_store_holds_real_token_rows_with_widths_from_the_cache(tmp_path, rwkv):
    reports = []
    store = collect(rwkv, tmp_path / "store", hooks=HOOKS + layer_hooks("resid_post", [1]), report=reports.append)
    m = store.manifest
    assert "shard(s)" in reports[0] and "MiB on disk" in reports[0]
    # RWKV's channel-mix reads [x_t, x_{t-1}]: mlp_in is twice as wide as d_model
    assert store.widths == {"blocks.0.hook_mlp_in": 32, "blocks.0.hook_mlp_out": 16, "blocks.1.hook_mlp_in": 32,
                            "blocks.1.hook_mlp_out": 16, "blocks.1.hook_resid_post": 16}
    assert m["complete"] and m["dtype"] == "float32" and m["seed"] == 5 and len(m["shards"]) == 4
    assert [s["sequences"] for s in m["shards"]] == [[0, 6], [6, 12], [12, 18], [18, 20]]
    assert m["plan"]["bytes"] == pytest.approx(m["bytes"], rel=0.02)
    assert m["collection"]["model"]["weights_sha256"] and m["fingerprint"]

    tokens = torch.cat([activations_module.shard_tokens(TASK, "train", 5, k, 20, 6) for k in range(4)])
    assert store.n_rows == sum(store.shard_rows) == int((tokens != TASK.tokenizer.pad_id).sum()) < tokens.numel()
    shard = store.load_shard(1, row_meta=True)
    assert (shard["token_id"] != TASK.tokenizer.pad_id).all()
    direct = real_token_rows(rwkv, tokens[6:12], HOOKS, TASK.tokenizer.pad_id)
    for name in HOOKS:
        assert torch.allclose(shard[name], direct[name], atol=1e-6)
    row = 7  # a single row, checked against the model's own cache at its (sequence, position)
    _, cache = rwkv.run_with_cache(tokens[shard["sequence_index"][row]][None], names_filter=HOOKS)
    assert torch.allclose(shard[HOOKS[0]][row], cache[HOOKS[0]][0, shard["position"][row]], atol=1e-6)


def test_interrupted_collection_resumes_to_identical_files(tmp_path, monkeypatch):
    mamba = tiny_model("mamba")
    straight = collect(mamba, tmp_path / "a")
    real_write = activations_module._write_shard

    def killed_at_shard_2(folder, model, task, spec, widths, index):
        if index == 2:
            raise KeyboardInterrupt("killed")
        return real_write(folder, model, task, spec, widths, index)

    monkeypatch.setattr(activations_module, "_write_shard", killed_at_shard_2)
    with pytest.raises(KeyboardInterrupt):
        collect(mamba, tmp_path / "b")
    monkeypatch.setattr(activations_module, "_write_shard", real_write)
    with pytest.raises(RuntimeError, match=r"incomplete \(2 of 4 shards\)"):
        ActivationStore(tmp_path / "b")
    calls = []
    monkeypatch.setattr(activations_module, "_write_shard", lambda *a: calls.append(a[-1]) or real_write(*a))
    resumed = collect(mamba, tmp_path / "b")
    assert calls == [2, 3]  # finished shards are skipped
    names = sorted(p.name for p in straight.folder.iterdir())
    assert names == sorted(p.name for p in resumed.folder.iterdir())
    for name in names:
        assert (straight.folder / name).read_bytes() == (resumed.folder / name).read_bytes(), name


def test_a_different_collection_is_refused(tmp_path, rwkv):
    collect(rwkv, tmp_path / "s")
    with pytest.raises(ValueError, match=r"different collection.*seed: 5 -> 6"):
        collect(rwkv, tmp_path / "s", seed=6)
    with pytest.raises(ValueError, match="over max_bytes=1,000"):
        collect(rwkv, tmp_path / "t", max_bytes=1000)


def test_missing_hook_error_names_it_and_lists_the_choices(tmp_path, rwkv):
    transformer = tiny_model("transformer")
    for model in (transformer, rwkv):
        with pytest.raises(HookNotFound, match=r"no hook 'blocks.7.hook_mlp_in'.*blocks.0.hook_mlp_in, blocks.1.hook_mlp_in"):
            collect(model, tmp_path / "x", hooks=["blocks.0.hook_mlp_out", "blocks.7.hook_mlp_in"])
    with pytest.raises(HookNotFound, match="no hook 'blocks.0.hook_mlp_inn'"):
        LiveActivations(rwkv, TASK, ["blocks.0.hook_mlp_inn"])
    assert not (tmp_path / "x").exists()


def test_shuffled_reader_is_deterministic_and_covers_every_row_once_per_epoch(tmp_path, rwkv):
    store = collect(rwkv, tmp_path / "s")
    n = store.n_rows

    def row_ids(batches):
        return [(int(s), int(p)) for b in batches for s, p in zip(b["sequence_index"], b["position"], strict=True)]

    for window in (None, 1):
        epoch = list(store.minibatches(32, seed=3, window_shards=window, epochs=1, row_meta=True))
        assert [len(b["token_id"]) for b in epoch] == [32] * (n // 32) + ([n % 32] if n % 32 else [])
        ids = row_ids(epoch)
        assert len(ids) == n and len(set(ids)) == n
        again = list(store.minibatches(32, seed=3, window_shards=window, epochs=1, row_meta=True))
        assert all(torch.equal(a[k], b[k]) for a, b in zip(epoch, again, strict=True) for k in a)
    other = row_ids(store.minibatches(32, seed=4, epochs=1, row_meta=True))
    assert other != row_ids(epoch) and sorted(other) == sorted(row_ids(epoch))
    stream = store.minibatches(32, seed=3, hooks=HOOKS[:1])
    first = [next(stream) for _ in range(12)]  # crosses into the second epoch
    resumed = store.minibatches(32, seed=3, start_batch=5, hooks=HOOKS[:1])
    assert all(torch.equal(first[5 + i][HOOKS[0]], next(resumed)[HOOKS[0]]) for i in range(7))
    with pytest.raises(KeyError, match="holds no hook 'blocks.3.hook_mlp_in'"):
        next(store.minibatches(8, seed=0, hooks=["blocks.3.hook_mlp_in"]))


def test_live_mode_streams_the_same_rows_resumes_and_trains(tmp_path, rwkv):
    live = LiveActivations(rwkv, TASK, HOOKS, chunk_sequences=4)
    assert live.widths["blocks.0.hook_mlp_in"] == 32
    stream = live.minibatches(30, seed=1)
    batches = [next(stream) for _ in range(5)]
    assert all(b[h].shape == (30, live.widths[h]) for b in batches for h in HOOKS)
    resumed = live.minibatches(30, seed=1, start_batch=3)
    assert all(torch.equal(batches[3 + i][h], b[h]) for i, b in zip(range(2), resumed) for h in HOOKS)
    chunk = live._chunk_tokens(1, 0)
    rows = real_token_rows(rwkv, chunk, HOOKS, TASK.tokenizer.pad_id)
    seen = {tuple(r.tolist()) for r in torch.cat([b[HOOKS[1]] for b in batches])}
    assert all(tuple(r.tolist()) in seen for r in rows[HOOKS[1]][:10])
    config = DictionaryConfig("transcoder", d_in=32, d_out=16, n_features=16, input_hooks=HOOKS[:1],
                              output_hooks=HOOKS[1:2])
    cfg = DictTrainConfig(steps=3, batch_size=30, checkpoint_every=3, eval_batches=1, normalization_batches=1)
    result = train_dictionary(config, live, cfg, tmp_path / "live-run", progress=False)
    assert result.steps == 3 and result.tokens == 90 and len(result.metrics["fvu"]) == 1


def test_clt_trains_from_a_transformer_store(tmp_path):
    transformer = tiny_model("transformer")
    store = collect(transformer, tmp_path / "store")
    width = store.widths[HOOKS[0]]
    config = DictionaryConfig("clt", d_in=width, d_out=store.widths[HOOKS[1]], n_features=24, n_layers=2,
                              activation="jumprelu", input_hooks=HOOKS[0::2], output_hooks=HOOKS[1::2])
    cfg = DictTrainConfig(steps=20, batch_size=64, lr=1e-2, warmup_steps=2, checkpoint_every=10, eval_batches=2,
                          sparsity_coef=1e-3, pre_act_coef=1e-4)
    result = train_dictionary(config, store, cfg, tmp_path / "run", progress=False)
    loss = result.curves.query("metric == 'loss'")["value"].tolist()
    assert loss[-1] < loss[0]
    assert len(result.metrics["fvu"]) == 2 and len(result.metrics["dead_fraction"]) == 2
    loaded = load_dictionary(tmp_path / "run" / "dictionary")
    assert loaded.config.input_hooks == HOOKS[0::2]
    assert not torch.equal(loaded.input_scale, torch.ones(2))  # activations were normalised
