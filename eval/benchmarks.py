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

import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image

from .metrics import METRICS, answer_letter, option_letters

log = logging.getLogger(__name__)


# ---- prompts ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromptTemplate:
    """question (+ lettered options) + post_prompt; the model's chat template wraps the result."""
    post_prompt: str = ""
    capitalize_question: bool = False
    list_options: bool = False

    def render(self, question: str, options: list[str]) -> str:
        text = question.capitalize() if self.capitalize_question else question
        if self.list_options:
            text += "\n" + "\n".join(f"{letter}. {option}" for letter, option in
                                     zip(option_letters(len(options)), options))
        return text + self.post_prompt


SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
PROMPT_TEMPLATES: dict[str, PromptTemplate] = {
    "question_only": PromptTemplate(),
    "lmms_eval_chartqa": PromptTemplate("\nAnswer the question with a single word."),
    "lmms_eval_short_answer": PromptTemplate(SHORT_ANSWER),
    "lmms_eval_textvqa": PromptTemplate(SHORT_ANSWER, capitalize_question=True),
    "lmms_eval_mcq": PromptTemplate("\nAnswer with the option's letter from the given choices directly.",
                                    list_options=True),
}


# ---- items -----------------------------------------------------------------------------------------------

@dataclass
class BenchmarkItem:
    """One question about one image, with everything needed to prompt for it and to score the answer."""
    id: str
    image: bytes                       # encoded image (PNG, JPEG, ...) as stored in the dataset
    question: str
    golds: list[str]
    metric: str                        # a key of eval.metrics.METRICS
    prompt_template: str               # a key of PROMPT_TEMPLATES
    options: list[str] = field(default_factory=list)  # multiple choice only; golds then hold the letter
    subset: str = ""                   # question type or split subset, for per-group reports

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATES[self.prompt_template].render(self.question, self.options)

    def load_image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.image)).convert("RGB")

    def score(self, prediction: str) -> float:
        kw = {"options": self.options} if self.metric == "multiple_choice_accuracy" else {}
        return METRICS[self.metric](prediction, self.golds, **kw)


SkipFn = Callable[..., None]  # (row id, reason[, rows it stands for])


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark comes from, how its rows become items, and how it is prompted and scored."""
    name: str
    read: Callable[["BenchmarkSpec", Path, SkipFn], Iterator[BenchmarkItem]]
    metric: str                        # "" when each item names its own (jsonl)
    prompt_template: str               # likewise
    max_new_tokens: int
    default_path: str = ""
    dataset_id: str = ""               # Hugging Face dataset repo, for parquet benchmarks
    config: str = ""
    split: str = ""
    include: str = ""                  # where the split's parquet files sit in the dataset repo
    variant: str = ""                  # AI2D: "mask" or "no_mask"

    def fetch_command(self, folder: Path) -> str:
        return (f"hf download {self.dataset_id} --repo-type dataset --include \"{self.include}\" "
                f"--local-dir {folder}")


@dataclass
class Benchmark:
    """A benchmark at a local path. Iterating yields its items; a row whose image cannot be decoded is
    logged by id, recorded in `skipped` as (row id, reason) and left out."""
    spec: BenchmarkSpec
    path: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_rows: int = 0

    def __iter__(self) -> Iterator[BenchmarkItem]:
        self.skipped.clear()
        self.skipped_rows = 0
        checked: bytes | None = None   # consecutive items often share one image (synthetic records)
        for item in self.spec.read(self.spec, self.path, self._skip):
            if item.image is not checked:
                problem = undecodable(item.image)
                if problem:
                    self._skip(item.id, f"image cannot be decoded ({problem})")
                    continue
                checked = item.image
            yield item

    def _skip(self, row_id: str, reason: str, count: int = 1) -> None:
        """`count`: the rows this one stands for (a shard cut short, for every sample it is missing)."""
        self.skipped.append((row_id, reason))
        self.skipped_rows += count
        log.warning("%s: skipped row %s: %s", self.spec.name, row_id, reason)

    def settings(self) -> dict[str, Any]:
        """What a score must be reported with: source, split, variant, prompt and max_new_tokens."""
        s = self.spec
        return {"benchmark": s.name, "dataset_id": s.dataset_id, "config": s.config, "split": s.split,
                "variant": s.variant, "path": str(self.path), "metric": s.metric or "per item",
                "prompt_template": s.prompt_template or "per item",
                "prompt": PROMPT_TEMPLATES[s.prompt_template].render("{question}", ["{option}"])
                if s.prompt_template else "per item",
                "max_new_tokens": s.max_new_tokens, "skipped_rows": self.skipped_rows}


def undecodable(data: bytes | None) -> str | None:
    """None when PIL decodes the image, else why not."""
    if not data:
        return "no image bytes"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception as e:  # PIL raises several unrelated types for bad bytes
        return f"{type(e).__name__}: {e}"
    return None


# ---- parquet benchmarks ----------------------------------------------------------------------------------

def parquet_files(spec: BenchmarkSpec, folder: Path) -> list[Path]:
    """The split's parquet files: where `hf download` puts them, or directly in the folder."""
    fetch = f"Fetch it with `{spec.fetch_command(folder)}`"
    if not folder.is_dir():
        raise FileNotFoundError(f"benchmark {spec.name!r}: folder {str(folder)!r} does not exist. {fetch} "
                                "(older huggingface_hub: `huggingface-cli download`, same arguments), or pass "
                                "the folder that holds its parquet files")
    patterns = (spec.include, f"{spec.split}-*.parquet", f"{spec.split}.parquet")
    files = sorted({p for pattern in patterns for p in folder.glob(pattern)})
    if not files:
        found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet"))[:10]
        raise FileNotFoundError(f"benchmark {spec.name!r}: folder {str(folder)!r} has no {spec.split!r} parquet "
                                f"files matching {patterns} (parquet files there: {found or 'none'}). {fetch}")
    return files


def _parquet_rows(spec: BenchmarkSpec, folder: Path, columns: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for path in parquet_files(spec, folder):
        parquet = pq.ParquetFile(path)
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing} (it has {parquet.schema_arrow.names}); expected "
                             f"{spec.dataset_id} {spec.config or ''} {spec.split} in the Hugging Face schema")
        for batch in parquet.iter_batches(batch_size=64, columns=list(columns)):
            yield from batch.to_pylist()


def _image_bytes(value: Any) -> bytes | None:
    """The encoded image of a `datasets` Image column ({bytes, path}) or a plain binary column."""
    if isinstance(value, dict):
        return value.get("bytes")
    return bytes(value) if isinstance(value, (bytes, bytearray)) else None


def _item(spec: BenchmarkSpec, row_id: str, row: dict[str, Any], golds: list[str], **kw) -> BenchmarkItem:
    return BenchmarkItem(id=row_id, image=_image_bytes(row["image"]), question=row["question"], golds=golds,
                         metric=spec.metric, prompt_template=spec.prompt_template, **kw)


CHARTQA_SUBSETS = {"human_test": "human", "augmented_test": "augmented"}


def read_chartqa(spec: BenchmarkSpec, folder: Path, skip: SkipFn) -> Iterator[BenchmarkItem]:
    """ChartQA rows carry no id: the row's position in the split names it."""
    for i, row in enumerate(_parquet_rows(spec, folder, ("type", "question", "answer", "image"))):
        yield _item(spec, f"chartqa-{spec.split}-{i:05d}", row, [row["answer"]],
                    subset=CHARTQA_SUBSETS.get(row["type"], row["type"]))


def read_answers_list(spec: BenchmarkSpec, folder: Path, skip: SkipFn, id_column: str) -> Iterator[BenchmarkItem]:
    """DocVQA, InfoVQA (questionId) and TextVQA (question_id): several accepted answers per question."""
    for row in _parquet_rows(spec, folder, (id_column, "question", "answers", "image")):
        row_id = str(row[id_column])
        if not row["answers"]:
            skip(row_id, f"no gold answers (is {spec.split!r} a split with public answers?)")
            continue
        yield _item(spec, row_id, row, list(row["answers"]))


def read_ai2d(spec: BenchmarkSpec, folder: Path, skip: SkipFn) -> Iterator[BenchmarkItem]:
    """AI2D rows carry no id; `answer` is the index of the right option, as a string."""
    for i, row in enumerate(_parquet_rows(spec, folder, ("question", "options", "answer", "image"))):
        row_id, options = f"{spec.name}-{spec.split}-{i:05d}", list(row["options"])
        try:
            gold = answer_letter(row["answer"], options)
        except ValueError as e:
            skip(row_id, str(e))
            continue
        yield _item(spec, row_id, row, [gold], options=options)


# ---- held-out synthetic shards ---------------------------------------------------------------------------

def record_qa(record) -> Iterator[tuple[int, str, str, str]]:
    """(index, question, answer, question type) of each exchange of a synthetic record: the type is the
    record's meta.qa_types entry, else its task. The one reading of a record as evaluation items."""
    types = record.meta.get("qa_types") or []
    for j, (question, answer) in enumerate(record.qa_pairs()):
        yield j, question, answer, types[j] if j < len(types) else (record.task or "all")


def read_synthetic(spec: BenchmarkSpec, folder: Path, skip: SkipFn) -> Iterator[BenchmarkItem]:
    """Every question/answer pair of every record; the subset is the record's meta.qa_types entry."""
    from molmini.records import BadRecords, find_shards, read_records

    # Every bad record reaches `skip` once; a shard cut short counts as all the samples it is missing.
    bad = BadRecords(on_skip=lambda entry: skip(entry.where.rpartition("/")[2], entry.message, entry.count))
    for record in read_records(find_shards(folder), bad):
        for j, question, answer, question_type in record_qa(record):
            yield BenchmarkItem(id=f"{record.key}-{j}", image=record.image, question=question, golds=[answer],
                                metric=spec.metric, prompt_template=spec.prompt_template, subset=question_type)


# ---- a user's own task: jsonl ----------------------------------------------------------------------------

JSONL_EXAMPLE = ('{"image": "images/0001.png", "question": "What is the total?", "answers": ["42"], '
                 '"metric": "relaxed_accuracy"}')


def read_jsonl(spec: BenchmarkSpec, path: Path, skip: SkipFn) -> Iterator[BenchmarkItem]:
    """One JSON object per line: "image" (a path relative to the file), "question", "answers" (a list),
    "metric" (a key of METRICS); optional "id", "options" (multiple choice, with answers holding the
    letter or index), "subset" and "prompt_template" (default: question_only, or lmms_eval_mcq with
    options). A malformed line raises, naming the line; an unreadable image skips its row."""
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                row = _jsonl_row(line, f"{path}:{number}")
                row_id = str(row.get("id", f"{path.stem}-{number}"))
                image_path = path.parent / row["image"]
                try:
                    image = image_path.read_bytes()
                except OSError as e:
                    skip(row_id, f"image {str(image_path)!r} cannot be read ({e.strerror})")
                    continue
                yield BenchmarkItem(id=row_id, image=image, question=row["question"], golds=row["answers"],
                                    metric=row["metric"], prompt_template=row["prompt_template"],
                                    options=row["options"], subset=str(row.get("subset", "")))


def _jsonl_row(line: str, where: str) -> dict[str, Any]:
    """The parsed, checked line, with answers as strings, options and prompt_template filled in."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e}); each line is one object such as {JSONL_EXAMPLE}") from e
    missing = [k for k in ("image", "question", "answers", "metric") if k not in row] if isinstance(row, dict) else []
    if not isinstance(row, dict) or missing:
        raise ValueError(f"{where}: missing {missing or 'an object'}; each line is one object such as {JSONL_EXAMPLE}")
    if not isinstance(row["answers"], list) or not row["answers"]:
        raise ValueError(f"{where}: 'answers' must be a non-empty list of strings, got {row['answers']!r}")
    if row["metric"] not in METRICS:
        raise ValueError(f"{where}: metric {row['metric']!r} is not one of {sorted(METRICS)}")
    options = [str(o) for o in row.get("options") or []]
    answers = [str(a) for a in row["answers"]]
    if row["metric"] == "multiple_choice_accuracy":
        if not options:
            raise ValueError(f"{where}: metric multiple_choice_accuracy needs an 'options' list")
        answers = [answer_letter(a, options) for a in answers]
    if row["metric"] == "vqa_accuracy" and len(answers) < 4:
        log.warning("%s: vqa_accuracy with %d answers can never reach 1 (it needs 3 matches among the "
                    "answers left after removing one); consider exact_match", where, len(answers))
    template = row.get("prompt_template") or ("lmms_eval_mcq" if options else "question_only")
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"{where}: prompt_template {template!r} is not one of {sorted(PROMPT_TEMPLATES)}")
    return {**row, "answers": answers, "options": options, "prompt_template": template}


def write_jsonl(items: list[BenchmarkItem], path: str | Path) -> Path:
    """Write items in the jsonl format (images beside it, in `<stem>_images/`), e.g. to keep a small
    subset of a large benchmark; `load_benchmark("jsonl", path)` reads them back."""
    path = Path(path)
    image_dir = path.parent / f"{path.stem}_images"
    image_dir.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for i, item in enumerate(items):
            with Image.open(io.BytesIO(item.image)) as img:
                extension = (img.format or "bin").lower()
            image_path = image_dir / f"{i:06d}_{re.sub(r'[^A-Za-z0-9_-]', '_', item.id)}.{extension}"
            image_path.write_bytes(item.image)
            row = {"id": item.id, "image": str(image_path.relative_to(path.parent)), "question": item.question,
                   "answers": item.golds, "metric": item.metric, "prompt_template": item.prompt_template}
            row.update({k: v for k, v in (("options", item.options), ("subset", item.subset)) if v})
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# ---- registry --------------------------------------------------------------------------------------------

def _answers_list(id_column: str):
    return lambda spec, folder, skip: read_answers_list(spec, folder, skip, id_column)


BENCHMARKS: dict[str, BenchmarkSpec] = {s.name: s for s in [
    BenchmarkSpec("chartqa", read_chartqa, metric="relaxed_accuracy", prompt_template="lmms_eval_chartqa",
                  max_new_tokens=16, default_path="benchmarks/chartqa", dataset_id="lmms-lab/ChartQA",
                  split="test", include="data/test-*.parquet"),
    BenchmarkSpec("docvqa", _answers_list("questionId"), metric="anls", prompt_template="lmms_eval_short_answer",
                  max_new_tokens=128, default_path="benchmarks/docvqa", dataset_id="lmms-lab/DocVQA",
                  config="DocVQA", split="validation", include="DocVQA/validation-*.parquet"),
    BenchmarkSpec("infovqa", _answers_list("questionId"), metric="anls", prompt_template="lmms_eval_short_answer",
                  max_new_tokens=32, default_path="benchmarks/infovqa", dataset_id="lmms-lab/DocVQA",
                  config="InfographicVQA", split="validation", include="InfographicVQA/validation-*.parquet"),
    BenchmarkSpec("textvqa", _answers_list("question_id"), metric="vqa_accuracy", prompt_template="lmms_eval_textvqa",
                  max_new_tokens=16, default_path="benchmarks/textvqa", dataset_id="lmms-lab/textvqa",
                  split="validation", include="data/validation-*.parquet"),
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


def load_benchmark(name: str, path: str | Path | None = None) -> Benchmark:
    """The benchmark `name` at `path` (default: its folder under benchmarks/); a missing or empty
    folder raises here, naming the folder and the command that fetches it."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    spec = BENCHMARKS[name]
    if path is None and not spec.default_path:
        raise ValueError(f"benchmark {name!r} needs a path (a .jsonl file with lines such as {JSONL_EXAMPLE})")
    path = Path(path if path is not None else spec.default_path)
    if spec.dataset_id:
        parquet_files(spec, path)
    elif spec.name == "synthetic":
        from molmini.records import find_shards
        find_shards(path)
    elif not path.is_file():
        raise FileNotFoundError(f"jsonl benchmark file {str(path)!r} does not exist; write one JSON object per "
                                f"line, such as {JSONL_EXAMPLE}")
    return Benchmark(spec, path)
