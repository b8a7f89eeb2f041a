"""`wb rasp list | compile | run | compare`: what each prints, the model folder `--save` writes, and each
bad input as one line with exit code 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from workbench.cli import app
from workbench.rasp.library import PROGRAMS, make_program

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def wb(*args: str):
    return runner.invoke(app, ["rasp", *args])


def test_list_names_every_program_with_its_mode_and_task():
    out = wb("list")
    assert out.exit_code == 0, out.output
    lines = {line.split()[0]: line for line in out.output.splitlines()}
    assert sorted(lines) == sorted(PROGRAMS)
    assert "causal" in lines["recall"] and "task recall" in lines["recall"]
    assert "bidirectional only" in lines["reverse"] and "length=4" in lines["reverse"]


def test_compile_prints_the_compiled_shape():
    out = wb("compile", "histogram", "--max-len", "5")
    assert out.exit_code == 0, out.output
    first = out.output.splitlines()[0]
    # hist: one head feeding the selector-width MLP; residual = one, bos, 3 tokens, bos weight, hist 0..5
    assert first.startswith("hist: 1 layers, 1 head(s)") and "residual width 12" in first
    assert "MLP width 11" in first and "752 parameters" in first and "bidirectional" in first
    assert "layer 0: heads H0: hist; MLP hist (11)" in out.output
    assert re.search(r"2-4 tokens \(3\): tokens:a, tokens:b, tokens:c", out.output)


def test_compile_max_len_sets_the_program_parameter_and_causal_mode():
    out = wb("compile", "count", "--max-len", "9", "--causal", "--param", "n_symbols=2")
    assert out.exit_code == 0, out.output
    assert "causal, compiled in" in out.output
    assert "indices (9): indices:0" in out.output  # nine positions: max_seq_len took --max-len


def test_compile_save_writes_a_model_folder_that_runs_on_its_tokenizer(tmp_path):
    from workbench.store.model_files import load_model_folder

    folder = tmp_path / "hist"
    out = wb("compile", "histogram", "--save", str(folder))
    assert out.exit_code == 0, out.output
    assert (folder / "checksums.json").is_file()
    bundle = load_model_folder(folder)
    assert bundle.card["rasp"]["program"] == "histogram" and bundle.card["rasp"]["circuit"]["hist"]["mlp"] == 0
    xs = ["a", "b", "a", "c", "a"]
    ids = torch.tensor([bundle.tokenizer.encode(["<bos>", *xs])])
    pred = bundle.model(ids)[0, 1:].argmax(-1).tolist()
    assert bundle.tokenizer.tokens(pred) == ["3", "1", "3", "1", "3"]


def test_run_prints_both_outputs_and_the_decoded_trace():
    out = wb("run", "histogram", "a b a c")
    assert out.exit_code == 0, out.output
    assert "interpreter 2 1 2 1" in out.output and "compiled    2 1 2 1   (equal)" in out.output
    rows = {line.split()[0]: line for line in out.output.splitlines() if line.startswith(("hist ", "tokens "))}
    assert rows["hist"].split() == ["hist", "2", "1", "2", "1", "2", "1", "2", "1"]  # L0 mlp, interpreter
    assert rows["tokens"].split()[1:] == ["a", "b", "a", "c"] * 4  # embed, L0 attn, L0 mlp, interpreter


def test_run_the_adder_on_characters():
    out = wb("run", "adder", "683+345=")
    assert out.exit_code == 0, out.output
    assert "compiled    6 8 3 1 0 2 8 -   (equal)" in out.output  # 683 + 345 = 1028 from the "+" on
    carry = next(line for line in out.output.splitlines() if line.startswith("carry "))
    assert carry.rstrip().endswith("0 0 0 1 1 0 0 -   0 0 0 1 1 0 0 -")  # L5 mlp, then the interpreter


def test_compare_prints_its_tables():
    out = wb("compare", "--program", "recall", "--model", str(ROOT / "models" / "transformer-recall"),
             "--n", "32", "--no-circuit")
    assert out.exit_code == 0, out.output
    assert "probe score per residual site" in out.output
    assert re.search(r"selector read_value \(recall\): best L\d+H\d+", out.output)
    assert "probes (18 rows)" in out.output  # 6 variables x 3 residual sites


@pytest.mark.parametrize(("args", "message"), [
    (["compile", "revrse", "--max-len", "4"], "unknown RASP program 'revrse'; choose one of: adder, "),
    (["run", "histogram", "a b z"], "unknown token 'z'; the vocabulary is ['a', 'b', 'c']"),
    (["run", "histogram", "abcabc"], "input has 6 tokens, more than max_seq_len=5"),
    (["run", "length", "a b c", "--max-len", "2"], "input has 3 tokens, more than max_seq_len=2"),
    (["compile", "reverse", "--causal"], "program 'reverse' cannot be compiled causally (causal-compatible: "),
    (["run", "sort", "1 2", "--causal"], "program 'sort' cannot be compiled causally"),
    (["compile", "length", "--param", "n_symbols=abc"], "n_symbols expects an integer, got 'abc'"),
    (["compile", "length", "--param", "colour=1"], "unknown parameter 'colour'"),
    (["compare", "--program", "recall", "--model", "models/no-such-model"], "no model folder at"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    out = wb(*args)
    assert out.exit_code == 2, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.output


def test_causal_compile_agrees_with_the_interpreter():
    from workbench.cli.rasp import compile_program

    lib = make_program("prev_occurrence")
    compiled, _ = compile_program(lib, causal=True)
    xs = ["a", "b", "a", "c", "b", "a"]
    assert compiled.apply(["BOS", *xs]).outputs == lib.evaluate(xs) == [None, None, 0, None, 1, 2]
