"""Typed key=value values (issue 17, item 4), config files read back, and `wb train`'s run folder.

Every bad value is one line naming the field, what it expects and what it got (exit 2), and leaves no
run folder behind; a model config.json missing a required field is an error naming the field and file.
"""

import json
import math
import warnings

import pytest
from conftest import TINY_TRANSFORMER
from typer.testing import CliRunner

from workbench.architectures import build_model, model_config
from workbench.cli import app
from workbench.fields import Field, parse_assignments
from workbench.store.model_files import load_model_folder, save_model_folder
from workbench.tasks import make_task
from workbench.training import TrainConfig
from workbench.training import trainer as trainer_module

runner = CliRunner()
TINY_ARGS = ["--task", "recall", "--task-param", "n_pairs=2", *[a for k, v in TINY_TRANSFORMER.items()
                                                                  for a in ("--set", f"{k}={v}")],
             "--train", "steps=4", "--train", "checkpoint_every=2", "--train", "eval_examples=8",
             "--train", "batch_size=4"]


def wb_train(tmp_path, *extra: str):
    args = ["train", *TINY_ARGS, *extra, "--run-dir", str(tmp_path / "runs" / "run"),
            "--artifacts", str(tmp_path / "art")]
    return runner.invoke(app, args)


@pytest.mark.parametrize(("option", "item", "message"), [
    ("--set", "d_model=abc", "--set d_model=abc: d_model expects a positive integer, got 'abc'"),
    ("--train", "lr=nan", "--train lr=nan: lr expects a finite number > 0, got 'nan'"),
    ("--task-param", "n_pairs=abc", "--task-param n_pairs=abc: n_pairs expects a positive integer, got 'abc'"),
    ("--set", "d_model=-4", "--set d_model=-4: d_model expects a positive integer, got '-4'"),
    ("--set", "d_model=3.5", "--set d_model=3.5: d_model expects a positive integer, got '3.5'"),
    ("--train", "batch_size=0", "--train batch_size=0: batch_size expects a positive integer, got '0'"),
    ("--train", "steps=0", "--train steps=0: steps expects a positive integer, got '0'"),
    ("--set", "n_layers=0", "--set n_layers=0: n_layers expects a positive integer, got '0'"),
    ("--train", "lr=-1e-3", "--train lr=-1e-3: lr expects a finite number > 0, got '-1e-3'"),
    ("--train", "min_lr_ratio=1.5", "min_lr_ratio expects a finite number in [0, 1], got '1.5'"),
    ("--set", "act_fn=tanh", "--set act_fn=tanh: act_fn expects one of: "),
    ("--task-param", "test_fraction=1", "test_fraction expects a finite number in [0, 1), got '1'"),
    ("--set", "d_modle=8", "--set d_modle=8: unknown transformer config field 'd_modle'; choose from: n_layers, "),
    ("--train", "stpes=8", "--train stpes=8: unknown train config field 'stpes'; choose from: steps, batch_size"),
])
def test_bad_values_are_one_line_naming_field_and_expectation(tmp_path, option, item, message):
    result = wb_train(tmp_path, option, item)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # neither the run folder nor the parent it would have made
    assert not (tmp_path / "art" / "runs").exists()


def test_good_values_are_typed(tmp_path):
    fields = {"lr": Field(float, low=0, open_low=True), "steps": Field(int, low=1), "flag": Field(bool),
              "seed": Field(int, low=0, also=(None,)), "at": Field(list, item=Field(int, low=0))}
    parsed = parse_assignments(["lr=1", "steps=+7", "flag=false", "seed=null", "at=[0, 2]"], "--x", fields)
    assert parsed == {"lr": 1.0, "steps": 7, "flag": False, "seed": None, "at": [0, 2]}
    assert isinstance(parsed["lr"], float)
    assert parse_assignments(["at=1,3"], "--x", fields) == {"at": [1, 3]}
    with pytest.raises(ValueError, match=r"--x at=1,-3: at expects a list, each item a non-negative integer, "
                                         r"got '1,-3'"):
        parse_assignments(["at=1,-3"], "--x", fields)
    with pytest.raises(ValueError, match="--x 'lr' is not of the form key=value"):
        parse_assignments(["lr"], "--x", fields)


def test_values_from_code_are_checked_too():
    with pytest.raises(ValueError, match=r"train config: steps expects a positive integer, got 0"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match=r"train config: lr expects a finite number > 0, got nan"):
        TrainConfig(lr=math.nan)
    with pytest.raises(ValueError, match=r"train config: batch_size expects a positive integer, got 2\.0"):
        TrainConfig.from_dict({"batch_size": 2.0})
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)
    with pytest.raises(ValueError, match=r"mamba config: n_layers expects a positive integer, got 0"):
        model_config("mamba", 10, 8, n_layers=0)
    with pytest.raises(ValueError, match=r"mamba config: dt_rank expects a positive integer or 'auto', got 'x'"):
        model_config("mamba", 10, 8, dt_rank="x")
    with pytest.raises(ValueError, match=r"xlstm config: slstm_at\[0\] expects a non-negative integer, got -1"):
        model_config("xlstm", 10, 8, slstm_at=[-1])
    assert model_config("xlstm", 10, 8, proj_factor=2)["proj_factor"] == 2.0
    with pytest.raises(ValueError, match=r"task 'recall': n_pairs expects a positive integer, got 'abc'"):
        make_task("recall", n_pairs="abc")
    with pytest.raises(ValueError, match=r"task 'toyworld': noop_prob expects a finite number in \[0, 1\], got 2"):
        make_task("toyworld", noop_prob=2)
    assert make_task("toyworld", kinds="capital,two_hop").params()["kinds"] == ["capital", "two_hop"]


def test_config_file_values_name_the_file_and_field(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"model": {"d_model": -4}}))
    result = wb_train(tmp_path, "--config", str(path))
    assert result.exit_code == 2
    assert f"--config {path}, 'model': d_model expects a positive integer, got -4" in result.output
    path.write_text(json.dumps({"train": {"stpes": 3}}))
    result = wb_train(tmp_path, "--config", str(path))
    assert result.exit_code == 2 and "unknown train config field(s) ['stpes']; choose from: steps" in result.output
    path.write_text(json.dumps({"modle": {}}))
    result = wb_train(tmp_path, "--config", str(path))
    assert result.exit_code == 2 and "optional 'model', 'task', 'train' objects; found ['modle']" in result.output
    path.write_text("{not json")
    result = wb_train(tmp_path, "--config", str(path))
    assert result.exit_code == 2 and f"--config {path} is not valid JSON" in result.output
    assert not (tmp_path / "runs").exists()


def test_run_dir_on_a_file_is_a_clean_error(tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    result = runner.invoke(app, ["train", *TINY_ARGS, "--run-dir", str(afile), "--artifacts", str(tmp_path / "a")])
    assert result.exit_code == 2
    assert f"--run-dir {afile} is a file; give a folder" in result.output
    result = runner.invoke(app, ["train", *TINY_ARGS, "--run-dir", str(afile / "run"), "--artifacts", str(tmp_path / "a")])
    assert result.exit_code == 2
    assert f"--run-dir {afile / 'run'} lies below {afile}, which is a file" in result.output
    assert afile.read_text() == "mine"


def nan_from_the_start(monkeypatch):
    monkeypatch.setattr(trainer_module, "masked_token_loss", lambda logits, batch: logits.sum() * math.nan)


def test_failed_run_leaves_no_run_folder(tmp_path, monkeypatch):
    nan_from_the_start(monkeypatch)
    result = wb_train(tmp_path)
    assert result.exit_code == 2 and "loss nan at step 0" in result.output
    assert "no checkpoint was written yet" in result.output
    assert not (tmp_path / "runs").exists()  # the run folder and the parent this run made are gone
    # a run folder that was there before is the user's: kept, as is what it holds
    kept = tmp_path / "runs" / "run"
    kept.mkdir(parents=True)
    (kept / "notes.txt").write_text("mine")
    assert wb_train(tmp_path).exit_code == 2
    assert (kept / "notes.txt").read_text() == "mine"


def test_failure_after_a_checkpoint_keeps_the_run_folder(tmp_path, monkeypatch):
    assert wb_train(tmp_path).exit_code == 0
    nan_from_the_start(monkeypatch)
    result = wb_train(tmp_path, "--train", "steps=6")  # resumes at step 4 (steps may grow), then diverges
    assert result.exit_code == 2 and "loss nan at step 4" in result.output
    assert (tmp_path / "runs" / "run" / "checkpoints" / "step-00000004").is_dir()


def tiny_model_folder(tmp_path):
    task = make_task("recall", n_pairs=2)
    config = model_config("transformer", task.tokenizer.vocab_size, task.seq_len, **TINY_TRANSFORMER)
    return save_model_folder(tmp_path / "m", build_model(config), config, task.tokenizer, {"task": task.spec()})


@pytest.mark.parametrize("field", ["d_model", "n_layers", "d_vocab", "n_ctx", "act_fn"])
def test_config_json_missing_a_required_field_is_named(tmp_path, field):
    folder = tiny_model_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != field}))
    with pytest.raises(ValueError, match=rf"m/config\.json: transformer config lacks the required field\(s\) "
                                         rf"\['{field}'\]"):
        load_model_folder(folder)
    result = runner.invoke(app, ["eval", str(folder), "--n", "4"])
    assert result.exit_code == 2 and f"lacks the required field(s) ['{field}']" in result.output


def test_config_json_with_a_bad_value_or_missing_optional_field(tmp_path):
    folder = tiny_model_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"n_heads": "two"}))
    with pytest.raises(ValueError, match=r"m/config\.json: n_heads expects a positive integer, got 'two'"):
        load_model_folder(folder)
    source = folder / "config.json"
    without = {k: v for k, v in config.items() if k != "positional_embedding_type"}
    with pytest.warns(UserWarning, match=r"config\.json: transformer config lacks the optional field\(s\) "
                                         r"\['positional_embedding_type'\]; using the defaults "
                                         r"positional_embedding_type='standard'"):
        model = build_model(without, source=source)
    assert model.cfg.positional_embedding_type == "standard"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete config warns about nothing
        build_model(config, source=source)
    rwkv = model_config("rwkv", 10, 8, n_layers=1, d_model=8, d_mlp=16)
    with pytest.warns(UserWarning, match=r"model config: rwkv config lacks the optional field\(s\) \['norm'\]; "
                                         r"using the defaults norm='layer'"):
        build_model({k: v for k, v in rwkv.items() if k != "norm"})


def test_graph_batch_size_zero_is_a_clear_error(tmp_path):
    """`wb graph --batch-size 0` used to end in Python's raw `range() arg 3 must not be zero`."""
    from workbench.attribution.attribute import AttributionConfig

    with pytest.raises(ValueError, match="batch_size expects a positive integer, got 0"):
        AttributionConfig(batch_size=0)
    result = runner.invoke(app, ["graph", "--model", str(tmp_path / "m"), "--dict", str(tmp_path / "d"),
                                 "--prompt", "a", "--batch-size", "0"])
    assert result.exit_code == 2 and "batch_size expects a positive integer" in result.output
