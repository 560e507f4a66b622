"""Metrics as ChartQA defines them (shared/reference/published_scores.md), and the held-out report."""
from __future__ import annotations

import pytest

from eval.heldout import _summary, format_table
from eval.metrics import exact_match, relaxed_accuracy


@pytest.mark.parametrize("pred,target,score", [
    ("52", "50", 1.0),        # 4% off: within 5%
    ("53", "50", 0.0),        # 6% off
    ("47.5", "50", 1.0),      # exactly 5% below keeps
    ("12%", "0.12", 1.0),     # a trailing % divides by 100
    ("1,000", "1000", 0.0),   # '1,000' does not parse, and the strings differ
    ("$12", "12", 0.0),
    ("0", "0", 1.0),          # zero target: string match
    ("0.0", "0", 0.0),
    ("Yes", "yes", 1.0),      # text: case-insensitive exact match
    ("yes ", "yes", 1.0),
    ("North", "South", 0.0),
])
def test_relaxed_accuracy_edge_cases(pred, target, score):
    assert relaxed_accuracy(pred, target) == score


def test_exact_match_is_strict_on_numbers():
    assert exact_match("52", "50") == 0.0 and exact_match("Red", "red") == 1.0


def test_table_shows_each_type_and_the_gain_over_the_majority_baseline():
    rows = [{"type": "count", "relaxed_accuracy": 1.0, "exact_match": 1.0, "anls": 1.0, "majority_baseline": 0.0},
            {"type": "count", "relaxed_accuracy": 1.0, "exact_match": 0.0, "anls": 0.5, "majority_baseline": 1.0}]
    results = {"benchmark": "b", "overall": _summary(rows), "per_type": {"count": _summary(rows)}}
    table = format_table(results)
    assert "count" in table and "+50.0" in table and "overall" in table and "0.750" in table


def test_heldout_rows_score_extractive_answers_with_anls():
    from eval.heldout import _row

    class Majority:
        def answer(self, qtype):
            return "x"
    row = _row({"item_id": "doc-7-2", "golds": ["INV-20391"], "prediction": "INV-20381", "subset": "identifier",
                "prompt": "What is the invoice number?"}, Majority())
    assert row["key"] == "doc-7" and row["index"] == 2 and row["exact_match"] == 0.0
    assert abs(row["anls"] - (1 - 1 / 9)) < 1e-9  # one character of nine wrong: ANLS keeps the partial credit
