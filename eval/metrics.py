"""Answer metrics as the benchmarks define them (see shared reference: lmms-eval / VLMEvalKit)."""
from __future__ import annotations


def _to_float(text: str) -> float | None:
    """ChartQA's parse: a plain float, a trailing '%' divides by 100; '1,000' and '$12' do not parse."""
    text = text.strip()
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, target: str, max_relative_change: float = 0.05) -> float:
    """ChartQA: numbers within 5% of a non-zero target count as correct; otherwise case-insensitive
    exact match of the stripped strings."""
    p, t = _to_float(prediction), _to_float(target)
    if p is not None and t is not None and t != 0:
        return float(abs(p - t) / abs(t) <= max_relative_change)
    return float(prediction.strip().lower() == target.strip().lower())


def exact_match(prediction: str, target: str) -> float:
    """Case-insensitive match of the stripped strings."""
    return float(prediction.strip().lower() == target.strip().lower())


METRICS = {"relaxed_accuracy": relaxed_accuracy, "exact_match": exact_match}
