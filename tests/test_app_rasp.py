"""The RASP page under AppTest: pick a program, see its structure, run an input, and read each variable
decoded from the residual stream beside the interpreter's values; bad inputs are errors on the page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "app" / "pages" / "5_RASP.py")
TIMEOUT = 120
# the page's tables in order (AppTest does not expose a dataframe's key)
LAYERS, RESIDUAL, OUTPUTS, TRACE, COMPARE_PROBES = range(5)


@pytest.fixture
def page(recall_zoo, tmp_path, monkeypatch) -> AppTest:
    monkeypatch.setenv("WB_ARTIFACTS", str(tmp_path / "artifacts"))
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def pick(at: AppTest, program: str) -> AppTest:
    at.selectbox(key="rasp_program").set_value(program).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_histogram_structure_and_decoded_table(page):
    at = pick(page, "histogram")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Layers"] == "1" and metrics["Residual width"] == "12"
    graph = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert list(graph["data"][1]["text"]) == ["tokens", "hist"]  # inputs column, then layer 0's MLP
    assert at.dataframe[LAYERS].value["mlps"].tolist() == ["hist (11)"]
    at.text_input(key="rasp_input_histogram").set_value("a b a c a").run()
    table = at.dataframe[TRACE].value
    assert table.loc["hist", "interpreter"] == "3 1 3 1 3"
    assert table.loc["hist", "L0 mlp"] == table.loc["hist", "interpreter"]
    assert table.loc["hist", "L0 attn"] == "" and table.loc["tokens", "embed"] == "a b a c a"
    assert at.success[0].value == "compiled = interpreter"


def test_adder_every_variable_decodes_to_the_interpreter(page):
    at = pick(page, "adder")
    table = at.dataframe[TRACE].value  # the example 683+345=
    last = table.columns[-2]
    assert last == "L5 mlp" and (table[last] == table["interpreter"]).all()
    assert table.loc["adder", "interpreter"] == "6 8 3 1 0 2 8 -"


def test_bad_input_and_causal_refusal_are_errors(page):
    at = pick(page, "histogram")
    at.text_input(key="rasp_input_histogram").set_value("a b z").run()
    assert not at.exception and "unknown token 'z'" in at.error[0].value.replace("\\", "")
    at = pick(at, "reverse")
    at.checkbox(key="rasp_causal").check().run()
    assert not at.exception and "cannot be compiled causally" in at.error[0].value.replace("\\", "")


def test_comparison_with_a_trained_model(page):
    at = pick(page, "recall")
    assert at.selectbox(key="rasp_compare_model").options == ["transformer-recall"]
    at.number_input(key="rasp_compare_n").set_value(32).run()
    at.button(key="rasp_compare").click().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    probes = at.dataframe[COMPARE_PROBES].value
    assert set(probes["variable"]) == {"tokens", "indices", "key_query", "key_position", "value_position", "recall"}
    assert "selector read_value (recall)" in at.code[0].value
