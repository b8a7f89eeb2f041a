"""Toyworld: the fixed world, the templates and their held-out split, answers re-derived from the
world constants, NoOp clauses, the vocabulary's independence from the process, and speed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbench.tasks import make_task
from workbench.tasks.toyworld import HELD_OUT_TEMPLATES, KINDS, TEMPLATES, ToyworldTask, toyworld_vocabulary
from workbench.tasks.toyworld_world import (
    ANTONYM_PAIRS,
    ANTONYMS,
    CAPITALS,
    CITIES,
    CITIES_BY_STATE,
    NOOP_CLAUSES,
    ORGANISATIONS,
    PEOPLE,
    PROFESSIONS,
    STATE_OF_CITY,
    STATES,
    VEL,
    ZOR,
    acronym_of,
    english_words,
    template_words,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task():
    return make_task("toyworld")


@pytest.fixture(scope="module")
def splits(task):
    return {split: task.sample_with_meta(split, 2000, seed=0) for split in ("train", "test")}


# ---------------------------------------------------------------------------------------------------
# the world
# ---------------------------------------------------------------------------------------------------


def test_world_geography_is_real():
    assert len(STATES) == 12 and all(len(cities) == 3 for cities in CITIES_BY_STATE.values())
    assert CAPITALS[STATE_OF_CITY["dallas"]] == "austin"
    assert STATE_OF_CITY["houston"] == "texas"
    assert CAPITALS[STATE_OF_CITY["oakland"]] == "sacramento"
    assert not set(CITIES) & set(CAPITALS.values()), "cities are the non-capital ones"
    assert len(set(CITIES)) == 36


def test_world_sizes_and_token_shapes():
    assert len(PEOPLE) == 24 and len(set(PROFESSIONS.values())) == 24
    assert len(ANTONYM_PAIRS) == 24 and all(ANTONYMS[ANTONYMS[w]] == w for w in ANTONYMS)
    assert not set(PEOPLE) & (set(CITIES) | set(STATES) | set(CAPITALS.values()))
    for word in english_words() | template_words():
        assert word == word.lower() and " " not in word


def test_invented_languages_are_fixed_distinct_and_new():
    assert len(set(VEL.values())) == len(VEL) == 48 and len(set(ZOR.values())) == len(ZOR) == 48
    invented = set(VEL.values()) | set(ZOR.values())
    assert not set(VEL.values()) & set(ZOR.values())
    assert not invented & (english_words() | template_words())
    assert VEL["hot"] == "bafe" and ZOR["hot"] == "gart", "the invented words must never change"


def test_acronyms_are_uppercase_letter_tokens():
    assert len(ORGANISATIONS) == 512
    assert acronym_of(("national", "science", "foundation")) == ("N", "S", "F")
    assert len({acronym_of(org) for org in ORGANISATIONS}) == 512, "an acronym names one organisation"


def test_case_study_prompts_tokenize(task):
    for text in (
        "the capital of the state containing dallas is austin",
        "the opposite of small is big",
        f"nu selae ti {VEL['small']} mo {VEL['big']}",
        "the acronym of national science foundation is N S F",
        "alice has 3 apples . bob gives alice 4 apples . how many apples does alice have ? 7",
    ):
        assert task.tokenizer.decode(task.tokenizer.encode(text)) == text


# ---------------------------------------------------------------------------------------------------
# templates and the split
# ---------------------------------------------------------------------------------------------------


def test_every_kind_has_three_train_phrasings_and_one_held_out():
    for kind in KINDS:
        templates = [t for t in TEMPLATES if t.kind == kind]
        assert len(templates) >= 4 and sum(t.held_out for t in templates) == 1
        assert templates[-1].held_out
    assert [t.id for t in TEMPLATES] == list(range(len(TEMPLATES)))
    assert len(HELD_OUT_TEMPLATES) == len(KINDS)


def test_test_split_uses_only_held_out_templates(task, splits):
    held_out = {t.id for t in HELD_OUT_TEMPLATES}
    train_ids = set(splits["train"][1].template_ids.tolist())
    test_ids = set(splits["test"][1].template_ids.tolist())
    assert test_ids == held_out == set(task.split_template_ids("test"))
    assert train_ids == {t.id for t in TEMPLATES} - held_out == set(task.split_template_ids("train"))
    train_rows = {tuple(r) for r in splits["train"][0].tokens.tolist()}
    assert not train_rows & {tuple(r) for r in splits["test"][0].tokens.tolist()}


def test_meta_kinds_match_templates(splits):
    for batch, meta in splits.values():
        assert len(meta.kind_ids) == len(batch)
        assert [KINDS[k] for k in meta.kind_ids.tolist()] == [
            TEMPLATES[t].kind for t in meta.template_ids.tolist()
        ]


def test_masks_are_language_modelling_and_answer(task, splits):
    for batch, _ in splits.values():
        real = batch.tokens != task.tokenizer.pad_id
        expected_loss = real.clone()
        expected_loss[:, 0] = False
        assert torch.equal(batch.loss_mask, expected_loss)
        assert (batch.answer_mask.sum(dim=1) >= 1).all() and (batch.answer_mask.sum(dim=1) <= 3).all()


# ---------------------------------------------------------------------------------------------------
# answers, re-derived from the world constants
# ---------------------------------------------------------------------------------------------------


def expected_answer(kind: str, template, prompt: list[str]) -> list[str]:
    words = set(prompt)
    if kind in ("city_state", "two_hop"):
        (city,) = words & set(CITIES)
        return [STATE_OF_CITY[city]] if kind == "city_state" else [CAPITALS[STATE_OF_CITY[city]]]
    if kind == "capital":
        (state,) = words & set(STATES)
        return [CAPITALS[state]]
    if kind == "profession":
        (person,) = words & set(PEOPLE)
        return [PROFESSIONS[person]]
    if kind.startswith("antonym_"):
        lexicon = {"en": {w: w for w in ANTONYMS}, "vel": VEL, "zor": ZOR}[kind.split("_")[1]]
        back = {foreign: english for english, foreign in lexicon.items()}
        (word,) = words & set(back)
        return [lexicon[ANTONYMS[back[word]]]]
    if kind == "translation":
        lang = "vel" if "vel" in words else "zor"
        (word,) = words & set(ANTONYMS)
        return [(VEL if lang == "vel" else ZOR)[word]]
    if kind == "acronym":
        org = next(o for o in ORGANISATIONS if all(w in words for w in o))
        return list(acronym_of(org))
    numbers = [int(w) for w in prompt if w.isdigit()]
    assert len(numbers) == 2
    return [str(numbers[0] + numbers[1] if template.op == "+" else numbers[0] - numbers[1])]


@pytest.mark.parametrize("split", ["train", "test"])
def test_answers_are_correct(task, splits, split):
    batch, meta = splits[split]
    seen_kinds = set()
    for row in range(400):
        template = TEMPLATES[int(meta.template_ids[row])]
        tokens = batch.tokens[row]
        prompt = task.tokenizer.tokens(tokens[batch.loss_mask[row] & ~batch.answer_mask[row]].tolist())
        answer = task.tokenizer.tokens(tokens[batch.answer_mask[row]].tolist())
        assert answer == expected_answer(template.kind, template, prompt), (prompt, answer)
        seen_kinds.add(template.kind)
    assert seen_kinds == set(KINDS)


def test_arithmetic_numbers_stay_in_range_and_noops_are_marked():
    task = make_task("toyworld", kinds=["arithmetic"], noop_prob=0.5)
    batch, meta = task.sample_with_meta("train", 1000, seed=0)
    markers = {"likes", "weather", "sky", "hat"}  # no template uses them; every clause has one
    assert all(markers & set(clause.split()) for clause in NOOP_CLAUSES)
    for row in range(1000):
        words = task.tokenizer.tokens(batch.tokens[row][batch.loss_mask[row]].tolist())
        assert all(0 <= int(w) <= 40 for w in words if w.isdigit())
        assert bool(markers & set(words)) == bool(meta.has_noop[row])
    share = meta.has_noop.float().mean().item()
    assert 0.4 < share < 0.6


def test_noop_free_corpus_is_shorter_and_longest_row_fills_seq_len():
    plain = make_task("toyworld", kinds=["arithmetic"], noop_prob=0.0)
    noisy = make_task("toyworld", kinds=["arithmetic"], noop_prob=1.0)
    assert not plain.sample_with_meta("train", 300, seed=0)[1].has_noop.any()
    assert noisy.seq_len > plain.seq_len
    # the longest template with a six-token clause fills seq_len exactly
    rows = torch.cat([noisy.sample(split, 300, seed=0).tokens for split in ("train", "test")])
    assert (rows != 0).sum(dim=1).max().item() == noisy.seq_len


def test_kind_subset_and_unknown_kind():
    task = make_task("toyworld", kinds=["capital", "two_hop"])
    assert task.tokenizer == make_task("toyworld").tokenizer, "one vocabulary for every configuration"
    _, meta = task.sample_with_meta("train", 200, seed=0)
    assert {KINDS[k] for k in meta.kind_ids.tolist()} == {"capital", "two_hop"}
    with pytest.raises(
        ValueError, match=r"unknown toyworld kind\(s\) \['capitol'\]; choose from: city_state"
    ):
        make_task("toyworld", kinds=["capitol"])
    with pytest.raises(ValueError, match="no toyworld kinds given"):
        make_task("toyworld", kinds=[])
    assert make_task("toyworld", kinds="two_hop, capital") == task


# ---------------------------------------------------------------------------------------------------
# determinism across processes, and speed
# ---------------------------------------------------------------------------------------------------


def test_vocabulary_and_samples_are_identical_in_another_process(task):
    code = (
        "from workbench.tasks import make_task; t = make_task('toyworld'); "
        "print('|'.join(t.tokenizer.vocab)); "
        "print(t.sample('train', 50, seed=4).tokens.sum().item(), t.sample('test', 50, seed=4).tokens.tolist()[0])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    vocab_line, sample_line = out.stdout.strip().splitlines()
    assert vocab_line.split("|") == task.tokenizer.vocab == ["<pad>", "<bos>", *toyworld_vocabulary()]
    train_sum = task.sample("train", 50, seed=4).tokens.sum().item()
    assert sample_line == f"{train_sum} {task.sample('test', 50, seed=4).tokens.tolist()[0]}"


def test_ten_thousand_examples_in_under_a_second():
    task = ToyworldTask()
    best = float("inf")
    for _ in range(2):  # best of two: the machine is shared
        start = time.perf_counter()
        task.sample("train", 10_000, seed=0)
        best = min(best, time.perf_counter() - start)
    assert best < 1.0


def test_held_out_phrasings_use_only_words_seen_in_training():
    """Every target token of the test split occurs in the train split: held-out templates recombine
    known words, so test perplexity measures generalisation, not guessing unseen words."""
    task = make_task("toyworld")
    train, test = task.sample("train", 20000, 1), task.sample("test", 2000, 2)
    seen = set(train.tokens[train.tokens != task.tokenizer.pad_id].tolist())
    unseen = {task.tokenizer.vocab[i] for i in test.tokens[test.loss_mask].tolist() if i not in seen}
    assert unseen == set()
