"""The task suite: registry, every task's sampling contract, answers re-derived in plain Python,
exact-match scoring, the tokenizer and the bigram baseline. Toyworld specifics: test_toyworld.py."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from workbench.tasks import (
    TASKS,
    Batch,
    Tokenizer,
    answer_hits,
    bigram_perplexity,
    exact_match,
    make_task,
    masked_token_loss,
    task_names,
)
from workbench.tasks.algorithmic import AlgorithmicTask

ALL = task_names()
ALGORITHMIC = [name for name in ALL if issubclass(TASKS[name], AlgorithmicTask)]


@pytest.fixture(scope="module")
def tasks():
    return {name: make_task(name) for name in ALL}


@pytest.fixture(scope="module")
def samples(tasks):
    """2000 train and 2000 test rows of every task with default parameters, drawn once."""
    return {
        name: (t.sample("train", 2000, seed=0), t.sample("test", 2000, seed=0)) for name, t in tasks.items()
    }


# ---------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------


def test_registry_holds_every_task():
    expected = {"recall", "recall_multi", "induction", "reverse", "sort", "histogram", "fraction_prev"}
    expected |= {"dyck", "addition", "selective_copy", "toyworld"}
    assert set(TASKS) == expected
    assert ALL == sorted(expected)
    assert all(TASKS[name].name == name for name in TASKS)


def test_unknown_task_lists_choices():
    with pytest.raises(ValueError, match=r"unknown task 'recal'; choose one of: addition, dyck, ") as err:
        make_task("recal")
    assert "toyworld" in str(err.value)


def test_unknown_param_names_it_and_the_accepted_ones():
    with pytest.raises(ValueError, match=r"'n_pair'.*'recall'.*accepted: n_pairs, n_keys, n_values"):
        make_task("recall", n_pair=3)


def test_bad_param_values_are_errors():
    with pytest.raises(ValueError, match="n_pairs"):
        make_task("recall", n_pairs=30)
    with pytest.raises(ValueError, match="even"):
        make_task("dyck", length=7)
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        make_task("sort").sample("valid", 3, seed=0)


@pytest.mark.parametrize("name", ALL)
def test_round_trip_through_params(name, tasks):
    task = tasks[name]
    rebuilt = make_task(task.name, **task.params())
    assert rebuilt == task and rebuilt.spec() == task.spec()
    assert rebuilt.tokenizer.vocab == task.tokenizer.vocab
    a, b = task.sample("train", 50, seed=3), rebuilt.sample("train", 50, seed=3)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.answer_mask, b.answer_mask)


NON_DEFAULT = {
    "recall": {"n_pairs": 4, "n_keys": 6, "n_values": 5},
    "recall_multi": {"n_pairs": 5, "n_queries": 5},
    "induction": {"length": 5, "n_symbols": 30},
    "sort": {"length": 6, "n_values": 9, "distinct": True},
    "dyck": {"length": 10, "n_types": 5},
    "addition": {"n_digits": 5, "reverse_sum": True},
    "toyworld": {"kinds": ["arithmetic", "capital"], "noop_prob": 0.5},
}


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_round_trip_non_default_params(name):
    task = make_task(name, **NON_DEFAULT[name])
    rebuilt = make_task(name, **task.params())
    assert rebuilt == task and rebuilt != make_task(name)
    assert torch.equal(task.sample("train", 20, seed=1).tokens, rebuilt.sample("train", 20, seed=1).tokens)


# ---------------------------------------------------------------------------------------------------
# the sampling contract, for every task
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_sampling_is_deterministic(name, tasks):
    task = tasks[name]
    a, b = task.sample("train", 64, seed=7), task.sample("train", 64, seed=7)
    for field in ("tokens", "loss_mask", "answer_mask"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.tokens, task.sample("train", 64, seed=8).tokens)


@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_and_masks(name, tasks, samples):
    task = tasks[name]
    for batch in samples[name]:
        assert batch.tokens.shape == (2000, task.seq_len) and batch.tokens.dtype == torch.int64
        assert batch.loss_mask.dtype == torch.bool and batch.answer_mask.dtype == torch.bool
        assert batch.loss_mask.shape == batch.answer_mask.shape == batch.tokens.shape
        assert (batch.tokens[:, 0] == task.tokenizer.bos_id).all()
        assert ((batch.tokens >= 0) & (batch.tokens < task.tokenizer.vocab_size)).all()
        real = batch.tokens != task.tokenizer.pad_id
        assert not (batch.answer_mask & ~batch.loss_mask).any(), "answer_mask must be a subset of loss_mask"
        assert not (batch.loss_mask & ~real).any(), "no target on padding"
        assert not batch.loss_mask[:, 0].any(), "position 0 (<bos>) is never a target"
        assert batch.answer_mask.any(dim=1).all(), "every row has an answer"
        # the answer ends the row: the last real token is an answer token
        last_real = real.sum(dim=1) - 1
        assert batch.answer_mask.gather(1, last_real[:, None]).all()
        # padding only at the end
        assert torch.equal(real, real.cummin(dim=1).values)


@pytest.mark.parametrize("name", ALGORITHMIC)
def test_algorithmic_loss_is_on_answers_only(name, samples):
    for batch in samples[name]:
        assert torch.equal(batch.loss_mask, batch.answer_mask)
        assert (batch.tokens != 0).all(), "algorithmic rows have a fixed length: no padding"


@pytest.mark.parametrize("name", ALL)
def test_train_and_test_are_disjoint(name, samples):
    train, test = samples[name]
    train_rows = {tuple(row) for row in train.tokens.tolist()}
    test_rows = {tuple(row) for row in test.tokens.tolist()}
    assert not train_rows & test_rows
    assert len(test_rows) > 100, "the test split is not one repeated row"


@pytest.mark.parametrize("name", ALGORITHMIC)
def test_smaller_samples_are_prefixes(name, tasks):
    task = tasks[name]
    assert torch.equal(task.sample("test", 30, seed=2).tokens, task.sample("test", 300, seed=2).tokens[:30])


def test_empty_sample_and_empty_test_split():
    assert make_task("sort").sample("train", 0, seed=0).tokens.shape == (0, make_task("sort").seq_len)
    with pytest.raises(ValueError, match="test_fraction=0"):
        make_task("sort", test_fraction=0.0).sample("test", 5, seed=0)
    # one possible sequence, which hashes into the test split: the train split cannot be filled
    with pytest.raises(ValueError, match="too small for this split"):
        make_task("sort", length=1, n_values=1).sample("train", 5, seed=0)


# ---------------------------------------------------------------------------------------------------
# answers, re-derived in plain Python from the prompt text
# ---------------------------------------------------------------------------------------------------


def _split_at(words: list[str], sep: str) -> tuple[list[str], list[str]]:
    i = words.index(sep)
    return words[:i], words[i + 1 :]


def check_recall(task, prompt, answer):
    pairs = prompt[: 3 * task.n_pairs]
    table = {pairs[i]: pairs[i + 2] for i in range(0, len(pairs), 3)}
    assert len(table) == task.n_pairs and all(pairs[i] == ">" for i in range(1, len(pairs), 3))
    assert prompt[-2] == "?" and answer == [table[prompt[-1]]]


def check_recall_multi(task, prompt, answer):
    pairs = prompt[: 3 * task.n_pairs]
    table = {pairs[i]: pairs[i + 2] for i in range(0, len(pairs), 3)}
    queries = prompt[3 * task.n_pairs :]
    assert queries[0::2] == ["?"] * task.n_queries and len(set(queries[1::2])) == task.n_queries
    assert answer == [table[q] for q in queries[1::2]]


def check_induction(task, prompt, answer):
    xs, rest = _split_at(prompt, "|")
    assert rest == [] and len(xs) == task.length and answer == xs


def check_reverse(task, prompt, answer):
    xs, _ = _split_at(prompt, "|")
    assert answer == xs[::-1]


def check_sort(task, prompt, answer):
    xs, _ = _split_at(prompt, "|")
    assert answer == sorted(xs, key=int)


def check_histogram(task, prompt, answer):
    xs, _ = _split_at(prompt, "|")
    assert answer == [str(xs.count(x)) for x in xs]


def check_fraction_prev(task, prompt, answer):
    xs, _ = _split_at(prompt, "=")
    bucket = math.floor(Fraction(task.n_buckets * xs.count("x"), len(xs)) + Fraction(1, 2))
    assert answer == [f"f{bucket}"]


def check_dyck(task, prompt, answer):
    brackets, _ = _split_at(prompt, "=")
    pairs = {"(": ")", "[": "]", "{": "}", "<": ">"}
    depth = dict.fromkeys(pairs, 0)
    closer_of = {v: k for k, v in pairs.items()}
    ever_negative = False
    for b in brackets:
        if b in pairs:
            depth[b] += 1
        else:
            depth[closer_of[b]] -= 1
            ever_negative |= depth[closer_of[b]] < 0
    balanced = not ever_negative and all(d == 0 for d in depth.values())
    assert answer == ["T" if balanced else "F"]


def check_addition(task, prompt, answer):
    a, rest = _split_at(prompt, "+")
    b, _ = _split_at(rest, "=")
    assert len(a) == len(b) == task.n_digits and len(answer) == task.n_digits + 1
    assert int("".join(a)) + int("".join(b)) == int("".join(answer))


def check_selective_copy(task, prompt, answer):
    xs, _ = _split_at(prompt, "|")
    assert len(xs) == task.length and answer == [x for x in xs if x != "."]


CHECKERS = {name[len("check_") :]: fn for name, fn in globals().items() if name.startswith("check_")}


def test_every_algorithmic_task_has_a_checker():
    assert set(CHECKERS) == set(ALGORITHMIC)


@pytest.mark.parametrize("name", ALGORITHMIC)
def test_answers_are_correct(name, tasks, samples):
    task = tasks[name]
    for batch in samples[name]:
        for row in range(40):
            tokens = batch.tokens[row]
            words = task.tokenizer.tokens(tokens[1:][~batch.answer_mask[row, 1:]].tolist())
            answer = task.tokenizer.tokens(tokens[batch.answer_mask[row]].tolist())
            CHECKERS[name](task, words, answer)


def test_recall_multi_answers_follow_their_queries():
    task = make_task("recall_multi")
    batch = task.sample("train", 5, seed=0)
    positions = batch.answer_mask[0].nonzero().flatten().tolist()
    assert all(task.tokenizer.vocab[int(batch.tokens[0, p - 2])] == "?" for p in positions)


def test_addition_683_plus_345():
    assert make_task("addition", n_digits=3).example(683, 345) == "6 8 3 + 3 4 5 = 1 0 2 8"
    assert make_task("addition", n_digits=3, reverse_sum=True).example(683, 345) == "6 8 3 + 3 4 5 = 8 2 0 1"
    assert make_task("addition", n_digits=3).example(5, 7) == "0 0 5 + 0 0 7 = 0 0 1 2"


def test_dyck_is_about_half_balanced(samples):
    task = make_task("dyck")
    train, _ = samples["dyck"]
    share = (train.tokens[:, -1] == task.tokenizer.index["T"]).float().mean().item()
    assert 0.4 < share < 0.6


def test_recall_prompt_format():
    task = make_task("recall", n_pairs=2)
    prompt, answer = task.describe(task.sample("train", 1, seed=0))
    words = prompt.split()
    assert words[0] == "<bos>" and words[2] == ">" and words[5] == ">" and words[7] == "?"
    assert len(words) == 9 and len(answer.split()) == 1 and task.seq_len == 10


# ---------------------------------------------------------------------------------------------------
# exact match and loss
# ---------------------------------------------------------------------------------------------------


def one_hot_logits(batch: Batch, vocab_size: int) -> torch.Tensor:
    """Logits whose argmax at position t-1 is the true token t: a perfect model."""
    logits = torch.zeros(*batch.tokens.shape, vocab_size)
    logits[:, :-1].scatter_(2, batch.tokens[:, 1:, None], 1.0)
    return logits


def corrupt_one_answer(logits: torch.Tensor, batch: Batch, rows: torch.Tensor) -> torch.Tensor:
    """Move the argmax away from the true token at each chosen row's last answer position."""
    logits = logits.clone()
    last_answer = batch.answer_mask.int().cumsum(dim=1).argmax(dim=1)
    for row in rows.tolist():
        pos = int(last_answer[row])
        true = int(batch.tokens[row, pos])
        logits[row, pos - 1, true] = -1.0
        logits[row, pos - 1, (true + 1) % logits.shape[-1]] = 2.0
    return logits


@pytest.mark.parametrize("name", ALL)
def test_exact_match_perfect_corrupt_and_partial(name, tasks):
    task = tasks[name]
    batch = task.sample("train", 40, seed=5)
    logits = one_hot_logits(batch, task.tokenizer.vocab_size)
    assert exact_match(logits, batch) == 1.0
    assert exact_match(corrupt_one_answer(logits, batch, torch.arange(40)), batch) == 0.0
    half = corrupt_one_answer(logits, batch, torch.arange(0, 40, 2))
    assert exact_match(half, batch) == pytest.approx(0.5)
    assert answer_hits(half, batch).tolist() == [i % 2 == 1 for i in range(40)]


def test_masked_token_loss_is_low_for_a_confident_right_model(tasks):
    task = tasks["recall"]
    batch = task.sample("train", 8, seed=0)
    logits = one_hot_logits(batch, task.tokenizer.vocab_size) * 50
    assert masked_token_loss(logits, batch).item() < 1e-6
    assert masked_token_loss(torch.zeros_like(logits), batch).item() == pytest.approx(
        math.log(task.tokenizer.vocab_size)
    )


# ---------------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_tokenizer_json_round_trip(name, tasks):
    tok = tasks[name].tokenizer
    again = Tokenizer.from_json(tok.to_json())
    assert again == tok and again.vocab[:2] == ["<pad>", "<bos>"] and again.pad_id == 0 and again.bos_id == 1


def test_tokenizer_unknown_token_and_bad_id():
    tok = make_task("recall").tokenizer
    assert tok.decode(tok.encode("a > 3 ? a 3")) == "a > 3 ? a 3"
    with pytest.raises(ValueError, match="unknown token.*'zz'"):
        tok.encode("a > zz")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


# ---------------------------------------------------------------------------------------------------
# bigram baseline
# ---------------------------------------------------------------------------------------------------


def lm_batch(tokens: torch.Tensor) -> Batch:
    loss_mask = torch.ones_like(tokens, dtype=torch.bool)
    loss_mask[:, 0] = False
    return Batch(tokens, loss_mask, loss_mask.clone())


def test_bigram_on_a_deterministic_sequence_is_near_one():
    vocab = 12
    rows = (torch.arange(200)[:, None] + torch.arange(30)[None, :]) % vocab  # next = prev + 1
    assert bigram_perplexity(lm_batch(rows[:150]), lm_batch(rows[150:]), vocab) < 1.02


def test_bigram_on_uniform_tokens_is_near_vocab_size():
    vocab = 20
    gen = torch.Generator().manual_seed(0)
    train = lm_batch(torch.randint(vocab, (2000, 50), generator=gen))
    test = lm_batch(torch.randint(vocab, (500, 50), generator=gen))
    assert bigram_perplexity(train, test, vocab) == pytest.approx(vocab, rel=0.05)


def test_bigram_only_counts_loss_mask_targets():
    tokens = torch.tensor([[1, 2, 3, 4]])
    mask = torch.tensor([[False, False, False, True]])
    batch = Batch(tokens, mask, mask)
    # one counted transition 3 -> 4; with alpha=1 and V=5: p(4|3) = 2/6
    assert bigram_perplexity(batch, batch, vocab_size=5, alpha=1.0) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="alpha"):
        bigram_perplexity(batch, batch, vocab_size=5, alpha=0.0)


def test_bigram_beats_uniform_on_fresh_toyworld_rows(tasks, samples):
    # Fresh rows of the train templates. (On the held-out templates a bigram model meets unseen
    # transitions, and its perplexity can exceed the vocabulary size.)
    task = tasks["toyworld"]
    train, _ = samples["toyworld"]
    fresh = task.sample("train", 1000, seed=1)
    perplexity = bigram_perplexity(train, fresh, task.tokenizer.vocab_size)
    assert 1.0 < perplexity < task.tokenizer.vocab_size / 4


def test_recall_min_pairs_mixes_context_lengths():
    """min_pairs < n_pairs: leading pairs are <pad>, the query is one of the present keys, every row
    keeps one length, and the default spec is unchanged (so zoo cards stay equal)."""
    task = make_task("recall", min_pairs=1)
    assert task.seq_len == make_task("recall").seq_len
    assert make_task("recall").params() == make_task("recall", min_pairs=8).params()
    assert "min_pairs" not in make_task("recall").params() and task.params()["min_pairs"] == 1
    batch = task.sample("train", 400, 3)
    pad = task.tokenizer.pad_id
    present = (batch.tokens[:, 1:-3] != pad).sum(1) // 3
    assert present.min() == 1 and present.max() == 8
    for row in range(50):
        prompt, answer = task.describe(batch, row)
        words = [w for w in prompt.split() if w != "<bos>"]
        table = {words[i]: words[i + 2] for i in range(0, len(words) - 2, 3)}
        assert words[-2] == "?" and answer == table[words[-1]]
        toks = batch.tokens[row, 1:-3]
        first = int((toks != pad).float().argmax())
        assert (toks[:first] == pad).all() and (toks[first:] != pad).all() and first % 3 == 0
