"""The bring-your-own-architecture kit: the example plug-in passes (by file, by module, by entry point),
broken variants fail naming the check, every built-in passes, `wb arch check` prints the card."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import workbench.architectures as registry
from workbench.architectures import ENTRY_POINT_GROUP, architecture_names, build_model, register_architecture
from workbench.architectures.components import ArchConfig, BlockLM
from workbench.architectures.conformance import CHECKS, run_checks, tiny_config
from workbench.architectures.conformance_card import card_passed, format_card, load_architectures
from workbench.architectures.scan import linear_scan, patchable_linear_scan
from workbench.cli import app

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "plugin_arch"
EXAMPLE = EXAMPLE_DIR / "gated_recurrence.py"
BUILTINS = ["transformer", "mingru", "lstm", "mamba", "rwkv", "xlstm"]


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch, tmp_path):
    """Every test leaves the registry (and the imported plug-in modules) as it found them."""
    names, defaults = dict(registry.ARCHITECTURES), dict(registry.DEFAULTS)
    modules = set(sys.modules)
    monkeypatch.setattr(registry, "_plugins_loaded", True)  # no real entry points
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    yield
    registry.ARCHITECTURES.clear()
    registry.ARCHITECTURES.update(names)
    registry.DEFAULTS.clear()
    registry.DEFAULTS.update(defaults)
    for name in set(sys.modules) - modules:  # the plug-ins' modules only: never the libraries' own
        file = Path(getattr(sys.modules[name], "__file__", None) or "/")
        if file.parent in (EXAMPLE_DIR, tmp_path):
            del sys.modules[name]


def statuses(results) -> dict[str, str]:
    return {r.name: r.status for r in results}


def test_the_example_passes_every_check_from_its_file():
    names = load_architectures(str(EXAMPLE))
    assert names == ["gated_recurrence"]
    assert load_architectures(str(EXAMPLE)) == names  # loading again reuses the module
    results = run_checks("gated_recurrence")
    assert statuses(results) == dict.fromkeys(CHECKS, "passed"), format_card("gated_recurrence", results)
    assert "2 of them states carrying forward" in {r.name: r.detail for r in results}["state_patching"]


def test_the_example_loads_as_an_installed_module_and_then_by_its_name():
    assert "gated_recurrence" not in architecture_names()
    assert load_architectures("gated_recurrence") == ["gated_recurrence"]  # imported from sys.path
    assert load_architectures("gated_recurrence", name="gated_recurrence") == ["gated_recurrence"]  # registered
    with pytest.raises(ValueError, match="no architecture named 'other'; choose one of: gated_recurrence"):
        load_architectures(str(EXAMPLE), name="other")
    with pytest.raises(ValueError, match="neither a registered architecture .* nor an importable module"):
        load_architectures("no_such_architecture_module")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_architectures("missing/arch.py")


def test_entry_points_load_once_lazily_and_a_broken_one_only_warns(monkeypatch, tmp_path):
    (tmp_path / "plain_arch.py").write_text("from gated_recurrence import DEFAULTS, build  # noqa: F401\n")
    (tmp_path / "called_arch.py").write_text(
        "def register():\n    from gated_recurrence import DEFAULTS, build\n"
        "    from workbench.architectures import register_architecture\n"
        "    register_architecture('called', build, DEFAULTS)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [EntryPoint("plain", "plain_arch", ENTRY_POINT_GROUP), EntryPoint("called", "called_arch:register", ENTRY_POINT_GROUP),
              EntryPoint("broken", "no_such_plugin_module", ENTRY_POINT_GROUP)]
    calls = []
    monkeypatch.setattr(registry, "entry_points", lambda group: calls.append(group) or points)
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    with pytest.warns(UserWarning, match=r"plug-in 'broken' \(no_such_plugin_module\) failed to load"):
        names = architecture_names()
    assert calls == [ENTRY_POINT_GROUP]
    assert {"plain", "called", "gated_recurrence", *BUILTINS} <= set(names)
    build_model(tiny_config("plain"))  # the registry works on
    assert architecture_names() == names and calls == [ENTRY_POINT_GROUP]  # once


class Leaky(torch.nn.Module):
    """Non-causal: every output also reads the mean over the whole sequence, later tokens included."""

    def __init__(self, mixer):
        super().__init__()
        self.inner = mixer

    def forward(self, x, state=None):
        y, state = self.inner(x, state)
        return y + x.mean(dim=1, keepdim=True), state


def hidden_gate_forward(self, x, state=None, call_hook=True):
    """The example's mixer with its output gate used around its hook (not in gate form): the hook sees
    the gate, or with ``call_hook=False`` is never called."""
    f = self.hook_f_gate(torch.sigmoid(self.W_f(x)))
    states = patchable_linear_scan(self.hook_state, f, (1 - f) * self.W_v(x), state)
    o = torch.sigmoid(self.W_o(x))
    if call_hook:
        self.hook_o_gate(o)  # the hooked value is dropped: freezing it changes nothing
    return self.W_out(o * states), states[:, -1]


def silent_gate_forward(self, x, state=None):
    return hidden_gate_forward(self, x, state, call_hook=False)


def unpatchable_forward(self, x, state=None):
    """The example's mixer with a state hook the recurrence ignores: a patch stays at its position."""
    f = self.hook_f_gate(torch.sigmoid(self.W_f(x)))
    states = self.hook_state(linear_scan(f, (1 - f) * self.W_v(x), state))
    return self.W_out(self.hook_o_gate(torch.sigmoid(self.W_o(x))) * states), states[:, -1]


def register_variant(name: str, wrap=None, forward=None, note: str | None = None):
    from gated_recurrence import DEFAULTS, GatedRecurrence

    def build(config):
        def mixer(cfg, _layer):
            m = GatedRecurrence(cfg)
            if forward is not None:
                m.forward = forward.__get__(m)
            return wrap(m) if wrap else m
        model = BlockLM(ArchConfig(config), make_mixer=mixer)
        if note:
            model.gate_form_note = note
        return model
    register_architecture(name, build, DEFAULTS)


@pytest.mark.parametrize("variant,failing,reason", [
    ({"wrap": Leaky}, {"causality", "carried_state", "state_patching"}, "changed logits at earlier positions"),
    ({"forward": hidden_gate_forward}, {"gate_form", "sum_identity"}, "not affine with gates frozen"),
    ({"forward": unpatchable_forward}, {"state_patching"}, "does not carry to every later position"),
    ({"forward": silent_gate_forward}, {"hooks", "gate_form", "sum_identity"}, "gate hooks never called"),
])
def test_broken_variants_fail_naming_the_check(variant, failing, reason):
    register_variant("broken", **variant)
    results = run_checks("broken")
    failed = {r.name for r in results if r.status == "failed"}
    assert failed == failing and not card_passed(results)
    first = next(r for r in results if r.name == min(failing, key=list(CHECKS).index))
    assert reason in first.detail


def test_a_declared_approximation_is_approximate_not_failed():
    register_variant("approx", forward=hidden_gate_forward, note="output gate left live on purpose")
    results = statuses(run_checks("approx"))
    assert results["gate_form"] == results["sum_identity"] == "approximate"
    assert card_passed(run_checks("approx", checks=["sum_identity"]))


def test_a_failing_builder_is_a_failed_card_not_a_traceback():
    register_architecture("unbuildable", lambda config: 1 / 0, {"n_layers": 2})
    (result,) = run_checks("unbuildable")
    assert (result.name, result.status) == ("build", "failed") and "ZeroDivisionError" in result.detail
    with pytest.raises(ValueError, match="unknown conformance check"):
        run_checks("transformer", checks=["hooks", "vibes"])


@pytest.mark.parametrize("arch", BUILTINS)
def test_every_builtin_architecture_passes(arch):
    results = run_checks(arch)
    expected = dict.fromkeys(CHECKS, "passed") | ({"carried_state": "n/a"} if arch == "transformer" else {})
    assert statuses(results) == expected, format_card(arch, results)


def test_cli_prints_the_card_and_sets_the_exit_code(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["arch", "check", str(EXAMPLE)])
    assert ok.exit_code == 0, ok.output
    assert "conformance of 'gated_recurrence'" in ok.output and "gated_recurrence conforms: 6 passed" in ok.output
    for check in CHECKS:
        assert any(line.split()[:2] == [check, "passed"] for line in ok.output.splitlines()), check
    broken = tmp_path / "leaky_arch.py"
    broken.write_text("import torch\nfrom gated_recurrence import DEFAULTS, GatedRecurrence\n"
                      "from workbench.architectures.components import ArchConfig, BlockLM\n\n"
                      "class Leaky(GatedRecurrence):\n    def forward(self, x, state=None):\n"
                      "        y, h = super().forward(x, state)\n        return y + x.flip(1), h\n\n"
                      "def build(config):\n    return BlockLM(ArchConfig(config), make_mixer=lambda c, l: Leaky(c))\n")
    bad = runner.invoke(app, ["arch", "check", str(broken), "--check", "causality", "--check", "hooks"])
    assert bad.exit_code == 1, bad.output
    assert "leaky_arch does NOT conform" in bad.output
    assert any(line.split()[:2] == ["causality", "failed"] for line in bad.output.splitlines())
    named = runner.invoke(app, ["arch", "check", "transformer", "--check", "carried_state", "--set", "n_layers=1"])
    assert named.exit_code == 0 and "carried_state  n/a" in named.output
    assert runner.invoke(app, ["arch", "check", "rwvk"]).exit_code == 2
    listed = runner.invoke(app, ["arch", "list"])
    assert listed.exit_code == 0 and "transformer" in listed.output
    assert runner.invoke(app, ["archs"]).output == listed.output


def test_an_installed_plugin_is_found_through_its_entry_point(tmp_path):
    """End to end, in a fresh process: a distribution on the path whose entry_points.txt names the
    example (what `pip install examples/plugin_arch` writes) makes it a registered architecture."""
    import os
    import subprocess

    dist = tmp_path / "wb_gated_recurrence-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wb-gated-recurrence\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ngated_recurrence = gated_recurrence\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(EXAMPLE_DIR)]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "workbench", "arch", "check", "gated_recurrence", "--check", "hooks"],
                          check=False, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gated_recurrence conforms: 1 passed" in done.stdout
