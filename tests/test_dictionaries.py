"""Dictionaries: exact encoders/decoders on hand-built weights, nonlinearities and their gradients, CLT
causality, save/load, losses, metrics, and the trainer (learning, exact resume, refusals, NaN)."""

import math

import pytest
import torch

from workbench.dictionaries import (
    SAE,
    BatchTopK,
    CrossLayerTranscoder,
    DeadFeatureTracker,
    DictionaryConfig,
    DictionaryMetrics,
    DictTrainConfig,
    JumpReLU,
    SkipTranscoder,
    TensorActivations,
    TopK,
    Transcoder,
    auxk_loss,
    build_dictionary,
    fvu,
    heaviside_step,
    jumprelu,
    l1_penalty,
    load_dictionary,
    pre_activation_loss,
    register_dictionary,
    save_dictionary,
    tanh_penalty,
    train_dictionary,
)
from workbench.store import Catalog
from workbench.training import TrainingDiverged, list_checkpoints


def set_weights(d, W_enc, b_enc, W_dec, b_dec, W_skip=None):
    with torch.no_grad():
        d.W_enc.copy_(torch.as_tensor(W_enc, dtype=torch.float32)[None])
        d.b_enc.copy_(torch.as_tensor(b_enc, dtype=torch.float32)[None])
        d.W_dec[0].copy_(torch.as_tensor(W_dec, dtype=torch.float32)[:, None, :])
        d.b_dec.copy_(torch.as_tensor(b_dec, dtype=torch.float32)[None])
        if W_skip is not None:
            d.W_skip.copy_(torch.as_tensor(W_skip, dtype=torch.float32)[None])


# --- hand-built encoders and decoders ------------------------------------------------------------------

def test_identity_sae_reconstructs_exactly():
    d = 4
    sae = SAE(DictionaryConfig("sae", d_in=d, n_features=2 * d, activation="relu"))
    eye = torch.eye(d)
    # feature i reads +x_i, feature d+i reads -x_i; decoders write them back with the matching sign
    set_weights(sae, torch.cat([eye, -eye], dim=1), torch.zeros(2 * d), torch.cat([eye, -eye]), torch.zeros(d))
    x = torch.randn(10, d)
    recon, acts = sae(x)
    assert torch.allclose(recon, x, atol=1e-6)
    assert acts.shape == (10, 2 * d) and ((acts > 0).sum(dim=1) <= d).all()


def test_hand_set_two_feature_transcoder_and_skip():
    cfg = DictionaryConfig("transcoder", d_in=2, d_out=3, n_features=2, activation="relu")
    tc = Transcoder(cfg)
    W_dec, b_dec = [[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]], [0.0, 0.0, 1.0]
    set_weights(tc, torch.eye(2), [-0.5, 0.0], W_dec, b_dec)
    x = torch.tensor([[1.0, 3.0], [0.2, -1.0]])
    recon, acts = tc(x)
    assert torch.allclose(acts, torch.tensor([[0.5, 3.0], [0.0, 0.0]]))
    assert torch.allclose(recon, torch.tensor([[0.5, 3.0, 2.0], [0.0, 0.0, 1.0]]))
    assert torch.allclose(tc.decode(tc.encode(x)), recon)

    skip = SkipTranscoder(DictionaryConfig("skip_transcoder", d_in=2, d_out=3, n_features=2, activation="relu"))
    W_skip = [[1.0, 1.0, 1.0], [0.0, 0.0, -1.0]]
    set_weights(skip, torch.eye(2), [-0.5, 0.0], W_dec, b_dec, W_skip)
    recon_skip, _ = skip(x)
    assert torch.allclose(recon_skip, recon + x @ torch.tensor(W_skip))


def test_input_and_output_scales_are_undone():
    tc = Transcoder(DictionaryConfig("transcoder", d_in=2, d_out=3, n_features=2, activation="relu"))
    set_weights(tc, torch.eye(2), [0.0, 0.0], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [0.0, 0.0, 0.0])
    x = torch.tensor([[1.0, 2.0]])
    plain, _ = tc(x)
    tc.input_scale.fill_(2.0)
    tc.output_scale.fill_(2.0)
    scaled, acts = tc(x)  # features see 2x, the reconstruction is divided back by 2
    assert torch.allclose(acts, 2 * x) and torch.allclose(scaled, plain)


def test_clt_output_at_a_layer_sums_decoders_from_earlier_layers_only():
    L, d, F = 3, 4, 5
    clt = CrossLayerTranscoder(DictionaryConfig("clt", d_in=d, n_features=F, n_layers=L, activation="relu", seed=1))
    with torch.no_grad():
        clt.b_enc.fill_(0.5)
        clt.b_dec.normal_()
    assert [tuple(w.shape) for w in clt.W_dec] == [(F, 3, d), (F, 2, d), (F, 1, d)]
    x = torch.randn(6, L, d)
    recon, acts = clt(x)
    for target in range(L):
        expected = clt.b_dec[target] + sum(acts[:, s] @ clt.W_dec[s][:, target - s] for s in range(target + 1))
        assert torch.allclose(recon[:, target], expected, atol=1e-5)
    # causality: changing the input of layer 2 leaves the outputs of layers 0 and 1 alone
    x2 = x.clone()
    x2[:, 2] += 5.0
    recon2, _ = clt(x2)
    assert torch.equal(recon2[:, :2], recon[:, :2]) and not torch.allclose(recon2[:, 2], recon[:, 2])


def test_config_errors_name_the_choices():
    with pytest.raises(ValueError, match="choose one of: sae, transcoder, skip_transcoder, clt"):
        DictionaryConfig("sea", d_in=4, n_features=8)
    with pytest.raises(ValueError, match="choose one of: relu, jumprelu, topk, batchtopk"):
        DictionaryConfig("sae", d_in=4, n_features=8, activation="gelu")
    with pytest.raises(ValueError, match="d_out .* must equal d_in"):
        DictionaryConfig("sae", d_in=4, d_out=5, n_features=8)
    with pytest.raises(ValueError, match="needs k"):
        build_dictionary(DictionaryConfig("sae", d_in=4, n_features=8, activation="topk"))
    with pytest.raises(ValueError, match="unknown dictionary config field"):
        DictionaryConfig.from_dict({"kind": "sae", "d_in": 4, "n_features": 8, "widht": 3})


def test_save_load_round_trip_and_strict_errors(tmp_path):
    config = DictionaryConfig("clt", d_in=4, d_out=3, n_features=6, n_layers=2, activation="jumprelu", seed=3,
                              input_hooks=["blocks.0.hook_mlp_in", "blocks.1.hook_mlp_in"],
                              output_hooks=["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"])
    clt = build_dictionary(config)
    with torch.no_grad():
        clt.input_scale.fill_(1.5)
    folder = save_dictionary(tmp_path / "clt", clt, card={"note": "test"})
    loaded = load_dictionary(folder)
    assert loaded.config == clt.config
    assert all(torch.equal(a, b) for a, b in zip(clt.state_dict().values(), loaded.state_dict().values(), strict=True))
    x = torch.randn(3, 2, 4)
    assert torch.equal(loaded(x)[0], clt(x)[0])

    from workbench.store import load_safetensors, save_safetensors
    weights = load_safetensors(folder / "dictionary.safetensors")
    weights.pop("W_dec.1")
    weights["extra"] = torch.zeros(1)
    save_safetensors(weights, folder / "dictionary.safetensors")
    with pytest.raises(ValueError, match=r"missing \['W_dec.1'\], unexpected \['extra'\]"):
        load_dictionary(folder)


def test_unit_decoder_norm_projection():
    sae = build_dictionary(DictionaryConfig("sae", d_in=5, n_features=7, activation="topk", k=2))
    assert sae.config.decoder_norm == "unit"
    assert torch.allclose(sae.decoder_norms(), torch.ones(1, 7), atol=1e-6)
    sae.W_dec[0].grad = sae.W_dec[0].detach().clone() * 3 + torch.randn_like(sae.W_dec[0])
    sae.remove_parallel_decoder_grad()
    assert torch.allclose((sae.W_dec[0].grad * sae.W_dec[0]).sum(dim=(1, 2)), torch.zeros(7), atol=1e-5)


# --- nonlinearities -------------------------------------------------------------------------------------

def test_jumprelu_straight_through_gradients_match_the_formula():
    eps = 0.1
    z = torch.tensor([[0.96, 1.02, 0.5, 2.0], [1.04, 0.1, 0.52, 1.96]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 0.5, 2.0], requires_grad=True)
    upstream = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    (jumprelu(z, theta, eps) * upstream).sum().backward()
    kernel = (((z - theta) / eps).abs() < 0.5).float()
    assert torch.allclose(theta.grad, (upstream * -(theta / eps) * kernel).sum(dim=0).detach())
    assert torch.equal(z.grad, upstream * (z > theta).float())

    theta.grad = None
    z.grad = None
    (heaviside_step(z, theta, eps) * upstream).sum().backward()
    assert torch.allclose(theta.grad, (upstream * -(1 / eps) * kernel).sum(dim=0).detach())
    assert torch.equal(z.grad, torch.zeros_like(z))

    module = JumpReLU(1, 4, init_threshold=0.5, bandwidth=eps)
    pre = torch.tensor([[[0.47, 0.9, 0.2, 0.53]]])
    out = module(pre)
    assert torch.allclose(out, torch.tensor([[[0.0, 0.9, 0.0, 0.53]]]))
    out.sum().backward()  # log-space parameter: d/dlog(theta) = theta * d/dtheta
    expected = 0.5 * -(0.5 / eps) * ((((pre - 0.5) / eps).abs() < 0.5).float())
    assert torch.allclose(module.log_threshold.grad, expected[0])


def test_topk_keeps_exactly_k_per_row():
    pre = torch.randn(20, 2, 16)
    exact = TopK(3, 16, relu=False)(pre)
    assert ((exact != 0).sum(dim=-1) == 3).all()
    positive = TopK(3, 16)(pre.abs() + 0.01)
    assert ((positive != 0).sum(dim=-1) == 3).all()
    kept = TopK(3, 16)(pre)
    assert ((kept != 0).sum(dim=-1) <= 3).all() and (kept >= 0).all()
    assert torch.equal(kept.topk(3, dim=-1).values, torch.relu(pre.topk(3, dim=-1).values))


def test_batchtopk_keeps_k_times_batch_per_layer_and_converts_to_jumprelu():
    batchtopk = BatchTopK(4, 32)
    pre = torch.randn(16, 2, 32)
    out = batchtopk(pre)
    assert ((out != 0).sum(dim=(0, 2)) == 4 * 16).all()
    assert ((out != 0).sum(dim=-1) != 4).any()  # a per-batch budget, not a per-row one

    clt = build_dictionary(DictionaryConfig("clt", d_in=8, n_features=32, n_layers=2, activation="batchtopk", k=4))
    calibration = torch.randn(64, 2, 8)
    expected, expected_acts = clt(calibration)
    for method in ("global", "per_feature"):
        converted = clt.batchtopk_to_jumprelu([calibration], method=method)
        assert converted.config.activation == "jumprelu"
        recon, acts = converted(calibration)
        assert torch.allclose(recon, expected, atol=1e-5), method
        assert torch.equal(acts != 0, expected_acts != 0) and torch.allclose(acts, expected_acts), method
        one_row, _ = converted(calibration[:1])  # the converted dictionary no longer depends on the batch
        assert torch.allclose(one_row, converted(calibration)[0][:1], atol=1e-6)
    thresholds = clt.batchtopk_to_jumprelu([calibration]).activation.threshold
    assert torch.allclose(thresholds, thresholds[:, :1].expand_as(thresholds))  # global: one per layer
    with pytest.raises(TypeError, match="only a batchtopk dictionary"):
        converted.batchtopk_to_jumprelu([calibration])


# --- losses and metrics --------------------------------------------------------------------------------

def test_penalties_weight_by_decoder_norm_and_pre_activation_loss_masks():
    acts = torch.tensor([[[1.0, 0.0, 2.0]]])
    norms = torch.tensor([[2.0, 5.0, 0.5]])
    assert l1_penalty(acts, norms).item() == pytest.approx(3.0)
    assert tanh_penalty(acts, norms, 4.0).item() == pytest.approx(math.tanh(8.0) + math.tanh(4.0))
    pre = torch.tensor([[[-1.0, -2.0, 3.0]]])
    assert pre_activation_loss(pre).item() == pytest.approx(3.0)
    assert pre_activation_loss(pre, torch.tensor([[False, True, True]])).item() == pytest.approx(2.0)


def test_dead_tracker_and_auxk():
    tracker = DeadFeatureTracker(1, 3, window_tokens=10)
    tracker.update(torch.tensor([[[1.0, 0.0, 0.0]]] * 6))
    tracker.update(torch.tensor([[[0.0, 0.0, 2.0]]] * 6))
    assert tracker.dead().tolist() == [[False, True, False]]
    sae = build_dictionary(DictionaryConfig("sae", d_in=4, n_features=3, activation="topk", k=1))
    pre, residual = torch.randn(5, 1, 3), torch.randn(5, 1, 4)
    assert auxk_loss(sae, pre, residual, torch.zeros(1, 3, dtype=torch.bool), 2).item() == 0.0
    assert auxk_loss(sae, pre, residual, tracker.dead(), 2).item() > 0.0


def test_fvu_and_streaming_metrics():
    y = torch.randn(50, 2, 6)
    assert torch.allclose(fvu(y, y), torch.zeros(2))
    assert torch.allclose(fvu(y.mean(dim=0, keepdim=True).expand_as(y), y), torch.ones(2))
    recon, acts = y + 0.1 * torch.randn_like(y), torch.relu(torch.randn(50, 2, 8))
    acts[:, :, 0] = 0
    acts[:, :, 1] = 1
    metrics = DictionaryMetrics(dense_threshold=0.9)
    for part in range(5):
        rows = slice(10 * part, 10 * part + 10)
        metrics.update(recon[rows], y[rows], acts[rows])
    result = metrics.result()
    assert result["fvu"] == pytest.approx(fvu(recon, y).tolist(), rel=1e-5)
    assert result["l0"] == pytest.approx((acts != 0).sum(-1).float().mean(0).tolist())
    assert result["dead_fraction"] == pytest.approx([1 / 8, 1 / 8])
    assert result["dense_fraction"][0] >= 1 / 8


def test_evaluation_leaves_out_the_bos_position():
    """Rows at position 0 (a huge constant vector, as <bos> is in a transformer) are skipped when the
    minibatches carry positions; without positions every row counts."""
    from workbench.dictionaries.metrics import evaluate_dictionary
    d = build_dictionary(transcoder_config("topk", k=4))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 16, generator=g), torch.randn(40, 16, generator=g)
    position = torch.arange(40, dtype=torch.int32) % 8
    y[position == 0] = 50.0  # the outlier that would dominate the variance
    batches = [{"in": x[:20], "out": y[:20], "position": position[:20]},
               {"in": x[20:], "out": y[20:], "position": position[20:]}]
    kept = position != 0
    with torch.no_grad():
        recon, acts = d(x[kept])
    got = evaluate_dictionary(d, batches, ["in"], ["out"], n_batches=2)
    assert got["fvu"] == pytest.approx(fvu(recon, y[kept]).tolist(), rel=1e-5)
    assert got["l0"] == pytest.approx([float((acts != 0).sum(-1).float().mean())])
    everything = evaluate_dictionary(d, [{k: v for k, v in b.items() if k != "position"} for b in batches],
                                     ["in"], ["out"], n_batches=2)
    with torch.no_grad():
        assert everything["fvu"] == pytest.approx(fvu(d(x)[0], y).tolist(), rel=1e-5)
    assert everything["fvu"] != pytest.approx(got["fvu"], rel=1e-3)


# --- the trainer -------------------------------------------------------------------------------------

def sparse_dataset(n=4096, d=16, n_true=24, active=3, seed=0) -> TensorActivations:
    """Rows that are sums of 3 of 24 random unit directions; targets a fixed linear map of them."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_true, d, generator=g)
    directions /= directions.norm(dim=1, keepdim=True)
    chosen = torch.rand(n, n_true, generator=g).argsort(dim=1)[:, :active]
    codes = torch.zeros(n, n_true).scatter(1, chosen, 0.5 + torch.rand(n, active, generator=g))
    x = codes @ directions
    return TensorActivations({"in": x, "out": x @ (torch.randn(d, d, generator=g) / d**0.5)})


def tiny_train_config(**overrides) -> DictTrainConfig:
    values = {"steps": 300, "batch_size": 128, "lr": 1e-2, "warmup_steps": 20, "sparsity_warmup_steps": 50,
              "checkpoint_every": 1000, "eval_batches": 4, "log_every": 10, "dead_window_tokens": 2000}
    return DictTrainConfig(**{**values, **overrides})


def transcoder_config(activation="relu", **overrides) -> DictionaryConfig:
    return DictionaryConfig("transcoder", d_in=16, n_features=32, activation=activation,
                            input_hooks=["in"], output_hooks=["out"], **overrides)


def test_training_learns_a_sparse_transcoder(tmp_path):
    result = train_dictionary(transcoder_config(), sparse_dataset(), tiny_train_config(sparsity_coef=0.05),
                              tmp_path / "run", progress=False)
    loss = result.curves.query("metric == 'loss'")["value"].tolist()
    assert loss[-1] < 0.2 * loss[0]
    assert result.metrics["fvu"][0] < 0.1
    assert result.metrics["l0"][0] < 32
    reloaded = load_dictionary(tmp_path / "run" / "dictionary")
    x = sparse_dataset().tensors["in"][:8]
    assert torch.equal(reloaded(x)[0], result.dictionary(x)[0])
    register_dictionary(tmp_path / "run" / "dictionary", "synthetic-tc", root=tmp_path / "artifacts")
    row = Catalog(tmp_path / "artifacts").get("dictionary", "synthetic-tc")
    assert row["meta"]["config"]["kind"] == "transcoder" and row["meta"]["metrics"]["fvu"] == result.metrics["fvu"]


@pytest.mark.parametrize("activation, extra, train", [
    ("jumprelu", {}, {"sparsity": "tanh", "pre_act_coef": 1e-3, "resample_every": 7}),
    ("batchtopk", {"k": 3}, {"auxk_coef": 0.1}),
])
def test_resume_gives_identical_weights(tmp_path, activation, extra, train):
    data, config = sparse_dataset(n=512), transcoder_config(activation, **extra)
    cfg = tiny_train_config(steps=24, checkpoint_every=8, batch_size=64, dead_window_tokens=100, **train)
    straight = train_dictionary(config, data, cfg, tmp_path / "a", progress=False)
    first = train_dictionary(config, data, cfg, tmp_path / "b", progress=False, stop_after=12)
    assert first.steps == 12 and [s for s, _ in list_checkpoints(tmp_path / "b")][-1] == 12
    resumed = train_dictionary(config, data, cfg, tmp_path / "b", progress=False)
    assert resumed.resumed_from == 12
    a, b = straight.dictionary.state_dict(), resumed.dictionary.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.curves.equals(resumed.curves)


def test_resume_refuses_a_different_config(tmp_path):
    data = sparse_dataset(n=256)
    train_dictionary(transcoder_config(), data, tiny_train_config(steps=4), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"different config.*train.batch_size: 128 -> 64.*--fresh"):
        train_dictionary(transcoder_config(), data, tiny_train_config(steps=4, batch_size=64), tmp_path / "run",
                         progress=False)


def test_source_hooks_and_widths_are_checked(tmp_path):
    data = sparse_dataset(n=64)
    with pytest.raises(KeyError, match="no hook 'blocks.0.hook_mlp_in'.*holds: in, out"):
        train_dictionary(DictionaryConfig("sae", d_in=16, n_features=8, input_hooks=["blocks.0.hook_mlp_in"],
                                          output_hooks=["blocks.0.hook_mlp_in"]), data, tiny_train_config(), tmp_path)
    with pytest.raises(ValueError, match="'in' has width 16 .* d_in is 12"):
        train_dictionary(DictionaryConfig("sae", d_in=12, n_features=8, input_hooks=["in"], output_hooks=["in"]),
                         data, tiny_train_config(), tmp_path)


class PoisonedSource:
    """Good minibatches, then NaN from ``poison_at`` on: divergence mid-run."""

    def __init__(self, data: TensorActivations, poison_at: int):
        self.data, self.poison_at = data, poison_at
        self.hooks, self.widths = data.hooks, data.widths

    def fingerprint(self):
        return {"poisoned": self.poison_at}

    def minibatches(self, batch_size, seed, start_batch=0, hooks=None):
        for i, batch in enumerate(self.data.minibatches(batch_size, seed, start_batch, hooks), start=start_batch):
            yield {k: v * float("nan") for k, v in batch.items()} if i >= self.poison_at else batch


def test_nan_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    source = PoisonedSource(sparse_dataset(n=512), poison_at=13)
    cfg = tiny_train_config(steps=30, checkpoint_every=5, normalize_activations=False)
    with pytest.raises(TrainingDiverged, match=r"loss nan at step 13.*step-00000010 \(step 10\)"):
        train_dictionary(transcoder_config(), source, cfg, tmp_path / "run", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [5, 10]
