"""Interop: SAELens folders (checked against sae_lens itself) and circuit-tracer layouts (checked by file
names, tensor names and shapes, and against its documented forward pass written out here), both
round-tripping bit for bit."""

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open

from workbench.dictionaries import DictionaryConfig, build_dictionary
from workbench.dictionaries.interop_circuit_tracer import load_circuit_tracer, save_circuit_tracer
from workbench.dictionaries.interop_saelens import load_saelens, save_saelens

D, N_FEATURES = 8, 24


def randomized(config: DictionaryConfig, seed: int = 0, scales: bool = False):
    """A dictionary with every parameter random (biases and thresholds too), like a trained one."""
    d = build_dictionary(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in d.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "b_" in name else 1.0))
        if config.activation == "jumprelu":
            d.activation.log_threshold.copy_(torch.rand(d.activation.log_threshold.shape, generator=g).log())
        if scales:
            d.input_scale.copy_(1.0 + torch.rand(config.n_layers, generator=g))
            d.output_scale.copy_(0.5 + torch.rand(config.n_layers, generator=g))
    return d.eval()


def per_layer(kind, activation, layer=0, **extra):
    return DictionaryConfig(kind, d_in=D, n_features=N_FEATURES, activation=activation,
                            input_hooks=[f"blocks.{layer}.hook_mlp_out" if kind == "sae" else f"blocks.{layer}.hook_mlp_in"],
                            output_hooks=[f"blocks.{layer}.hook_mlp_out"], **extra)


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --- SAELens ---------------------------------------------------------------------------------------------

SAELENS_CASES = [("sae", "relu", {}), ("sae", "topk", {"k": 4}), ("sae", "jumprelu", {}),
                 ("transcoder", "relu", {}), ("transcoder", "jumprelu", {}),
                 ("skip_transcoder", "relu", {}), ("skip_transcoder", "jumprelu", {})]


@pytest.mark.parametrize("kind, activation, extra", SAELENS_CASES)
def test_saelens_loads_ours_and_computes_the_same_bits(tmp_path, kind, activation, extra):
    from sae_lens import SAE

    ours = randomized(per_layer(kind, activation, **extra))
    folder = save_saelens(ours, tmp_path / "sae", model_name="tiny")
    theirs = SAE.load_from_disk(folder)
    x = torch.randn(32, D)
    with torch.no_grad():
        acts = theirs.encode(x)
        assert torch.equal(acts, ours.encode(x))
        if kind == "skip_transcoder":  # SAELens adds the skip term in forward, as x @ W_skip.T: a
            # transposed product, equal to ours up to rounding; the rest is bit for bit
            assert torch.equal(theirs.decode(acts), ours.decode(acts, torch.zeros_like(x)))
            assert torch.allclose(theirs(x), ours.decode(acts, x), rtol=1e-6, atol=1e-5)
        else:
            assert torch.equal(theirs.decode(acts), ours.decode(acts))
            assert torch.equal(theirs(x), ours(x)[0])
    assert theirs.cfg.metadata.hook_name == ours.config.input_hooks[0]
    back = load_saelens(folder)
    assert back.config == ours.config
    assert_same_state(back, ours)


def test_saelens_export_folds_our_scales(tmp_path):
    from sae_lens import SAE

    ours = randomized(per_layer("skip_transcoder", "jumprelu"), seed=3, scales=True)
    theirs = SAE.load_from_disk(save_saelens(ours, tmp_path / "tc"))
    x = torch.randn(64, D)
    with torch.no_grad():
        assert torch.equal(theirs.encode(x) != 0, ours.encode(x) != 0)
        assert torch.allclose(theirs(x), ours(x)[0], rtol=1e-5, atol=1e-5)


def saelens_made(arch: str, tmp_path, **cfg):
    """A dictionary built and saved by SAELens itself, every parameter random."""
    from sae_lens.registry import get_sae_class

    sae_class, config_class = get_sae_class(arch)
    sae = sae_class(config_class(d_in=D, d_sae=N_FEATURES, **cfg))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(N_FEATURES, generator=g) * 0.5)
    sae.save_model(tmp_path / arch)
    return sae


@pytest.mark.parametrize("arch, cfg", [("topk", {"k": 5, "apply_b_dec_to_input": False}),
                                       ("jumprelu_transcoder", {"d_out": D, "apply_b_dec_to_input": False}),
                                       ("skip_transcoder", {"d_out": D, "apply_b_dec_to_input": False})])
def test_a_saelens_saved_dictionary_loads_into_ours_exactly(tmp_path, arch, cfg):
    theirs = saelens_made(arch, tmp_path, **cfg)
    ours = load_saelens(tmp_path / arch)
    x = torch.randn(32, D)
    with torch.no_grad():
        acts = theirs.encode(x)
        assert torch.equal(ours.encode(x), acts)
        expected = theirs(x)
    if arch == "skip_transcoder":  # the skip term x @ W_skip.T: equal up to rounding (see above)
        assert torch.equal(ours.decode(acts, torch.zeros_like(x)), theirs.decode(acts))
        assert torch.allclose(ours.decode(acts, x), expected, rtol=1e-6, atol=1e-5)
    else:
        assert torch.equal(ours(x)[0], expected)


def test_saelens_b_dec_on_input_is_folded(tmp_path):
    theirs = saelens_made("standard", tmp_path, apply_b_dec_to_input=True)
    ours = load_saelens(tmp_path / "standard")
    x = torch.randn(32, D)
    with torch.no_grad():
        assert torch.allclose(ours(x)[0], theirs(x), atol=1e-5)


def test_saelens_refusals_name_the_way_out(tmp_path):
    clt = build_dictionary(DictionaryConfig("clt", d_in=D, n_features=4, n_layers=2, activation="relu"))
    with pytest.raises(ValueError, match="no cross-layer transcoders; save a CLT with save_circuit_tracer"):
        save_saelens(clt, tmp_path / "a")
    with pytest.raises(ValueError, match="batchtopk_to_jumprelu"):
        save_saelens(build_dictionary(per_layer("sae", "batchtopk", k=2)), tmp_path / "b")
    with pytest.raises(ValueError, match="no transcoder with activation 'topk'; it stores: sae with relu"):
        save_saelens(build_dictionary(per_layer("transcoder", "topk", k=2)), tmp_path / "c")
    saelens_made("standard", tmp_path, normalize_activations="layer_norm")
    with pytest.raises(ValueError, match="normalize_activations 'layer_norm'.*choose one of: none"):
        load_saelens(tmp_path / "standard")
    with pytest.raises(FileNotFoundError, match="not a SAELens folder"):
        load_saelens(tmp_path / "nowhere")


# --- circuit-tracer ----------------------------------------------------------------------------------------

def tensor_shapes(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def circuit_tracer_layer(path, x):
    """circuit-tracer's per-layer forward as its documentation states it: F.linear encoder, JumpReLU
    ``x * (x > threshold)`` / ReLU, ``acts @ W_dec + b_dec``, plus ``x @ W_skip.T``."""
    with safe_open(str(path), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    pre = F.linear(x, t["W_enc"], t["b_enc"])
    threshold = t.get("activation_function.threshold")
    acts = pre * (pre > threshold) if threshold is not None else torch.relu(pre)
    out = acts @ t["W_dec"] + t["b_dec"]
    return acts, out + x @ t["W_skip"].T if "W_skip" in t else out


@pytest.mark.parametrize("kind, activation", [("transcoder", "jumprelu"), ("skip_transcoder", "relu")])
def test_transcoder_set_layout_round_trip_and_forward(tmp_path, kind, activation):
    members = {f"layer{l}": randomized(per_layer(kind, activation, layer=l), seed=l) for l in range(2)}
    folder = save_circuit_tracer(members, tmp_path / "set", model_name="tiny", absolute_paths=True)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model_kind"] == "transcoder_set" and config["model_name"] == "tiny"
    assert (config["feature_input_hook"], config["feature_output_hook"]) == ("hook_mlp_in", "hook_mlp_out")
    assert config.get("activation") == (None if activation == "jumprelu" else "relu")
    assert config["transcoders"] == [str((folder / f"layer_{l}.safetensors").resolve()) for l in range(2)]
    expected = {"W_enc": (N_FEATURES, D), "W_dec": (N_FEATURES, D), "b_enc": (N_FEATURES,), "b_dec": (D,)}
    expected |= {"activation_function.threshold": (N_FEATURES,)} if activation == "jumprelu" else {"W_skip": (D, D)}
    x = torch.randn(16, D)
    for l in range(2):
        assert tensor_shapes(folder / f"layer_{l}.safetensors") == expected
        acts, out = circuit_tracer_layer(folder / f"layer_{l}.safetensors", x)
        ours = members[f"layer{l}"]
        assert torch.equal(acts, ours.encode(x))
        if kind == "skip_transcoder":  # x @ W_skip.T, a transposed product: equal up to rounding
            assert torch.allclose(out, ours.decode(acts, x), rtol=1e-6, atol=1e-5)
        else:
            assert torch.equal(out, ours.decode(acts))
    loaded = load_circuit_tracer(folder)
    assert list(loaded) == ["layer0", "layer1"]
    for name, d in loaded.items():
        assert d.config == members[name].config
        assert_same_state(d, members[name])


@pytest.mark.parametrize("activation", ["jumprelu", "relu"])
def test_clt_layout_round_trip_and_encoder(tmp_path, activation):
    hooks = ([f"blocks.{l}.hook_mlp_in" for l in range(3)], [f"blocks.{l}.hook_mlp_out" for l in range(3)])
    clt = randomized(DictionaryConfig("clt", d_in=D, n_features=N_FEATURES, n_layers=3, activation=activation,
                                      input_hooks=hooks[0], output_hooks=hooks[1]), seed=4)
    folder = save_circuit_tracer(clt, tmp_path / "clt")
    assert yaml.safe_load((folder / "config.yaml").read_text())["model_kind"] == "cross_layer_transcoder"
    for l in range(3):
        enc = {f"W_enc_{l}": (N_FEATURES, D), f"b_enc_{l}": (N_FEATURES,), f"b_dec_{l}": (D,)}
        enc |= {f"threshold_{l}": (N_FEATURES,)} if activation == "jumprelu" else {}
        assert tensor_shapes(folder / f"W_enc_{l}.safetensors") == enc
        assert tensor_shapes(folder / f"W_dec_{l}.safetensors") == {f"W_dec_{l}": (N_FEATURES, 3 - l, D)}
    x = torch.randn(3, 10, D)  # circuit-tracer's CLT takes [layers, positions, d]
    W_enc = torch.stack([safe_open(str(folder / f"W_enc_{l}.safetensors"), "pt").get_tensor(f"W_enc_{l}")
                         for l in range(3)])
    b_enc = torch.stack([safe_open(str(folder / f"W_enc_{l}.safetensors"), "pt").get_tensor(f"b_enc_{l}")
                         for l in range(3)])
    pre = torch.einsum("lbd,lfd->lbf", x, W_enc) + b_enc[:, None]
    assert torch.allclose(pre.transpose(0, 1), clt.pre_activations(x.transpose(0, 1)), atol=1e-6)
    loaded = load_circuit_tracer(folder)["clt"]
    assert loaded.config == clt.config
    assert_same_state(loaded, clt)


def test_circuit_tracer_topk_and_a_foreign_set_without_our_configs(tmp_path):
    members = [randomized(per_layer("transcoder", "topk", layer=l, k=3, topk_relu=False), seed=l) for l in range(2)]
    folder = save_circuit_tracer(members, tmp_path / "topk")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert (config["activation"], config["k"]) == ("topk", 3)
    config.pop("workbench")  # as a set written by circuit-tracer itself would be
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    loaded = load_circuit_tracer(folder)
    assert loaded["layer1"].config.input_hooks == ["blocks.1.hook_mlp_in"] and loaded["layer1"].config.k == 3
    x = torch.randn(9, D)
    for l, d in enumerate(members):
        assert torch.equal(loaded[f"layer{l}"](x)[0], d(x)[0])


def test_circuit_tracer_refusals_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="allow_topk_relu=True"):
        save_circuit_tracer([build_dictionary(per_layer("transcoder", "topk", k=2))], tmp_path / "a")
    with pytest.raises(ValueError, match="no 'batchtopk' transcoder \\(convert with batchtopk_to_jumprelu\\)"):
        save_circuit_tracer([build_dictionary(per_layer("transcoder", "batchtopk", k=2))], tmp_path / "b")
    wide = DictionaryConfig("transcoder", d_in=2 * D, d_out=D, n_features=4, activation="relu",
                            input_hooks=["blocks.0.hook_mlp_in"], output_hooks=["blocks.0.hook_mlp_out"])
    with pytest.raises(ValueError, match="needs d_in == d_out"):
        save_circuit_tracer([build_dictionary(wide)], tmp_path / "c")
    with pytest.raises(ValueError, match="one dictionary per layer 0..n-1"):
        save_circuit_tracer([build_dictionary(per_layer("transcoder", "relu", layer=1))], tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="not a circuit-tracer folder"):
        load_circuit_tracer(tmp_path / "nowhere")
    assert not any(tmp_path.iterdir())  # a refused save leaves nothing behind


def test_circuit_tracer_config_names_the_models_native_hooks(tmp_path):
    """circuit-tracer hooks a plain transformer_lens model: our shared hook_mlp_in must be written as the
    native ln2.hook_normalized; our own loader still restores the shared names."""
    from workbench.architectures import build_model, model_config
    from workbench.dictionaries.interop_circuit_tracer import load_circuit_tracer

    model = build_model(model_config("transformer", d_vocab=12, n_ctx=8, n_layers=2, d_model=D, n_heads=2, d_mlp=32))
    members = {f"layer{l}": randomized(per_layer("transcoder", "jumprelu", layer=l), seed=l) for l in range(2)}
    folder = save_circuit_tracer(members, tmp_path / "native", model=model)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert (config["feature_input_hook"], config["feature_output_hook"]) == ("ln2.hook_normalized", "hook_mlp_out")
    loaded = load_circuit_tracer(folder)
    loaded = loaded if isinstance(loaded, list) else list(loaded.values()) if isinstance(loaded, dict) else [loaded]
    assert [d.config.input_hooks for d in loaded] == [["blocks.0.hook_mlp_in"], ["blocks.1.hook_mlp_in"]]
