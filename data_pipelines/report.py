"""What the offline jobs report about a run: a conversion's counts of rows read, written and skipped, and
curation's per-filter drops with example keys (written beside the kept shards as JSON and markdown)."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("data_pipelines.convert")  # conversions log their skipped rows under convert

REPORT_JSON = "curation_report.json"
REPORT_MARKDOWN = "curation_report.md"
MAX_EXAMPLES = 10  # skipped row names kept per reason


@dataclass
class ConversionStats:
    """What a conversion read, wrote (of which text-only and multi-image records) and skipped (by reason,
    with example row names)."""
    rows: int = 0
    records: int = 0
    text_only: int = 0
    multi_image: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, row: str, error: Exception, rows: int = 1) -> None:
        """Count `rows` source rows (several, for a merged group) as skipped for `error.reason` (a
        sources.rows.BadRow)."""
        self.skipped[error.reason] += rows
        names = self.examples.setdefault(error.reason, [])
        if len(names) < MAX_EXAMPLES:
            names.append(row)
        log.warning("skipped %s: %s", row, error)

    def describe(self) -> str:
        """One line for a user: what was read and why rows were skipped, with the fix for the usual cause."""
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        hint = ""
        if self.skipped.get("missing_image_file"):
            hint = "; check --images (the folder that the rows' relative image paths start from)"
        return f"{self.rows} rows read, {self.records} records made; skipped rows: {skipped}{hint}"

    def check_skipped(self, max_fraction: float) -> None:
        """Raise TooManySkippedError when more than `max_fraction` of the rows read were skipped: a wrong
        --images folder or the wrong converter for the file, far more often than a dataset that bad."""
        skipped = sum(self.skipped.values())
        if self.rows and skipped / self.rows > max_fraction:
            raise TooManySkippedError(
                f"skipped {skipped} of {self.rows} rows ({100 * skipped / self.rows:.0f}%, more than the "
                f"{100 * max_fraction:.0f}% that --max-skipped-fraction allows): {self.describe()}. Nothing was "
                "written; fix the input, or pass --max-skipped-fraction 1 to keep the rows that were read")

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "records": self.records, "text_only": self.text_only,
                "multi_image": self.multi_image, "skipped": dict(sorted(self.skipped.items())),
                "skipped_examples": dict(sorted(self.examples.items()))}


class TooManySkippedError(ValueError):
    """A conversion that skipped more of its rows than the user allowed: its output replaces nothing."""


@dataclass
class FilterResult:
    name: str
    params: dict[str, Any]
    counts: Counter  # the filter's own extra numbers, updated as it runs
    dropped: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)


@dataclass
class CurationReport:
    """Records seen and kept, and per filter what it dropped, with example keys and why."""
    filters: list[FilterResult]
    seen: int = 0
    kept: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. unreadable input records, set by the caller

    def as_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "kept": self.kept, "dropped": self.seen - self.kept, **self.extra,
                "filters": [{"name": f.name, "params": f.params, "dropped": f.dropped, **dict(f.counts),
                             "examples": f.examples} for f in self.filters]}

    def to_markdown(self) -> str:
        lines = ["# Curation report", "", f"- records seen: {self.seen}", f"- kept: {self.kept}",
                 f"- dropped: {self.seen - self.kept}"]
        lines += [f"- {name.replace('_', ' ')}: {value}" for name, value in self.extra.items()]
        lines += ["", "| filter | params | dropped | other |", "|---|---|---:|---|"]
        for f in self.filters:
            params = ", ".join(f"{k}={v}" for k, v in f.params.items())
            other = ", ".join(f"{k}={v}" for k, v in sorted(f.counts.items()))
            lines.append(f"| {f.name} | {params} | {f.dropped} | {other} |")
        for f in self.filters:
            if f.examples:
                lines += ["", f"## {f.name}: examples", ""]
                lines += [f"- `{e['key']}`: {e['why']}" for e in f.examples]
        return "\n".join(lines) + "\n"


def write_report(report: CurationReport, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write the report as JSON and markdown into `folder`; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / REPORT_JSON, folder / REPORT_MARKDOWN
    json_path.write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(report.to_markdown(), encoding="utf-8")
    return json_path, md_path
