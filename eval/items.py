"""What a benchmark is: its items (one question, its images, its golds and how to score them), its spec
(where it comes from, how its rows are read, prompted and scored) and the benchmark at a local path,
which yields the items and counts the rows it leaves out. The readers of each source are in
eval/readers.py, the registry of named benchmarks in eval/benchmarks.py."""
from __future__ import annotations

import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image

from molmini.data.images import decode_image
from molmini.data.layouts import Layout, detect_layout

from .metrics import METRICS, option_letters

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
    """One question about its images, with everything needed to prompt for it and to score the answer."""
    id: str
    images: tuple[bytes | None, ...]   # encoded (PNG, JPEG, ...) as stored; () for a text-only question
    question: str
    golds: list[str]
    metric: str                        # a key of eval.metrics.METRICS
    prompt_template: str               # a key of PROMPT_TEMPLATES
    options: list[str] = field(default_factory=list)  # multiple choice only; golds then hold the letter
    subset: str = ""                   # question type or split subset, for per-group reports

    @property
    def image(self) -> bytes | None:
        """The first image (public benchmarks have exactly one)."""
        return self.images[0] if self.images else None

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATES[self.prompt_template].render(self.question, self.options)

    def load_image(self) -> Image.Image:
        """The first image, decoded as training and serving decode one (EXIF orientation applied, RGB)."""
        return decode_image(self.image)

    def load_images(self) -> Image.Image | list[Image.Image] | None:
        """What a model's `generate` takes for this question: its image, its images, or None."""
        images = [decode_image(data) for data in self.images]
        return images[0] if len(images) == 1 else (images or None)

    def score(self, prediction: str) -> float:
        kw = {"options": self.options} if self.metric == "multiple_choice_accuracy" else {}
        return METRICS[self.metric](prediction, self.golds, **kw)


SkipFn = Callable[..., None]  # (row id, message[, rows it stands for][, reason=code, records=n])


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
    layouts: tuple[Layout, ...] = ()   # the column layouts it is read in (molmini/data/layouts.py)
    one_image: bool = True             # synthetic shards: skip records with other than one image (the held-out
                                       # report keeps them: molmini's models take any number)

    def fetch_command(self, folder: Path) -> str:
        return (f"hf download {self.dataset_id} --repo-type dataset --include \"{self.include}\" "
                f"--local-dir {folder}")

    def file_patterns(self) -> tuple[str, ...]:
        """Where the split's parquet files may sit in a benchmark folder: as `hf download` leaves this
        dataset (`include`) or another copy in the common `data/` layout, or directly in the folder."""
        return tuple(dict.fromkeys((self.include, f"data/{self.split}-*.parquet", f"{self.split}-*.parquet",
                                    f"{self.split}.parquet")))


@dataclass
class Benchmark:
    """A benchmark at a local path. Iterating yields its items; a row whose image cannot be decoded is
    logged by id, recorded in `skipped` as (row id, message) and left out. `skipped_rows` counts the
    questions left out; `skipped_by_reason` the records (a row, or a shard record with all its
    questions) by reason code, each once."""
    spec: BenchmarkSpec
    path: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_rows: int = 0
    skipped_by_reason: Counter = field(default_factory=Counter)
    prompt_template: str = ""          # asks every item with this template instead of its own (a key of
                                       # PROMPT_TEMPLATES), e.g. question_only: as synthetic data is trained

    def __post_init__(self) -> None:
        if self.prompt_template and self.prompt_template not in PROMPT_TEMPLATES:
            raise ValueError(f"prompt template {self.prompt_template!r} is not one of {sorted(PROMPT_TEMPLATES)}")

    def __iter__(self) -> Iterator[BenchmarkItem]:
        self.skipped.clear()
        self.skipped_rows = 0
        self.skipped_by_reason.clear()
        checked, problem = None, None  # consecutive items often share their images (synthetic records)
        for item in self.spec.read(self.spec, self.path, self._skip):
            first = item.images is not checked
            if first:
                checked, problem = item.images, next(filter(None, map(undecodable, item.images)), None)
            if problem:
                self._skip(item.id, f"image cannot be decoded ({problem})", reason="undecodable_image",
                           records=int(first))
                continue
            if self.prompt_template:
                item.prompt_template = self.prompt_template
            yield item

    def _skip(self, row_id: str, message: str, rows: int = 1, *, reason: str = "invalid_row",
              records: int | None = None) -> None:
        """`rows`: the questions this one stands for (a shard cut short, for every sample it is missing);
        `records`: the records they come from, counted under `reason` (default: one per row)."""
        self.skipped.append((row_id, message))
        self.skipped_rows += rows
        self.skipped_by_reason[reason] += rows if records is None else records
        log.warning("%s: skipped row %s: %s", self.spec.name, row_id, message)

    def settings(self) -> dict[str, Any]:
        """What a score must be reported with: source (and the layout its files are in), split, variant,
        prompt and max_new_tokens."""
        s, template = self.spec, self.prompt_template or self.spec.prompt_template
        return {"benchmark": s.name, "dataset_id": s.dataset_id, "config": s.config, "split": s.split,
                "variant": s.variant, "layout": ", ".join(self.layouts()), "path": str(self.path),
                "metric": s.metric or "per item",
                "prompt_template": template or "per item",
                "prompt": PROMPT_TEMPLATES[template].render("{question}", ["{option}"]) if template else "per item",
                "max_new_tokens": s.max_new_tokens, "skipped_rows": self.skipped_rows}

    def layouts(self) -> list[str]:
        """The names of the layouts this benchmark's parquet files are in (read from their schemas)."""
        if not self.spec.layouts:
            return []
        import pyarrow.parquet as pq
        return sorted({detect_layout(self.spec.layouts, pq.read_schema(path).names, str(path)).name
                       for path in parquet_files(self.spec, self.path)})


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



# ---- where a parquet benchmark's files are --------------------------------------------------------------

def parquet_files(spec: BenchmarkSpec, folder: Path) -> list[Path]:
    """The split's parquet files, at any of `spec.file_patterns()`."""
    fetch = f"Fetch it with `{spec.fetch_command(folder)}`"
    if len(spec.layouts) > 1:
        fetch += f" (copies from {'; '.join(layout.name for layout in spec.layouts)} are read too)"
    if not folder.is_dir():
        raise FileNotFoundError(f"benchmark {spec.name!r}: folder {str(folder)!r} does not exist. {fetch} "
                                "(older huggingface_hub: `huggingface-cli download`, same arguments), or pass "
                                "the folder that holds its parquet files")
    patterns = spec.file_patterns()
    files = sorted({p for pattern in patterns for p in folder.glob(pattern)})
    if not files:
        found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet"))[:10]
        raise FileNotFoundError(f"benchmark {spec.name!r}: folder {str(folder)!r} has no {spec.split!r} parquet "
                                f"files matching {patterns} (parquet files there: {found or 'none'}). {fetch}")
    return files


