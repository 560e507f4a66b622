"""Public benchmarks read from local copies of their Hugging Face parquet files, a user's own jsonl task,
and held-out synthetic shards, all as uniform `BenchmarkItem`s.

    name          dataset id (config)                 split       rows  default folder          metric
    chartqa       lmms-lab/ChartQA                    test        2500  benchmarks/chartqa      relaxed_accuracy
    docvqa        lmms-lab/DocVQA (DocVQA)            validation  5349  benchmarks/docvqa       anls
    infovqa       lmms-lab/DocVQA (InfographicVQA)    validation  2801  benchmarks/infovqa      anls
    textvqa       lmms-lab/textvqa                    validation  5000  benchmarks/textvqa      vqa_accuracy
    ai2d          lmms-lab/ai2d                       test        3088  benchmarks/ai2d         multiple choice
    ai2d_no_mask  Efficient-Large-Model/ai2d-no-mask  test        3088  benchmarks/ai2d_no_mask multiple choice
    synthetic     molmini webdataset shards           -           -     data/charts/test        relaxed_accuracy
    jsonl         a user's file (see `read_jsonl`)    -           -     (a path is required)    per line

Fetch one with `hf download lmms-lab/ChartQA --repo-type dataset --include "data/test-*.parquet"
--local-dir benchmarks/chartqa` (older huggingface_hub: `huggingface-cli download`, same arguments); a
missing folder's error prints the exact command. Parquet files are found where the download leaves them
(`data/`, or the config's folder for DocVQA/InfoVQA) or directly in the folder; image columns are the
`datasets` Image struct {bytes, path}.

ChartQA, DocVQA and InfoVQA are read in each of their common layouts (molmini/data/layouts.py), found
from each file's columns: ChartQA as lmms-lab/ChartQA or HuggingFaceM4/ChartQA (`query`, `label`,
`human_or_machine`, whose human/machine questions are the human/augmented subsets), DocVQA and InfoVQA
as lmms-lab/DocVQA or HuggingFaceM4/DocumentVQA (`questionId`) or pixparse's copy (`question_id`). The
layout read is reported in `Benchmark.settings()`.

AI2D comes in two variants, which move scores by several points (InternVL reports both): `ai2d` is the
lmms-lab copy, whose diagram labels are covered by opaque lettered boxes (mask); `ai2d_no_mask` is the
copy lmms-eval's `ai2d_no_mask` task reads, with transparent boxes (the variant the Molmo paper reports).

Prompt templates and max_new_tokens follow lmms-eval's task yamls (default model kwargs): ChartQA
"\\nAnswer the question with a single word." and 16 tokens; DocVQA and InfoVQA "\\nAnswer the question
using a single word or phrase." and 128 / 32 tokens; TextVQA the same sentence after the question
capitalised (`str.capitalize`, as lmms-eval does), with 16 tokens (lmms-eval sets no limit there);
AI2D the options as "A. text" lines and "\\nAnswer with the option's letter from the given choices
directly.", 16 tokens. Report them beside every score (`Benchmark.settings`).
"""
from __future__ import annotations

from pathlib import Path

from molmini.data.layouts import CHARTQA_LAYOUTS, DOCUMENT_QA_LAYOUTS, TEXTVQA_LAYOUTS

from .items import Benchmark, BenchmarkItem, BenchmarkSpec, parquet_files, undecodable
from .readers import JSONL_EXAMPLE, read_ai2d, read_answers_list, read_chartqa, read_jsonl, read_synthetic, write_jsonl

__all__ = ["BENCHMARKS", "load_benchmark", "undecodable", "write_jsonl"]


# ---- registry --------------------------------------------------------------------------------------------

BENCHMARKS: dict[str, BenchmarkSpec] = {s.name: s for s in [
    BenchmarkSpec("chartqa", read_chartqa, metric="relaxed_accuracy", prompt_template="lmms_eval_chartqa",
                  max_new_tokens=16, default_path="benchmarks/chartqa", dataset_id="lmms-lab/ChartQA",
                  split="test", include="data/test-*.parquet", layouts=CHARTQA_LAYOUTS),
    BenchmarkSpec("docvqa", read_answers_list, metric="anls", prompt_template="lmms_eval_short_answer",
                  max_new_tokens=128, default_path="benchmarks/docvqa", dataset_id="lmms-lab/DocVQA",
                  config="DocVQA", split="validation", include="DocVQA/validation-*.parquet",
                  layouts=DOCUMENT_QA_LAYOUTS),
    BenchmarkSpec("infovqa", read_answers_list, metric="anls", prompt_template="lmms_eval_short_answer",
                  max_new_tokens=32, default_path="benchmarks/infovqa", dataset_id="lmms-lab/DocVQA",
                  config="InfographicVQA", split="validation", include="InfographicVQA/validation-*.parquet",
                  layouts=DOCUMENT_QA_LAYOUTS),
    BenchmarkSpec("textvqa", read_answers_list, metric="vqa_accuracy", prompt_template="lmms_eval_textvqa",
                  max_new_tokens=16, default_path="benchmarks/textvqa", dataset_id="lmms-lab/textvqa",
                  split="validation", include="data/validation-*.parquet", layouts=TEXTVQA_LAYOUTS),
    BenchmarkSpec("ai2d", read_ai2d, metric="multiple_choice_accuracy", prompt_template="lmms_eval_mcq",
                  max_new_tokens=16, default_path="benchmarks/ai2d", dataset_id="lmms-lab/ai2d",
                  split="test", include="data/test-*.parquet", variant="mask"),
    BenchmarkSpec("ai2d_no_mask", read_ai2d, metric="multiple_choice_accuracy", prompt_template="lmms_eval_mcq",
                  max_new_tokens=16, default_path="benchmarks/ai2d_no_mask",
                  dataset_id="Efficient-Large-Model/ai2d-no-mask", split="test", include="test.parquet",
                  variant="no_mask"),
    BenchmarkSpec("synthetic", read_synthetic, metric="relaxed_accuracy", prompt_template="question_only",
                  max_new_tokens=8, default_path="data/charts/test"),
    # metric and prompt template come from each line
    BenchmarkSpec("jsonl", read_jsonl, metric="", prompt_template="", max_new_tokens=32),
]}


def load_benchmark(name: str, path: str | Path | None = None, prompt_template: str = "") -> Benchmark:
    """The benchmark `name` at `path` (default: its folder under benchmarks/), its items asked with
    `prompt_template` when one is given; a missing or empty folder raises here, naming the folder and the
    command that fetches it."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    spec = BENCHMARKS[name]
    if path is None and not spec.default_path:
        raise ValueError(f"benchmark {name!r} needs a path (a .jsonl file with lines such as {JSONL_EXAMPLE})")
    path = Path(path if path is not None else spec.default_path)
    if spec.dataset_id:
        parquet_files(spec, path)
    elif spec.name == "synthetic":
        from molmini.data.reader import find_shards
        find_shards(path)
    elif not path.is_file():
        raise FileNotFoundError(f"jsonl benchmark file {str(path)!r} does not exist; write one JSON object per "
                                f"line, such as {JSONL_EXAMPLE}")
    return Benchmark(spec, path, prompt_template=prompt_template)
