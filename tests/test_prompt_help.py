"""Help with typing a prompt (app/prompt_help.py) and the build form that uses it: vocabulary search,
example prompts from the model's own task (test split, seeded), near matches for unknown words."""

import pytest
from streamlit.testing.v1 import AppTest
from test_app import APP, TIMEOUT

from workbench.tasks import make_task


@pytest.fixture
def prompt_help(monkeypatch):
    monkeypatch.syspath_prepend(str(APP))
    import prompt_help

    return prompt_help


VOCAB = ["<pad>", "<bos>", "austin", "Austin_tx", "houston", "texas", "saint_austin", "?", "the"]


def test_vocabulary_search_ranks_whole_then_prefix_then_inside(prompt_help):
    found, total = prompt_help.search_vocabulary(VOCAB, "AUSTIN")
    assert found == ["austin", "Austin_tx", "saint_austin"] and total == 3
    assert prompt_help.search_vocabulary(VOCAB, "") == (VOCAB[2:], 7)  # specials left out
    found, total = prompt_help.search_vocabulary(VOCAB, "t", limit=2)
    assert total == 6 and found == ["texas", "the"]  # prefix matches first, in vocabulary order
    assert prompt_help.search_vocabulary(VOCAB, "zebra") == ([], 0)


def test_near_matches_for_unknown_words(prompt_help):
    assert prompt_help.near_matches("Austin", VOCAB)[0] == "austin"
    assert prompt_help.near_matches("texass", VOCAB)[0] == "texas"
    assert prompt_help.near_matches("qqqq", VOCAB) == []
    unknown = prompt_help.unknown_words("the Austin of texass ? the", VOCAB)
    assert list(unknown) == ["Austin", "of", "texass"] and unknown["texass"][0] == "texas"
    message = prompt_help.unknown_words_message(unknown)
    assert "'texass' is not in the model's vocabulary; did you mean 'texas'" in message
    assert "'of' is not in the model's vocabulary; no close match" in message


def test_example_prompts_come_from_the_models_task(prompt_help):
    toyworld = {"task": {"name": "toyworld", "kinds": ["city_state", "capital", "two_hop", "arithmetic"]}}
    examples = prompt_help.example_prompts(toyworld)
    assert [label for label, _ in examples] == ["a toyworld fact", "a two-hop question", "a word problem"]
    two_hop = make_task("toyworld", kinds=["two_hop"])
    row = two_hop.sample("test", 1, 0)
    answer = int(row.answer_mask[0].nonzero()[-1])
    assert examples[1][1] == two_hop.tokenizer.decode(row.tokens[0, :answer].tolist())  # test row 0, cut
    assert "containing" in examples[1][1]
    assert prompt_help.example_prompts(toyworld, seed=1) != examples  # seeded
    recall = {"task": {"name": "recall_multi", "n_pairs": 3, "n_queries": 2}, "eval_task": {"name": "recall", "n_pairs": 3}}
    labels = [label for label, _ in prompt_help.example_prompts(recall)]
    assert labels == ["a recall prompt (several queries)", "a recall prompt"]
    vocab = make_task("recall", n_pairs=3).tokenizer.vocab
    assert prompt_help.example_prompts(toyworld, vocab) == []  # words the model lacks: left out
    assert prompt_help.example_prompts({"task": {"name": "no-such-task"}}) == []
    assert prompt_help.example_prompts({}) == []


def _form_script(app: str, models: str) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, app)
    import graph_sources

    from workbench.store.model_files import load_model_folder

    folder = Path(models) / "tiny-recall"
    graph_sources._prompt_box(load_model_folder(folder), folder)


def test_build_form_offers_examples_search_and_near_matches(tmp_path):
    from graph_fixtures import tiny_zoo

    _, _, prompt = tiny_zoo(tmp_path / "models", with_features=False)
    at = AppTest.from_function(_form_script, args=(str(APP), str(tmp_path / "models")), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.text_input(key="graph_prompt").value == prompt
    assert "a recall prompt" in at.selectbox(key="graph_example").options[0]
    at.text_input(key="graph_vocab_search").input(">").run()
    caption = next(c.value for c in at.caption if c.value.startswith("Vocabulary"))
    assert caption.startswith("Vocabulary: 1 of") and caption.endswith(r"\>")
    word = prompt.split()[1]
    at.text_input(key="graph_prompt").input(f"{prompt} {word.upper()}").run()
    assert f"did you mean '{word}'" in at.warning[0].value.replace("\\", "")
