"""Spliced metrics, feature data and the `wb dict` commands, on tiny models built here."""

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from workbench.architectures import build_model, model_config
from workbench.cli import app
from workbench.dictionaries import DictionaryConfig, build_dictionary
from workbench.dictionaries.activations import real_token_rows
from workbench.dictionaries.dictionary_set import load_dictionary_set
from workbench.dictionaries.features import feature_data, unembedding_matrix, with_bin_edges
from workbench.dictionaries.splice import spliced_logits, spliced_metrics
from workbench.store import Catalog
from workbench.store.atomic import atomic_write_json, read_json
from workbench.store.model_files import save_model_folder
from workbench.tasks import make_task

TASK = make_task("recall")
PAD = TASK.tokenizer.pad_id
runner = CliRunner()


def tiny_model(**extra):
    cfg = model_config("transformer", TASK.tokenizer.vocab_size, TASK.seq_len, seed=0, n_layers=2, d_model=16,
                       n_heads=2, d_mlp=32, **extra)
    return build_model(cfg).eval(), cfg


def exact_set(model, kind: str):
    """Dictionaries that reproduce each relu MLP exactly: encoder = W_in, decoder = W_out."""
    mlps = [block.mlp for block in model.blocks]
    ins = [f"blocks.{l}.hook_mlp_in" for l in range(2)]
    outs = [f"blocks.{l}.hook_mlp_out" for l in range(2)]
    if kind == "clt":
        d = build_dictionary(DictionaryConfig("clt", d_in=16, n_features=32, d_out=16, n_layers=2, activation="relu",
                                              input_hooks=ins, output_hooks=outs))
        with torch.no_grad():
            for l, mlp in enumerate(mlps):
                d.W_enc[l].copy_(mlp.W_in)
                d.b_enc[l].copy_(mlp.b_in)
                d.W_dec[l].zero_()
                d.W_dec[l][:, 0].copy_(mlp.W_out)
                d.b_dec[l].copy_(mlp.b_out)
        return [d]
    out = []
    for l, mlp in enumerate(mlps):
        d = build_dictionary(DictionaryConfig("transcoder", d_in=16, n_features=32, d_out=16, activation="relu",
                                              input_hooks=[ins[l]], output_hooks=[outs[l]]))
        with torch.no_grad():
            d.W_enc[0].copy_(mlp.W_in)
            d.b_enc[0].copy_(mlp.b_in)
            d.W_dec[0][:, 0].copy_(mlp.W_out)
            d.b_dec[0].copy_(mlp.b_out)
        out.append(d)
    return out


@pytest.mark.parametrize("kind", ["transcoder", "clt"])
def test_exact_replacement_keeps_the_loss_and_agreement(kind):
    model, _ = tiny_model(act_fn="relu")
    batch = TASK.sample("test", 12, 0)
    m = spliced_metrics(model, exact_set(model, kind), batch.tokens, batch.loss_mask, batch_size=5)
    assert m.loss_all_replaced == pytest.approx(m.loss_original, abs=1e-5)
    assert all(v == pytest.approx(m.loss_original, abs=1e-5) for v in m.loss_replaced.values())
    assert set(m.loss_replaced) == {"blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"}
    assert m.agreement == 1.0 and m.n_positions == m.n_targets == int(batch.loss_mask[:, 1:].sum())


def test_zero_replacement_changes_the_loss():
    model, _ = tiny_model(act_fn="relu")
    zero = exact_set(model, "transcoder")
    with torch.no_grad():
        for d in zero:
            for p in d.parameters():
                p.zero_()
    batch = TASK.sample("test", 8, 0)
    m = spliced_metrics(model, zero, batch.tokens, batch.loss_mask)
    assert abs(m.loss_all_replaced - m.loss_original) > 1e-4
    assert abs(m.loss_replaced["blocks.0.hook_mlp_out"] - m.loss_original) > 1e-4


def test_agreement_counts_only_positions_that_predict_a_target():
    """Agreement against a per-row, per-position count: position t counts when target t + 1 is in the
    loss mask (a recall row: only the answers), whatever the argmax does elsewhere."""
    model, _ = tiny_model(act_fn="relu")
    noisy = exact_set(model, "transcoder")
    with torch.no_grad():
        for d in noisy:
            d.W_dec[0].add_(0.02 * torch.randn(d.W_dec[0].shape, generator=torch.Generator().manual_seed(0)))
    batch = TASK.sample("test", 64, 1)
    m = spliced_metrics(model, noisy, batch.tokens, batch.loss_mask, batch_size=7)
    original = spliced_logits(model, noisy, batch.tokens, set()).argmax(-1)
    replaced = spliced_logits(model, noisy, batch.tokens, {d.config.output_hooks[0] for d in noisy}).argmax(-1)
    agree = total = 0
    for row in range(batch.tokens.shape[0]):
        for t in range(batch.tokens.shape[1] - 1):
            if batch.loss_mask[row, t + 1]:
                total += 1
                agree += int(original[row, t] == replaced[row, t])
    assert total == m.n_positions < int((batch.tokens != PAD).sum())  # recall: prompts carry no target
    assert m.agreement == pytest.approx(agree / total)
    assert 0 < m.agreement < 1  # the noise flips some answers and not others: the count is not trivial


def test_feature_data_matches_brute_force():
    model, _ = tiny_model()
    d = build_dictionary(DictionaryConfig("transcoder", d_in=16, n_features=24, d_out=16, activation="topk", k=4,
                                          input_hooks=["blocks.1.hook_mlp_in"], output_hooks=["blocks.1.hook_mlp_out"]))
    tokens = TASK.sample("train", 6, 3).tokens
    frames = feature_data(model, {"t": d}, tokens, TASK.tokenizer, n_top=10, n_bands=4, n_per_band=5, n_bins=7)
    rows = real_token_rows(model, tokens, ["blocks.1.hook_mlp_in"], PAD)["blocks.1.hook_mlp_in"]
    acts = d.encode(rows).detach()  # [real tokens, features] in (sequence, position) order
    n_tokens = acts.shape[0]
    ctx, hist, feats = frames["contexts"], frames["histograms"], frames["features"]
    assert (ctx["layer"] == 1).all() and len(feats) == 24
    position_of = {(s, p): i for i, (s, p) in enumerate((tokens != PAD).nonzero().tolist())}
    for f in range(24):
        top = ctx[(ctx.feature == f) & (ctx.group == "top")].sort_values("rank")
        expected = acts[:, f].sort(descending=True).values
        active = int((acts[:, f] != 0).sum())
        assert len(top) == min(10, active)
        assert torch.allclose(torch.tensor(top.activation.values), expected[:len(top)], atol=1e-6)
        for s, p, a in zip(top.sequence_index, top.position, top.activation, strict=True):
            assert acts[position_of[(s, p)], f].item() == pytest.approx(a, abs=1e-6)
        for _, c in top.iterrows():  # per-token highlighting: every real token of the window, its activation
            s, p = int(c.sequence_index), int(c.position)
            window = [q for q in range(p - 8, p + 9) if (s, q) in position_of]  # the default window: 8
            assert list(c.window_tokens) == TASK.tokenizer.tokens(tokens[s, window].tolist())
            expected_w = [acts[position_of[(s, q)], f].item() for q in window]
            assert list(c.window_activations) == pytest.approx(expected_w, abs=1e-6)
            assert c.window_activations[c.window_center] == pytest.approx(c.activation, abs=1e-6)
        band = ctx[(ctx.feature == f) & (ctx.group == "band")]
        assert (band.activation != 0).all()
        assert hist[hist.feature == f]["count"].sum() == n_tokens
        assert hist[(hist.feature == f) & (hist.bin == 0)]["count"].item() == n_tokens - active
        assert feats.density[f] == pytest.approx(active / n_tokens)
        nonzero = acts[:, f][acts[:, f] != 0]
        if active:  # the bins' edges, left out of the file, follow from the feature's nonzero range
            assert (feats.nonzero_min[f], feats.nonzero_max[f]) == (nonzero.min().item(), nonzero.max().item())
            edged = with_bin_edges(hist[hist.feature == f], feats, 7)
            for _, b in edged[edged.bin >= 1].iterrows():  # each stored bin counts the values between its edges
                closed = b.bin == 7 or b.hi <= b.lo  # the last bin, or a one-valued feature's zero-width bin
                inside = (nonzero >= b.lo - 1e-6) & ((nonzero <= b.hi + 1e-6) if closed else (nonzero < b.hi))
                assert int(inside.sum()) == b["count"]
            assert edged[edged.bin >= 1].lo.min() >= nonzero.min().item() - 1e-6
    effects = d.W_dec[0][5, 0].detach() @ unembedding_matrix(model).detach()
    row = feats[feats.feature == 5].iloc[0]
    assert torch.allclose(torch.tensor(row.top_values, dtype=torch.float32), effects.topk(10).values, atol=1e-5)
    assert torch.allclose(torch.tensor(row.bottom_values, dtype=torch.float32), -(-effects).topk(10).values, atol=1e-5)
    assert row.top_tokens[0] == TASK.tokenizer.tokens([int(effects.argmax())])[0]


def test_unembedding_errors_clearly_on_unknown_models():
    with pytest.raises(TypeError, match="no unembedding known for Linear"):
        unembedding_matrix(torch.nn.Linear(2, 2))


@pytest.fixture
def model_folder(tmp_path):
    model, cfg = tiny_model()
    folder = tmp_path / "tiny-model"
    save_model_folder(folder, model, cfg, TASK.tokenizer, {"name": "tiny", "task": TASK.spec()})
    return folder


def test_dict_train_eval_features_end_to_end(model_folder, tmp_path):
    out = tmp_path / "dicts"
    args = ["dict", "train", "--model", str(model_folder), "--kind", "transcoder", "--activation", "topk", "--k", "4",
            "--features", "32", "--layers", "0,1", "--steps", "3", "--batch-size", "64", "--out", str(out),
            "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "layer0" in result.output and "FVU" in result.output and "agreement" in result.output
    assert (out / "set.json").is_file()
    result = runner.invoke(app, ["dict", "eval", "--model", str(model_folder), "--dict", str(out), "--n-eval", "8"])
    assert result.exit_code == 0, result.output
    assert "layer1" in result.output and "only blocks.1.hook_mlp_out replaced" in result.output
    result = runner.invoke(app, ["dict", "features", "--model", str(model_folder), "--dict", str(out),
                                 "--n-sequences", "8"])
    assert result.exit_code == 0, result.output
    feats = pd.read_parquet(out / "features" / "features.parquet")
    assert len(feats) == 64 and set(feats.member) == {"layer0", "layer1"}
    assert len(pd.read_parquet(out / "features" / "contexts.parquet")) > 0
    entry = Catalog().get("dictionary", "tiny-transcoder-L0-1")
    assert entry["meta"]["features"]["n_features"] == 64 and "spliced" in entry["meta"]
    assert Catalog().get("dictionary", "tiny-transcoder-L0-1/layer0")["meta"]["config"]["kind"] == "transcoder"


def test_dict_train_clt_from_a_store(model_folder, tmp_path):
    out = tmp_path / "clt"
    result = runner.invoke(app, ["dict", "train", "--model", str(model_folder), "--kind", "clt", "--features", "16",
                                 "--k", "2", "--steps", "2", "--batch-size", "64", "--out", str(out),
                                 "--activations", "store", "--n-sequences", "16", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "clt[1]" in result.output
    assert (Catalog().root / "activations" / "tiny-L0-1" / "manifest.json").is_file()


@pytest.mark.parametrize(("flag", "value", "choices"), [
    ("--kind", "transcodr", "choose one of: sae, transcoder, skip_transcoder, clt"),
    ("--activation", "tanh", "choose one of: relu, jumprelu, topk, batchtopk"),
    ("--activations", "disk", "choose one of: live, store"),
])
def test_bad_choices_give_a_clean_error(model_folder, flag, value, choices):
    result = runner.invoke(app, ["dict", "train", "--model", str(model_folder), flag, value, "--no-progress"])
    assert result.exit_code == 2 and choices in result.output and "Traceback" not in result.output


def _train(model_folder, out, *extra):
    """`wb dict train` of a tiny transcoder set (3 steps) into ``out``."""
    args = ["dict", "train", "--model", str(model_folder), "--kind", "transcoder", "--k", "4", "--features", "32",
            "--steps", "3", "--batch-size", "64", "--out", str(out), "--no-progress", *extra]
    return runner.invoke(app, args)


def _steps(out, member="layer0"):
    from workbench.training.checkpoint import list_checkpoints

    return [s for s, _ in list_checkpoints(out / "runs" / member)]


def test_dict_train_twice_into_one_folder(model_folder, tmp_path):
    out = tmp_path / "dicts"
    assert _train(model_folder, out).exit_code == 0
    first = (out / "runs" / "layer0" / "dictionary" / "dictionary.safetensors").read_bytes()
    again = _train(model_folder, out)  # the same config: resumes at its end, same dictionaries
    assert again.exit_code == 0, again.output
    assert (out / "runs" / "layer0" / "dictionary" / "dictionary.safetensors").read_bytes() == first
    other = _train(model_folder, out, "--features", "48")
    assert other.exit_code == 2 and "already holds a set of another config" in other.output
    assert "n_features: 32 -> 48" in other.output and "--force" in other.output
    assert read_set(out)["n_features"] == 32
    legacy = {k: v for k, v in read_set(out).items() if k != "request"}  # a set.json from before "request"
    atomic_write_json(out / "set.json", legacy)
    assert _train(model_folder, out).exit_code == 0  # what it records (kind, layers, features, steps) agrees
    atomic_write_json(out / "set.json", legacy)
    assert "n_features: 32 -> 48" in _train(model_folder, out, "--features", "48").output
    (out / "features").mkdir()  # feature data of the old dictionaries
    forced = _train(model_folder, out, "--features", "48", "--force")  # replaced, its checkpoints too
    assert forced.exit_code == 0, forced.output
    assert read_set(out)["n_features"] == 48 and read_set(out)["request"]["n_features"] == 48
    assert not (out / "features").exists()
    loaded, _ = load_dictionary_set(out)
    assert [d.config.n_features for d in loaded.values()] == [48, 48]


def read_set(out):
    return read_json(out / "set.json")


def test_a_concurrent_writer_of_the_same_set_is_refused(model_folder, tmp_path):
    from workbench.store.names import sole_writer

    out = tmp_path / "dicts"
    with sole_writer(out, "dictionary set folder"):  # another process training into it, as far as flock can tell
        result = _train(model_folder, out)
    assert result.exit_code == 2 and "is being written by another process" in result.output
    assert not (out / "set.json").exists() and not (out / "runs").exists()


def test_checkpoint_every_and_fresh(model_folder, tmp_path):
    out = tmp_path / "dicts"
    assert _train(model_folder, out, "--checkpoint-every", "1").exit_code == 0
    assert _steps(out) == [2, 3]  # every step, the last two kept
    assert _train(model_folder, out, "--fresh").exit_code == 0
    assert _steps(out) == [3]  # default min(100, steps): the old step-2 went with --fresh
    bad = _train(model_folder, out, "--checkpoint-every", "0")
    assert bad.exit_code == 2 and "--checkpoint-every must be at least 1" in bad.output


def test_a_resume_may_change_the_learning_rate_with_a_note(model_folder, tmp_path):
    out = tmp_path / "dicts"
    assert _train(model_folder, out).exit_code == 0
    result = _train(model_folder, out, "--lr", "0.0005")
    assert result.exit_code == 0, result.output
    assert "note: layer0 resumed with changed settings (train.lr: 0.001 -> 0.0005" in result.output
    log = (out / "runs" / "layer1" / "train.log").read_text()
    assert "resumed at step 3 with changed settings: train.lr: 0.001 -> 0.0005" in log


def test_trainer_resume_accepts_lr_and_cadence_and_refuses_the_rest(tmp_path):
    from test_dictionaries import sparse_dataset, tiny_train_config, transcoder_config

    from workbench.dictionaries.trainer import DIVERGED_ADVICE, train_dictionary

    data, config = sparse_dataset(n=256), transcoder_config()
    cfg = tiny_train_config(steps=8, checkpoint_every=2)
    train_dictionary(config, data, cfg, tmp_path / "run", progress=False, stop_after=4)
    lower = tiny_train_config(steps=8, checkpoint_every=3, lr=5e-3)
    result = train_dictionary(config, data, lower, tmp_path / "run", progress=False)
    assert result.resumed_from == 4 and result.steps == 8
    assert result.extra["resume_changes"] == ["train.checkpoint_every: 2 -> 3", "train.lr: 0.01 -> 0.005"]
    with pytest.raises(ValueError, match=r"train.steps: 8 -> 9\. A resume may change only lr, warmup_steps"):
        train_dictionary(config, data, tiny_train_config(steps=9, lr=5e-3), tmp_path / "run", progress=False)
    # the recovery advice names options `wb dict train` has
    help_text = runner.invoke(app, ["dict", "train", "--help"], terminal_width=200).output
    for option in ("--lr", "--fresh", "--force", "--checkpoint-every"):
        assert option in help_text
    assert "--lr" in DIVERGED_ADVICE and "--fresh" in DIVERGED_ADVICE


@pytest.fixture
def two_models(model_folder, tmp_path):
    """``tiny`` with a set trained on it (features written), and ``other``: same shapes, another model."""
    from workbench.dictionaries.dictionary_set import save_dictionary_set, set_model_meta
    from workbench.dictionaries.jobs import write_features
    from workbench.dictionaries.models import save_dictionary
    from workbench.store.model_files import load_model_folder

    tiny = load_model_folder(model_folder)
    folder = tmp_path / "tiny-set"
    for l, d in enumerate(exact_set(tiny.model, "transcoder")):
        save_dictionary(folder / f"layer{l}", d)
    save_dictionary_set(folder, {"layer0": "layer0", "layer1": "layer1"}, set_model_meta(tiny) | {"layers": [0, 1]})
    write_features(tiny, folder, Catalog(), n_sequences=4)
    model, cfg = tiny_model()
    save_model_folder(tmp_path / "other-model", model, cfg, TASK.tokenizer, {"name": "other", "task": TASK.spec()})
    return tmp_path / "other-model", folder


@pytest.mark.parametrize("command", [["dict", "eval", "--n-eval", "4"], ["dict", "features", "--n-sequences", "4"],
                                     ["graph", "--prompt", "<bos> a", "--no-progress"]])
def test_a_set_of_another_model_is_refused_and_nothing_is_overwritten(two_models, command):
    other, folder = two_models
    before = {p: p.read_bytes() for p in sorted((folder / "features").iterdir())}
    result = runner.invoke(app, [*command, "--model", str(other), "--dict", str(folder)])
    assert result.exit_code == 2
    assert "was trained on model 'tiny', not 'other'" in result.output and str(other) in result.output
    assert {p: p.read_bytes() for p in sorted((folder / "features").iterdir())} == before
    assert not (Catalog().root / "graphs").exists()
