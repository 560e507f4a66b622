"""`python -m eval report --subsets`: a per-subset table per benchmark, from a results folder written here
in the shape `python -m eval run` writes it."""
from __future__ import annotations

import json

from eval.__main__ import main


def entry(name: str, kind: str, parameters: int, benchmark: str, per_subset: dict[str, tuple[int, float]]) -> dict:
    n = sum(count for count, _ in per_subset.values())
    return {"model": {"name": name, "kind": kind, "num_parameters": parameters, "cache_key": f"key:{name}",
                      "training_cost": None},
            "benchmark": benchmark, "n": n, "limit": 0,
            "score": sum(count * score for count, score in per_subset.values()) / n,
            "per_subset": {s: {"n": count, "score": score} for s, (count, score) in per_subset.items()},
            "settings": {"benchmark": benchmark, "path": f"benchmarks/{benchmark}", "metric": "relaxed_accuracy",
                         "prompt_template": "short_answer", "prompt": "{question} Answer briefly.",
                         "max_new_tokens": 16}}


def write_results(folder) -> None:
    folder.mkdir()
    results = [entry("molmini-s", "molmini", 300_000_000, "chartqa", {"augmented": (3, 0.5), "human": (1, 0.25)}),
               entry("tiny_qwen2_vl", "baseline", 2_000_000_000, "chartqa", {"augmented": (3, 0.75), "human": (1, 0.0)}),
               entry("molmini-s", "molmini", 300_000_000, "synthetic", {"count": (2, 1.0), "colour": (2, 0.5)})]
    (folder / "results.json").write_text(json.dumps({"results": results}))


def test_subsets_flag_adds_a_table_per_benchmark_with_a_column_per_subset(tmp_path):
    write_results(tmp_path / "results")
    assert main(["report", str(tmp_path / "results"), "--out", str(tmp_path / "report"), "--subsets"]) == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    chartqa = markdown[markdown.index("### chartqa by subset"):markdown.index("### synthetic by subset")]
    assert chartqa.splitlines()[2:6] == [
        "| model | kind | parameters | chartqa | augmented (3) | human (1) |",
        "|---|---|---|---|---|---|",
        "| molmini-s | molmini | 300M | 43.8 | 50.0 | 25.0 |",
        "| tiny_qwen2_vl | baseline | 2B | 56.2 | 75.0 | 0.0 |"]
    assert "Molmo-7B-D" not in chartqa           # published rows have no subsets
    synthetic = markdown[markdown.index("### synthetic by subset"):].splitlines()
    assert synthetic[2] == "| model | kind | parameters | synthetic | colour (2) | count (2) |"
    assert synthetic[4:] == ["| molmini-s | molmini | 300M | 75.0 | 50.0 | 100.0 |"]
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["rows"]
    assert next(r for r in rows if r["name"] == "molmini-s")["subset_scores"]["synthetic"] == {"colour": 50.0,
                                                                                                "count": 100.0}


def test_without_the_flag_the_report_has_no_subset_tables(tmp_path):
    write_results(tmp_path / "results")
    assert main(["report", str(tmp_path / "results"), "--out", str(tmp_path / "report"), "--no-published"]) == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "by subset" not in markdown and "| molmini-s | molmini | 300M | 43.8 | 75.0 |" in markdown
