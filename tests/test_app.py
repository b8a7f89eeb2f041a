"""The Streamlit app under AppTest: pages load on an empty, a normal and a damaged zoo, card content
is shown as text (never as HTML), and the picker and comparison respond. No trained model needed."""

import json
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "app"
HOME, MODELS = str(APP / "Home.py"), str(APP / "pages" / "1_Models.py")
TIMEOUT = 30


def card(name: str, accuracy: float, parameters: int, notes: str = "", bigram: float | None = 7.5) -> dict:
    metrics = {"test_accuracy": accuracy, "test_loss": 0.25, "test_perplexity": 1.3,
               "test_answer_loss": 0.1, "test_examples": 512}
    if bigram is not None:
        metrics["bigram_perplexity"] = bigram
    return {
        "name": name, "architecture": "transformer", "task": {"name": "reverse", "length": 6},
        "model_config": {"n_layers": 2, "d_model": 64}, "train_config": {"lr": 1e-3, "steps": 200},
        "metrics": metrics, "targets": {"test_accuracy": 0.99}, "parameters": parameters,
        "training_tokens": 400_000, "training_time_s": 12.5, "seed": 0,
        "eval": {"split": "test", "examples": 512, "seed": 1}, "trained_on": "cpu", "notes": notes,
        "created": "2025-01-01T00:00:00Z",
    }


def curves() -> pd.DataFrame:
    rows = []
    for step in (0, 50, 100):
        for split in ("train", "test"):
            rows.append((step, step * 1000, split, "loss", 3.0 / (1 + step / 50)))
            rows.append((step, step * 1000, split, "accuracy", step / 100))
            rows.append((step, step * 1000, split, "perplexity", 20.0 / (1 + step / 50)))
    return pd.DataFrame(rows, columns=["step", "tokens", "split", "metric", "value"])


def write_model(models: Path, folder: str, content: dict | str, with_curves: bool = True) -> None:
    path = models / folder
    path.mkdir(parents=True)
    text = content if isinstance(content, str) else json.dumps(content)
    (path / "card.json").write_text(text)
    if with_curves:
        curves().to_parquet(path / "curves.parquet", index=False)


@pytest.fixture
def zoo(tmp_path, monkeypatch) -> Path:
    models = tmp_path / "models"
    monkeypatch.setenv("WB_MODELS", str(models))
    monkeypatch.setenv("WB_ARTIFACTS", str(tmp_path / "artifacts"))
    return models


def run(script: str) -> AppTest:
    at = AppTest.from_file(script, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def bodies(at: AppTest) -> list[str]:
    """Every string an element could render as markdown or HTML."""
    kinds = ("markdown", "caption", "title", "header", "subheader", "info", "warning", "error", "success")
    out = [el.value for kind in kinds for el in getattr(at, kind)]
    return out + [el.proto.body for el in at.get("html")]


def test_empty_zoo(zoo):
    home = run(HOME)
    assert "empty" in home.info[0].value and "wb zoo build" in home.info[0].value
    assert [m.value for m in home.metric][:3] == ["0", "0", "0"]
    models = run(MODELS)
    assert "wb zoo build" in models.info[0].value
    zoo.mkdir()  # an existing but empty folder reads the same
    assert "wb zoo build" in run(MODELS).info[0].value


def test_zoo_table_card_and_curves(zoo):
    write_model(zoo, "alpha", card("alpha", 0.875, 12_345))
    write_model(zoo, "beta", card("beta", 0.5, 67_890, bigram=None), with_curves=False)
    home = run(HOME)
    assert home.metric[0].value == "2"
    at = run(MODELS)
    assert list(at.dataframe[0].value["name"]) == ["alpha", "beta"]
    assert "alpha" in at.subheader[0].value and at.metric[0].value == "87.50%"
    assert len(at.get("plotly_chart")) == 3 + 1  # loss, accuracy, perplexity + the comparison
    at.selectbox(key="models_card").select_index(1).run()
    assert not at.exception
    assert "beta" in at.subheader[0].value and at.metric[0].value == "50.00%"
    assert any("no curves.parquet" in i.value for i in at.info)


def test_comparison(zoo):
    for i, name in enumerate(["alpha", "beta", "gamma"]):
        write_model(zoo, name, card(name, 0.3 * (i + 1), 1000 * (i + 1)), with_curves=False)
    at = run(MODELS)
    table = at.dataframe[-1].value
    assert list(table.columns) == ["alpha", "beta"]
    at.multiselect(key="models_compare").set_value([0, 2]).run()
    assert not at.exception
    table = at.dataframe[-1].value
    assert list(table.columns) == ["alpha", "gamma"]
    assert table.loc["test_accuracy", "gamma"] == pytest.approx(0.9)
    assert table.loc["parameters", "gamma"] == 3000
    at.multiselect(key="models_compare").set_value([]).run()
    assert any("Pick models" in i.value for i in at.info)


def test_damaged_card_is_reported(zoo):
    write_model(zoo, "alpha", card("alpha", 0.875, 12_345))
    write_model(zoo, "broken", "{not json")
    write_model(zoo, "listy", "[1, 2]", with_curves=False)
    write_model(zoo, "odd", json.dumps({"name": "odd", "metrics": "high"}), with_curves=False)
    for script in (HOME, MODELS):
        at = run(script)
        warning = at.warning[0].value
        assert all(name in warning for name in ("broken", "listy", "odd"))
    assert list(at.dataframe[0].value["name"]) == ["alpha"]


def test_damaged_curves_are_reported(zoo):
    write_model(zoo, "alpha", card("alpha", 0.875, 12_345), with_curves=False)
    (zoo / "alpha" / "curves.parquet").write_bytes(b"not parquet")
    at = run(MODELS)
    assert any("alpha" in w.value and "is damaged" in w.value for w in at.warning)


def test_file_content_is_never_html(zoo):
    script = "<script>alert(1)</script>"
    evil = card(f"evil{script}", 0.5, 10, notes=script) | {"eval": script, "architecture": script}
    write_model(zoo, "evil", evil)
    at = run(MODELS)
    assert any(script in t.value for t in at.text), "the notes should be shown verbatim as text"
    for body in bodies(at):
        assert "<script>" not in body


def test_token_highlighter_escapes(monkeypatch):
    monkeypatch.syspath_prepend(str(APP))
    import widgets

    out = widgets.token_highlighter(["<script>", "a&b", '"q"'], [1.0, -0.5, float("nan")])
    assert "<script>" not in out and "&lt;script&gt;" in out and "&amp;b" in out and "&quot;q&quot;" in out
    assert out.count("<span") == 3
    with pytest.raises(ValueError, match="2 tokens but 1 values"):
        widgets.token_highlighter(["a", "b"], [1.0])
