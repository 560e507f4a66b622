"""The column layouts of public Hugging Face question-answering datasets, defined once for the converters
(data_pipelines/convert.py) and the benchmark readers (eval/benchmarks.py), which both import them.

A dataset is often published in more than one layout: ChartQA as lmms-lab/ChartQA (`question`, `answer`,
`type`) and as HuggingFaceM4/ChartQA (`query`, `label` list, `human_or_machine`). `detect_layout` picks a
file's layout from its column names; `Layout.row` turns a row of those columns into a `QARow`, the fields
every reader uses. No pyarrow or torch here: callers read the files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class QARow:
    """One question of a public dataset, whatever its layout."""
    question: Any                      # a str in a sound row (readers check)
    answers: list[str]                 # every accepted answer, the first one the reference
    image: Any                         # as stored: a `datasets` Image struct {bytes, path} or raw bytes
    id: str = ""                       # the dataset's question id; "" where it has none (ChartQA)
    subset: str = ""                   # ChartQA: "human" or "augmented"


@dataclass(frozen=True)
class Layout:
    name: str                          # the datasets published in it, e.g. "HuggingFaceM4/ChartQA"
    columns: tuple[str, ...]           # the columns it needs
    row: Callable[[dict[str, Any]], QARow]

    def describe(self) -> str:
        return f"{self.name} (columns {', '.join(self.columns)})"


def detect_layout(layouts: Sequence[Layout], column_names: Sequence[str], where: str) -> Layout:
    """The first layout whose columns `column_names` all has; else a ValueError naming `where`, its
    columns and every layout it could have been."""
    for layout in layouts:
        if set(layout.columns) <= set(column_names):
            return layout
    known = "; ".join(f"{layout.describe()}, missing {[c for c in layout.columns if c not in column_names]}"
                      for layout in layouts)
    raise ValueError(f"{where}: its columns {list(column_names)} match no known layout. Expected one of: {known}. "
                     "Pass a copy of one of those datasets, or write the file in one of these layouts")


def _answers(values: Any) -> list[str]:
    """Answers as strings; a missing list (a split without public answers) is empty."""
    return [str(v) for v in values or []]


# ---- ChartQA ------------------------------------------------------------------------------------------

# ChartQA's two question sets: written by people ("human") or generated from chart summaries ("augmented").
# lmms-lab names them in `type`; HuggingFaceM4 in `human_or_machine`, a class label (0 human, 1 machine).
CHARTQA_SUBSETS: dict[Any, str] = {"human_test": "human", "augmented_test": "augmented", 0: "human",
                                   1: "augmented", "human": "human", "machine": "augmented"}


def chartqa_subset(value: Any) -> str:
    return CHARTQA_SUBSETS.get(value, str(value))


CHARTQA_LAYOUTS = (
    Layout("lmms-lab/ChartQA", ("question", "answer", "type", "image"),
           lambda r: QARow(r["question"], _answers([r["answer"]] if r["answer"] is not None else []), r["image"],
                           subset=chartqa_subset(r["type"]))),
    Layout("HuggingFaceM4/ChartQA", ("query", "label", "human_or_machine", "image"),
           lambda r: QARow(r["query"], _answers(r["label"]), r["image"], subset=chartqa_subset(r["human_or_machine"]))),
)


# ---- DocVQA and InfographicVQA ------------------------------------------------------------------------

def _document_qa(id_column: str) -> Callable[[dict[str, Any]], QARow]:
    return lambda r: QARow(r["question"], _answers(r["answers"]), r["image"], id=str(r[id_column]))


# lmms-lab/DocVQA (its DocVQA and InfographicVQA configs) and HuggingFaceM4/DocumentVQA share the first
# layout (lmms-lab's ids are strings, HuggingFaceM4's integers); pixparse's copy names the id question_id.
DOCUMENT_QA_LAYOUTS = (
    Layout("lmms-lab/DocVQA, HuggingFaceM4/DocumentVQA", ("questionId", "question", "answers", "image"),
           _document_qa("questionId")),
    Layout("pixparse/docvqa-single-page-questions", ("question_id", "question", "answers", "image"),
           _document_qa("question_id")),
)

# TextVQA: lmms-lab/textvqa and facebook/textvqa both use question_id.
TEXTVQA_LAYOUTS = (
    Layout("lmms-lab/textvqa", ("question_id", "question", "answers", "image"), _document_qa("question_id")),
)
