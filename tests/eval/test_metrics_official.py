"""Benchmark metrics against the edge cases of shared/reference/published_scores.md and the behaviour of
the official scripts (lmms-eval, VLMEvalKit, the EvalAI VQA answer processor)."""
from __future__ import annotations

import pytest

from eval.metrics import (METRICS, anls, answer_letter, extract_choice, multiple_choice_accuracy, normalise_vqa_answer,
                          relaxed_accuracy, vqa_accuracy)

# ---- relaxed accuracy (ChartQA) --------------------------------------------------------------------------


@pytest.mark.parametrize("pred,target,score", [
    ("12%", "0.12", 1.0),     # official: a trailing % divides by 100 ...
    ("12%", "12", 0.0),       # ... so "12%" is not 12
    ("1,000", "1000", 0.0),   # '1,000' and '$12' do not parse; string match fails
    ("$12", "12", 0.0),
    ("1,000", "1,000", 1.0),  # ... but identical strings still match
    ("0", "0", 1.0),          # zero target: string match only
    ("0.01", "0", 0.0),
    ("MARCH", "March", 1.0),  # case-insensitive
    ("1.05e2", "100", 1.0),   # float() parses it: 5% off keeps
])
def test_relaxed_accuracy_official_behaviour(pred, target, score):
    assert relaxed_accuracy(pred, target) == score


def test_relaxed_accuracy_percent_strip_variant():
    assert relaxed_accuracy("12%", "12", percent="strip") == 1.0
    assert relaxed_accuracy("12%", "0.12", percent="strip") == 0.0
    assert relaxed_accuracy("12.5%", "12%", percent="strip") == 1.0  # 12.5 vs 12: 4.2% off
    with pytest.raises(ValueError, match="percent"):
        relaxed_accuracy("1", "1", percent="half")


def test_relaxed_accuracy_tolerance_is_an_option():
    assert relaxed_accuracy("110", "100") == 0.0
    assert relaxed_accuracy("110", "100", max_relative_change=0.1) == 1.0

# ---- ANLS (DocVQA, InfoVQA) ------------------------------------------------------------------------------


def test_anls_exactly_half_keeps_its_score_and_the_strict_variant_drops_it():
    assert anls("abxy", ["abcd"]) == 0.5                      # NL = 2/4 = 0.5: kept (lmms-eval)
    assert anls("abxy", ["abcd"], inclusive=False) == 0.0     # the paper's NL < 0.5
    assert anls("abxyz", ["abcde"]) == 0.0                    # NL = 3/5 > 0.5


@pytest.mark.parametrize("pred,golds,score", [
    ("Johnson", ["Johnson"], 1.0),
    ("JOHNSON ", ["johnson"], 1.0),                 # case and outer spaces normalised away
    ("jonson", ["Johnson"], 1 - 1 / 7),             # one deletion over 7 characters
    ("advertisng", ["ADVERTISING"], 1 - 1 / 11),
    ("cat", ["dog", "cart"], 1 - 1 / 4),            # best over golds
    ("", ["abc"], 0.0),
    ("", [""], 1.0),                                # both empty: no distance
    ("anything", [], 0.0),
])
def test_anls_worked_examples(pred, golds, score):
    assert anls(pred, golds) == pytest.approx(score)


def test_anls_divides_by_the_raw_lengths_as_lmms_eval_does():
    # distance between "ab cd" and "ab cx" is 1; raw gold "ab  cd" has 6 characters, normalised 5
    assert anls("ab cx", ["ab  cd"]) == pytest.approx(1 - 1 / 6)
    assert anls("  Total  ", ["total"]) == 1.0  # whitespace differences alone cost nothing


def test_anls_threshold_is_an_option():
    assert anls("abcxyz", ["abcdef"]) == 0.5
    assert anls("abcxyz", ["abcdef"], threshold=0.4) == 0.0

# ---- VQA accuracy (TextVQA) ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw,normalised", [
    ("two", "2"), ("Ten", "10"), ("none", "0"),       # number words
    ("a dog", "dog"), ("The Beatles", "beatles"),      # articles
    ("dont", "don't"), ("isnt", "isn't"),              # contractions restored
    ("Yes.", "yes"), ("3.5", "3.5"),                   # a period goes unless a digit follows
    ("1,000", "1000"), ("what?", "what"),
    ("hello-world", "hello world"),                    # a mark inside a word becomes a space
    ("well - done", "well done"),                      # a mark touching a space is deleted
    ("the cat's toy", "cat 's toy"),                   # "'s" split off
    ("  Coca\tCola\n", "coca cola"),
])
def test_vqa_normalisation_matches_the_evalai_processor(raw, normalised):
    assert normalise_vqa_answer(raw) == normalised


@pytest.mark.parametrize("matching,score", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_over_ten_annotators(matching, score):
    golds = ["2"] * matching + ["other"] * (10 - matching)
    assert vqa_accuracy("two", golds) == pytest.approx(score)


def test_vqa_accuracy_with_fewer_annotators():
    assert vqa_accuracy("dog", ["dog"] * 4) == 1.0
    assert vqa_accuracy("dog", ["dog"] * 3) == pytest.approx(2 / 3)
    assert vqa_accuracy("dog", ["dog"]) == 0.0     # its only leave-one-out subset is empty
    assert vqa_accuracy("dog", []) == 0.0

# ---- multiple choice (AI2D) ------------------------------------------------------------------------------


OPTIONS = ["dog", "cat", "bird", "fish"]


@pytest.mark.parametrize("response,letter", [
    ("B", "B"), ("b", "B"), ("(B)", "B"), ("B.", "B"), ("B. cat", "B"), ("  B. cat", "B"),
    ("The answer is B", "B"), ("Answer: (B) cat", "B"),
    ("cat", "B"), ("It is a cat.", "B"),          # the option text alone
    ("A or B", None), ("a dog or a cat", None), ("horse", None), ("", None),
    ("E", None),                                   # not one of four options
])
def test_extract_choice(response, letter):
    assert extract_choice(response, OPTIONS) == letter


def test_multiple_choice_accuracy_takes_an_index_or_a_letter():
    assert multiple_choice_accuracy("B", "1", OPTIONS) == 1.0      # AI2D stores the index as a string
    assert multiple_choice_accuracy("B", 1, OPTIONS) == 1.0
    assert multiple_choice_accuracy("(b)", "B", OPTIONS) == 1.0
    assert multiple_choice_accuracy("C", "1", OPTIONS) == 0.0
    assert answer_letter("3", OPTIONS) == "D"
    with pytest.raises(ValueError, match="neither an option index"):
        answer_letter("4", OPTIONS)

# ---- registry --------------------------------------------------------------------------------------------


def test_registry_has_one_signature_and_takes_the_best_gold():
    assert set(METRICS) == {"relaxed_accuracy", "exact_match", "anls", "vqa_accuracy", "multiple_choice_accuracy"}
    assert METRICS["relaxed_accuracy"]("52", ["10", "50"]) == 1.0
    assert METRICS["relaxed_accuracy"]("12%", ["12"], percent="strip") == 1.0
    assert METRICS["exact_match"]("Red", ["blue", "red"]) == 1.0
    assert METRICS["exact_match"]("Red", []) == 0.0
    assert METRICS["anls"]("abxy", ["abcd"], inclusive=False) == 0.0
    assert METRICS["vqa_accuracy"]("2", ["two"] * 10) == 1.0
    assert METRICS["multiple_choice_accuracy"]("B", ["1"], options=OPTIONS) == 1.0
