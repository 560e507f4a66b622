"""Reports from results folders (`python -m eval run`) and published numbers.

    report.json                     every row (model, kind, parameters, training cost, score per benchmark)
                                    and every benchmark's settings
    report.md                       rows = models, baselines and published points; columns = benchmarks;
                                    then each benchmark's prompt template, max_new_tokens and item count;
                                    with `subsets`, one more table per benchmark: a column per subset
                                    (ChartQA human/augmented, synthetic charts per question type)
    scores_vs_parameters.png        one panel per benchmark: score against parameter count (log x),
                                    molmini / baselines / published marked apart, the Pareto front drawn,
                                    parameter-free baselines (majority answer) as horizontal lines
    scores_vs_training_cost.png     score against training device-hours, only when a run recorded its cost
    report.html                     one page that opens from disk: scores, per-type bars beside the majority
                                    answer, confusion tables, a filterable gallery of predictions
                                    (eval/report_html.py), with its full images in report_images/

Scores are percentages. Published numbers (eval/published_scores.csv, transcribed from the shared
published_scores.md) appear only in the columns of benchmarks that were run, and were measured with their
authors' prompts, which move scores by several points.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .report_html import format_parameters, write_html_report
from .runner import read_results

PUBLISHED_SCORES = Path(__file__).with_name("published_scores.csv")
KIND_STYLE = {"molmini": ("o", "tab:blue", "molmini"), "baseline": ("s", "tab:orange", "baseline (run here)"),
              "published": ("^", "tab:gray", "published")}


@dataclass
class ReportRow:
    name: str
    kind: str                                    # molmini, baseline or published
    num_parameters: int | None                   # None when not published
    scores: dict[str, float] = field(default_factory=dict)   # benchmark -> percent
    subset_scores: dict[str, dict[str, float]] = field(default_factory=dict)  # benchmark -> subset -> percent
    training_hours: float | None = None          # device-hours (GPU-hours for published points)
    training_device: str = ""
    source: str = ""                             # results folder, or the paper
    cache_key: str = ""                          # the model's key in results.json (none for published points)


def rows_from_results(results_dirs: Sequence[str | Path]) -> tuple[list[ReportRow], dict[str, dict[str, Any]]]:
    """One row per model (by cache key) across all folders, and each benchmark's settings; a later
    folder's result for the same model and benchmark wins."""
    rows: dict[str, ReportRow] = {}
    settings: dict[str, dict[str, Any]] = {}
    for folder in results_dirs:
        entries = read_results(folder)
        if not entries:
            raise FileNotFoundError(f"{folder} holds no results.json with results; write one with "
                                    f"`python -m eval run ... --out {folder}`")
        for entry in entries:
            model, benchmark = entry["model"], entry["benchmark"]
            cost = model.get("training_cost") or {}
            row = rows.setdefault(model["cache_key"], ReportRow(
                name=model["name"], kind=model["kind"], num_parameters=model["num_parameters"],
                training_hours=cost.get("device_hours"), training_device=cost.get("device", ""), source=str(folder),
                cache_key=model["cache_key"]))
            row.scores[benchmark] = 100 * entry["score"]
            per_subset = entry.get("per_subset", {})
            row.subset_scores[benchmark] = {name: 100 * s["score"] for name, s in per_subset.items()}
            settings[benchmark] = {**entry["settings"], "n": entry["n"], "limit": entry["limit"],
                                   "subset_n": {name: s["n"] for name, s in per_subset.items()}}
    _disambiguate(list(rows.values()))
    return list(rows.values()), settings


def _disambiguate(rows: list[ReportRow]) -> None:
    """Two checkpoints whose folders share a name get their results folder appended."""
    names = [r.name for r in rows]
    for row in rows:
        if names.count(row.name) > 1:
            row.name = f"{row.name} ({row.source})"


def published_rows(csv_path: str | Path, benchmarks: Sequence[str]) -> list[ReportRow]:
    """Published points for the given benchmarks, from a CSV with columns model, parameters, benchmark,
    score (percent), source, training_gpu_hours (parameters and hours may be empty)."""
    rows: dict[str, ReportRow] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for line in csv.DictReader(f):
            if line["benchmark"] not in benchmarks:
                continue
            row = rows.setdefault(line["model"], ReportRow(
                name=line["model"], kind="published",
                num_parameters=int(line["parameters"]) if line["parameters"] else None,
                training_hours=float(line["training_gpu_hours"]) if line.get("training_gpu_hours") else None,
                training_device="GPU" if line.get("training_gpu_hours") else "", source=line["source"]))
            row.scores[line["benchmark"]] = float(line["score"])
    return list(rows.values())


# ---- writing ---------------------------------------------------------------------------------------------

def markdown_table(rows: list[ReportRow], benchmarks: list[str], settings: dict[str, dict[str, Any]]) -> str:
    lines = ["| model | kind | parameters | " + " | ".join(benchmarks) + " |",
             "|---|---|---|" + "---|" * len(benchmarks)]
    for row in rows:
        cells = [f"{row.scores[b]:.1f}" if b in row.scores else "—" for b in benchmarks]
        lines.append(f"| {row.name} | {row.kind} | {format_parameters(row.num_parameters)} | " + " | ".join(cells) + " |")
    lines += ["", "Settings of the runs here (published points used their authors' own):", ""]
    for b in benchmarks:
        s = settings[b]
        limit = f", first {s['limit']} only" if s.get("limit") else ""
        lines.append(f"- {b}: {s['n']} items{limit}, metric {s['metric']}, max_new_tokens {s['max_new_tokens']}, "
                     f"prompt template {s['prompt_template']} = {json.dumps(s['prompt'])}")
    return "\n".join(lines) + "\n"


def markdown_subset_tables(rows: list[ReportRow], benchmarks: list[str], settings: dict[str, dict[str, Any]]) -> str:
    """Per benchmark: the models run here against one column per subset (headed with its item count),
    beside the overall score. Published rows carry no subsets and are left out."""
    parts = []
    for b in benchmarks:
        measured = [r for r in rows if r.subset_scores.get(b)]
        subsets = sorted({name for r in measured for name in r.subset_scores[b]})
        if not subsets:
            continue
        counts = settings[b].get("subset_n", {})
        headers = [f"{name} ({counts[name]})" if name in counts else name for name in subsets]
        lines = [f"### {b} by subset", "", f"| model | kind | parameters | {b} | " + " | ".join(headers) + " |",
                 "|---|---|---|---|" + "---|" * len(subsets)]
        for row in measured:
            cells = [f"{row.subset_scores[b][s]:.1f}" if s in row.subset_scores[b] else "—" for s in subsets]
            lines.append(f"| {row.name} | {row.kind} | {format_parameters(row.num_parameters)} | "
                         f"{row.scores[b]:.1f} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats with fewer (or as many) parameters: best score so far, by size."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _panels(benchmarks: list[str]):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(benchmarks), figsize=(5.5 * len(benchmarks), 4.2), squeeze=False)
    return plt, fig, axes[0]


def plot_scores(rows: list[ReportRow], benchmarks: list[str], path: Path, x_of, x_label: str, title: str,
                front: bool) -> None:
    """One panel per benchmark with log x; rows without an x value but with zero parameters (majority)
    become horizontal dashed lines."""
    plt, fig, axes = _panels(benchmarks)
    for ax, benchmark in zip(axes, benchmarks):
        points = []
        for row in rows:
            if benchmark not in row.scores:
                continue
            x, y = x_of(row), row.scores[benchmark]
            marker, colour, _ = KIND_STYLE.get(row.kind, KIND_STYLE["baseline"])
            if x:
                ax.scatter([x], [y], marker=marker, color=colour, s=45, zorder=4 if row.kind == "molmini" else 3)
                ax.annotate(row.name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
                points.append((x, y))
            elif row.num_parameters == 0:
                ax.axhline(y, linestyle="--", color=colour, linewidth=1)
                ax.annotate(row.name, (0.01, y), xycoords=("axes fraction", "data"), fontsize=7,
                            xytext=(0, 3), textcoords="offset points")
        if front and points:
            xs, ys = zip(*pareto_front(points))
            ax.step(xs, ys, where="post", color="black", linewidth=1, alpha=0.6, zorder=2)
        ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{benchmark} score (%)")
        ax.set_title(benchmark)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker=m, color=c, linestyle="", label=label) for m, c, label in KIND_STYLE.values()]
    if front:
        handles.append(plt.Line2D([], [], color="black", alpha=0.6, label="Pareto front"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results_dirs: Sequence[str | Path], out_dir: str | Path,
                 published_csv: str | Path | None = PUBLISHED_SCORES, subsets: bool = False) -> list[Path]:
    """report.json, report.md (with a per-subset table per benchmark when `subsets`), report.html and the
    plots in `out_dir`; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, settings = rows_from_results(results_dirs)
    benchmarks = sorted(settings)
    if published_csv:
        rows += published_rows(published_csv, benchmarks)
    order = {"molmini": 0, "baseline": 1, "published": 2}
    rows.sort(key=lambda r: (order.get(r.kind, 1), r.num_parameters or 0, r.name))

    written = [out_dir / "report.json", out_dir / "report.md", out_dir / "scores_vs_parameters.png",
               out_dir / "report.html"]
    written[0].write_text(json.dumps({"benchmarks": benchmarks, "rows": [asdict(r) for r in rows],
                                      "settings": settings}, indent=2))
    markdown = markdown_table(rows, benchmarks, settings)
    if subsets:
        markdown += "\n" + markdown_subset_tables(rows, benchmarks, settings)
    written[1].write_text(markdown)
    plot_scores(rows, benchmarks, written[2], lambda r: r.num_parameters, "parameters (log scale)",
                "Score against model size", front=True)
    write_html_report(written[3], rows, benchmarks, results_dirs)
    if any(r.training_hours for r in rows if r.kind != "published"):
        written.append(out_dir / "scores_vs_training_cost.png")
        plot_scores([r for r in rows if r.training_hours], benchmarks, written[-1], lambda r: r.training_hours,
                    "training device-hours (log scale; published: GPU-hours)", "Score against training cost",
                    front=False)
    return written
