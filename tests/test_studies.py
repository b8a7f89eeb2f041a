"""Studies: spec checking, determinism, resume, no silent overwrite, the CLI."""

from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from workbench.cli import app
from workbench.store import Catalog
from workbench.studies import load_study, parse_spec, run_study

ZOO = Path(__file__).resolve().parents[1] / "models"
runner = CliRunner()


def _spec(**over) -> dict:
    spec = {"name": "s", "seed": 3, "models": ["transformer-recall", "mingru-recall"], "prompts": {"n": 4},
            "steps": [{"method": "ablate", "kinds": ["mixer", "mlp"]},
                      {"method": "steer", "coefs": [1.0, 2.0], "layers": [1]}]}
    return spec | over


def _write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("bad, message", [
    ({"colour": "red"}, "unknown key(s) ['colour']"),
    ({"steps": [{"method": "patchify"}]}, "unknown study method 'patchify'"),
    ({"steps": [{"method": "ablate", "ablaton": "mean"}]}, "unknown parameter(s) ['ablaton']"),
    ({"steps": [{"method": "steer", "coefs": "big"}]}, "parameter 'coefs' of method 'steer'"),
    ({"name": "../escape"}, "study name '../escape'"),
    ({"prompts": {"tsk": "recall"}}, "unknown key(s) ['tsk']"),
    ({"seed": "zero"}, "'seed' must be an integer"),
])
def test_bad_specs_name_the_key_and_the_choices(bad, message):
    with pytest.raises(ValueError) as err:
        parse_spec(_spec(**bad))
    assert message in str(err.value)


def test_unknown_method_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of: .*ablate.*steer"):
        parse_spec(_spec(steps=[{"method": "nope"}]))


def test_study_is_deterministic_resumes_and_refuses_another_spec(tmp_path):
    path = _write(tmp_path, _spec())
    first = run_study(path, Catalog(tmp_path / "a"), models_dir=ZOO)
    second = run_study(path, Catalog(tmp_path / "b"), models_dir=ZOO)
    assert len(first.units) == 4 and first.resumed == 0
    for unit in first.units:
        a = (first.folder / unit["table"]).read_bytes()
        assert a == (second.folder / unit["table"]).read_bytes(), unit["unit"]
    # a stop after some units: remove one unit's table; the rerun recomputes only that one, to the same bytes
    lost = first.folder / first.units[2]["table"]
    kept = lost.read_bytes()
    lost.unlink()
    again = run_study(path, Catalog(tmp_path / "a"), models_dir=ZOO)
    assert again.resumed == 3 and lost.read_bytes() == kept
    study = load_study(first.folder)
    ablate = study["units"][0]["frame"]
    assert set(ablate["component"]) == {"mixer", "mlp"} and (ablate["clean"] != ablate["ablated"]).any()
    assert [r["name"] for r in Catalog(tmp_path / "a").list("study")] == ["s"]
    changed = _write(tmp_path, _spec(seed=4))
    with pytest.raises(ValueError, match="different spec"):
        run_study(changed, Catalog(tmp_path / "a"), models_dir=ZOO)
    fresh = run_study(changed, Catalog(tmp_path / "a"), models_dir=ZOO, fresh=True)
    assert fresh.resumed == 0


def test_steer_with_the_mean_difference_moves_toward_the_clean_answer(tmp_path):
    spec = _spec(models=["transformer-recall"], steps=[{"method": "steer", "coefs": [0.0, 1.0], "layers": [0, 1]}])
    result = run_study(_write(tmp_path, spec), Catalog(tmp_path / "a"), models_dir=ZOO)
    table = pd.read_parquet(result.folder / result.units[0]["table"])
    zero = table[table["coef"] == 0.0]
    assert (zero["change"].abs() < 1e-5).all()  # coefficient 0 is the corrupted run itself
    # resid_pre of layer 0 at the query position, plus (clean - corrupted) mean: the query key becomes the clean one
    assert float(table[(table["coef"] == 1.0) & (table["layer"] == 0)]["change"].iloc[0]) > 1.0


def test_quick_variant_runs_apart(tmp_path):
    spec = _spec(models=["transformer-recall"], steps=[{"method": "ablate", "kinds": ["mlp"]}],
                 quick={"prompts": {"n": 2}})
    result = run_study(_write(tmp_path, spec), Catalog(tmp_path / "a"), models_dir=ZOO, quick=True)
    assert result.name == "s-quick" and result.folder.name == "s-quick"


def test_cli_study_run_and_errors(tmp_path):
    path = _write(tmp_path, _spec(models=["transformer-recall"], steps=[{"method": "ablate", "kinds": ["mlp"]}]))
    ok = runner.invoke(app, ["study", "run", str(path), "--models", str(ZOO), "--artifacts", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    assert "study s: 1 units" in ok.output
    listed = runner.invoke(app, ["study", "list", "--artifacts", str(tmp_path / "a")])
    assert "s " in listed.output and "ablate" in listed.output
    bad = _write(tmp_path, _spec(name="t", models=["transformer-recal"]))
    out = runner.invoke(app, ["study", "run", str(bad), "--models", str(ZOO), "--artifacts", str(tmp_path / "a")])
    assert out.exit_code == 2 and "transformer-recall" in out.output
    assert not (tmp_path / "a" / "studies" / "t").exists()  # nothing written before the models resolve


def test_every_method_has_an_example_spec_and_every_spec_in_the_checkout_parses():
    from workbench.studies import load_spec
    from workbench.studies.methods import METHODS, load_adapters

    load_adapters()
    root = Path(__file__).resolve().parents[1] / "studies"
    examples = {load_spec(p).steps[0].method for p in (root / "examples").glob("*.yaml")}
    assert examples == set(METHODS), f"methods without an example: {set(METHODS) - examples}"
    for path in root.glob("*/study.yaml"):
        assert load_spec(path).steps


def test_published_study_is_catalogued_from_its_copy(tmp_path):
    from workbench.studies.runner import publish_study, register_published_studies

    spec = _spec(models=["transformer-recall"], steps=[{"method": "ablate", "kinds": ["mlp"]}])
    result = run_study(_write(tmp_path, spec), Catalog(tmp_path / "a"), models_dir=ZOO)
    copy = publish_study(result.folder, tmp_path / "studies" / "s" / "results")
    catalog = Catalog(tmp_path / "b")
    assert register_published_studies(tmp_path / "studies", catalog) == ["s"]
    entry = catalog.get("study", "s")
    assert Path(entry["path"]) == copy and entry["meta"]["published"]
    frame = load_study(copy)["units"][0]["frame"]
    assert frame.equals(pd.read_parquet(result.folder / result.units[0]["table"]))


def test_intervention_commands_run_as_one_step_studies_and_reuse_their_results(tmp_path):
    common = ["--models", str(ZOO), "--artifacts", str(tmp_path / "a"), "--n", "2"]
    first = runner.invoke(app, ["patch", "--model", "transformer-recall", *common])
    assert first.exit_code == 0, first.output
    assert "patch on transformer-recall: clean" in first.output and "figure:" in first.output
    again = runner.invoke(app, ["patch", "--model", "transformer-recall", *common])
    assert "stored earlier" in again.output
    for args in (["ablate", "--model", "mingru-recall", "--kind", "state"],
                 ["steer", "--model", "xlstm-recall", "--coef", "1.0"],
                 ["trace", "--model", "lstm-toyworld", "--samples", "2"]):
        out = runner.invoke(app, [*args, *common])
        assert out.exit_code == 0, (args, out.output)
    assert len(Catalog(tmp_path / "a").list("study")) == 4


def test_intervention_commands_give_one_line_errors(tmp_path):
    common = ["--models", str(ZOO), "--artifacts", str(tmp_path / "a")]
    unequal = runner.invoke(app, ["patch", "--model", "transformer-recall", "--clean", "a > 1 b > 2 ? a",
                                  "--corrupted", "a > 1 b > 2 c ? b", "--answer", "1", "--contrast", "2", *common])
    assert unequal.exit_code == 2 and "has 9 tokens" in unequal.output and "has 10" in unequal.output
    hook = runner.invoke(app, ["patch", "--model", "transformer-recall", "--hook", "blocks.{l}.hook_mlp_ot",
                               "--n", "2", *common])
    assert hook.exit_code == 2 and "nearest" in hook.output and "hook_mlp_out" in hook.output
    assert not list((tmp_path / "a" / "studies").glob("*/tables/*"))  # nothing half written


def test_a_first_run_that_fails_leaves_no_folder_and_bad_prompts_fail_before_writing(tmp_path):
    failing = _spec(models=["transformer-recall"], steps=[{"method": "patch", "hook": "blocks.{l}.hook_nothing"}])
    with pytest.raises(KeyError, match="nearest"):
        run_study(_write(tmp_path, failing), Catalog(tmp_path / "a"), models_dir=ZOO)
    assert not (tmp_path / "a" / "studies" / "s").exists()
    typed = _spec(name="t", models=["transformer-recall"], prompts={"clean": ["a > 1 ? a"], "corrupted": ["a > 1 b ? a"],
                                                                   "answer": ["1"], "contrast": ["2"]})
    with pytest.raises(ValueError, match="equal lengths"):
        run_study(_write(tmp_path, typed), Catalog(tmp_path / "a"), models_dir=ZOO)
    assert not (tmp_path / "a" / "studies" / "t").exists()


def test_a_study_file_pointing_outside_its_folder_is_refused(tmp_path):
    import json

    result = run_study(_write(tmp_path, _spec(models=["transformer-recall"],
                                              steps=[{"method": "ablate", "kinds": ["mlp"]}])),
                       Catalog(tmp_path / "a"), models_dir=ZOO)
    meta = json.loads((result.folder / "study.json").read_text())
    meta["units"][0]["table"] = "../../../../etc/passwd"
    (result.folder / "study.json").write_text(json.dumps(meta))
    with pytest.raises(PermissionError, match="outside the study folder"):
        load_study(result.folder)
