"""Model adapters: everything the runner evaluates answers `predict(items, max_new_tokens)` the same way.

    adapter                  what it wraps                                              kind
    MolminiAdapter           a molmini checkpoint (folder or hub id)                    molmini
    HFVisionLanguageAdapter  any transformers VLM through AutoModelForImageTextToText   baseline
                             and AutoProcessor (LLaVA, Qwen2-VL/2.5-VL, Idefics3/SmolVLM, PaliGemma,
                             Molmo2)
    TextOnlyAdapter          a molmini checkpoint shown a blank white image (never the real one)   baseline
    MajorityAnswerBaseline   the most common gold answer per question type, from a training      baseline
                             shard folder or from the benchmark's own golds

Each has `name`, `kind`, `num_parameters`, `cache_key` (what predictions are cached under: it changes
when the model does) and `generate(images, prompts, max_new_tokens) -> list[str]`, batched and greedy.
`build_adapter("llava:PATH")`-style specs come from the command line (`parse_model_spec`).
Published numbers for models that cannot run here are a table source of the report (eval/report.py).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image

from .items import BenchmarkItem
from .readers import record_qa


# A checkpoint folder's files that do not change its answers: the model card and the run's summaries, which
# are written after an evaluation (train.py evaluates, then writes README.md with the scores).
NOT_THE_MODEL = ("README.md", "train_summary.json", "cost.json", "molmini_training.json")


def fingerprint(name_or_path: str) -> str:
    """A short hash of a model's identity: for a checkpoint folder, the sha256 of each file's contents
    (weights, config, processor config, tokenizer, remote code; not the model card), so a checkpoint
    retrained or replaced in place is never served stale predictions, whatever its files' sizes and
    times; for anything else (a hub id), the name as given."""
    path = Path(name_or_path)
    if not path.is_dir():
        return hashlib.sha1(str(name_or_path).encode()).hexdigest()[:10]
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file() and p.name not in NOT_THE_MODEL):
        digest.update(f"{file.name}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()[:16]


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def answers_fingerprint(answers_by_type: dict[str, str], overall: str) -> str:
    """A short hash of a baseline's answers: they are all that its predictions depend on."""
    return hashlib.sha256(json.dumps([answers_by_type, overall], sort_keys=True).encode()).hexdigest()[:16]


def display_name(name_or_path: str) -> str:
    """A folder's name (its run folder's name for a training run's `checkpoint/`), or the hub id."""
    path = Path(name_or_path)
    if not path.is_dir():
        return str(name_or_path)
    path = path.resolve()
    return path.parent.name if path.name == "checkpoint" else path.name


class ModelAdapter:
    """The interface the runner drives. Subclasses set the attributes and implement `generate`."""
    name: str
    kind: str                          # "molmini" or "baseline"
    num_parameters: int
    cache_key: str

    def generate(self, images: Sequence[Image.Image], prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        raise NotImplementedError

    def predict(self, items: Sequence[BenchmarkItem], max_new_tokens: int) -> list[str]:
        return self.generate([item.load_images() for item in items], [item.prompt for item in items],
                             max_new_tokens)

    def for_benchmark(self, items: Iterable[BenchmarkItem]) -> "ModelAdapter":
        """The adapter to use on a benchmark with these items (a baseline fitted to them may differ)."""
        return self

    def describe(self) -> dict[str, Any]:
        model = getattr(self, "model", None)
        return {"name": self.name, "kind": self.kind, "num_parameters": self.num_parameters,
                "cache_key": self.cache_key, "training_cost": getattr(self, "training_cost", None),
                # the layout the model was asked in: its own chat template around the benchmark's prompt
                "prompt_layout": model.processor.chat.prompt_template() if model is not None else None}


# ---- molmini ---------------------------------------------------------------------------------------------

def sped_up(adapter: ModelAdapter, quantize: str = "none", compile: bool = False) -> None:
    """Apply --quantize/--compile (molmini/model/fast_inference.py) to the adapter's model unless they were
    applied already, count its parameters as trained, and give a sped-up model its own name and cache key:
    its answers may differ from the float model's."""
    from molmini.model.fast_inference import options_tag, parameter_count, speed_up
    if (quantize != "none" or compile) and not options_tag(adapter.model):
        speed_up(adapter.model, quantize, compile)
    adapter.num_parameters = parameter_count(adapter.model)
    tag = options_tag(adapter.model)
    if tag:
        adapter.name = f"{adapter.name} ({tag})"
        adapter.cache_key = f"{adapter.cache_key}:{tag}"


def read_training_cost(checkpoint: str | Path) -> dict[str, Any] | None:
    """wall_time_s, device and num_processes from the `train_summary.json` a training run writes beside
    (or into) its checkpoint folder; None when the run recorded no cost."""
    folder = Path(checkpoint)
    for summary in (folder / "train_summary.json", folder.parent / "train_summary.json"):
        if summary.is_file():
            data = json.loads(summary.read_text())
            if "wall_time_s" in data:
                processes = int(data.get("num_processes", 1))
                return {"wall_time_s": float(data["wall_time_s"]), "device": data.get("device", "?"),
                        "num_processes": processes,
                        "device_hours": float(data["wall_time_s"]) * processes / 3600.0}
    return None


class MolminiAdapter(ModelAdapter):
    """A molmini checkpoint, loaded from `name_or_path`, or `model` when it is loaded already (then
    `name_or_path` is the folder it came from: it names the model and keys the cache)."""
    kind = "molmini"

    def __init__(self, name_or_path: str, batch_size: int = 32, device: str = "cpu", model=None,
                 quantize: str = "none", compile: bool = False):
        from molmini.model.vlm import MolminiModel

        self.model = model if model is not None else MolminiModel.from_pretrained(name_or_path, device=device)
        self.batch_size = batch_size
        self.name = display_name(name_or_path)
        self.cache_key = f"molmini:{fingerprint(name_or_path)}"
        self.training_cost = read_training_cost(name_or_path)
        sped_up(self, quantize, compile)

    def generate(self, images, prompts, max_new_tokens):
        return self.model.generate(images=list(images), prompts=list(prompts), max_new_tokens=max_new_tokens,
                                   batch_size=self.batch_size, do_sample=False)


class TextOnlyAdapter(MolminiAdapter):
    """A molmini checkpoint that never sees the image: each image is replaced by a blank white one of the
    same size, so the answer can only come from the question (and the LM's priors)."""
    kind = "baseline"

    def __init__(self, name_or_path: str, batch_size: int = 32, device: str = "cpu"):
        super().__init__(name_or_path, batch_size, device)
        self.name = f"text-only {self.name}"
        self.cache_key = f"text-only:{fingerprint(name_or_path)}"
        self.training_cost = None

    def generate(self, images, prompts, max_new_tokens):
        def blank(image):  # an image, a list of them, or None (a text-only question)
            if isinstance(image, list):
                return [blank(one) for one in image]
            return None if image is None else Image.new("RGB", image.size, "white")
        return super().generate([blank(image) for image in images], prompts, max_new_tokens)


# ---- any transformers VLM --------------------------------------------------------------------------------

class HFVisionLanguageAdapter(ModelAdapter):
    """A Hugging Face image-text-to-text model with its own processor and chat template, asked exactly as
    molmini fine-tunes one (molmini.model.transformers_vlm): one user turn, image first, left-padded batches decoded past
    the prompt."""
    kind = "baseline"

    def __init__(self, name_or_path: str, batch_size: int = 8, device: str = "cpu", model=None,
                 quantize: str = "none", compile: bool = False):
        from molmini.model.transformers_vlm import HFVisionLanguageModel

        if model is None:
            model = HFVisionLanguageModel.from_pretrained(name_or_path, dtype="auto" if device != "cpu" else None,
                                                          device=device)
        self.model = model.eval()
        self.processor = self.model.processor.processor
        self.batch_size, self.device = batch_size, device
        self.name = display_name(name_or_path)
        self.cache_key = f"hf:{fingerprint(name_or_path)}"
        self.training_cost = read_training_cost(name_or_path)
        sped_up(self, quantize, compile)
        if self.training_cost is not None:  # a model molmini fine-tuned is reported as one of its own
            self.kind = "molmini"

    def format_prompt(self, prompt: str) -> str:
        from molmini.model.transformers_vlm import format_prompt
        return format_prompt(self.processor, prompt)

    def generate(self, images, prompts, max_new_tokens):
        return self.model.generate(list(images), list(prompts), max_new_tokens=max_new_tokens,
                                   batch_size=self.batch_size)


# ---- majority answer -------------------------------------------------------------------------------------

class MajorityAnswerBaseline(ModelAdapter):
    """Answers every question with the most common gold answer of its question type (item.subset),
    falling back to the most common answer overall. Fitted on a training shard folder (the honest
    baseline) or, without one, on each benchmark's own golds (an optimistic prior: it has seen the test
    answers' distribution)."""
    kind = "baseline"
    num_parameters = 0

    def __init__(self, train_dir: str | None = None, answers_by_type: dict[str, str] | None = None,
                 overall: str = ""):
        self.train_dir = train_dir
        if train_dir and answers_by_type is None:
            answers_by_type, overall = majority_from_shards(train_dir)
        self.answers_by_type, self.overall = answers_by_type or {}, overall
        self.name = "majority (train)" if train_dir else "majority (benchmark golds)"
        # Keyed on its answers: a training split (or a benchmark's golds) that changed gives other answers.
        source = "train" if train_dir else "golds"
        self.cache_key = f"majority:{source}:{answers_fingerprint(self.answers_by_type, self.overall)}"

    def for_benchmark(self, items):
        if self.train_dir:
            return self
        by_type, overall = majority_answers(((item.subset, item.golds[0]) for item in items if item.golds))
        return MajorityAnswerBaseline(answers_by_type=by_type, overall=overall)

    def answer(self, question_type: str) -> str:
        return self.answers_by_type.get(question_type, self.overall)

    def predict(self, items, max_new_tokens):
        return [self.answer(item.subset) for item in items]

    def generate(self, images, prompts, max_new_tokens):
        return [self.overall for _ in prompts]  # no question type here: the overall majority


def majority_answers(typed_answers: Iterable[tuple[str, str]]) -> tuple[dict[str, str], str]:
    """(most common answer per type, most common overall); ties go to the answer seen first."""
    by_type: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for question_type, answer in typed_answers:
        by_type[question_type][answer] += 1
        overall[answer] += 1
    return ({t: c.most_common(1)[0][0] for t, c in by_type.items()},
            overall.most_common(1)[0][0] if overall else "")


def majority_from_shards(train_dir: str) -> tuple[dict[str, str], str]:
    from molmini.data.reader import find_shards, read_records

    return majority_answers((question_type, answer) for record in read_records(find_shards(train_dir))
                            for _, _, answer, question_type in record_qa(record))


# ---- command-line specs ----------------------------------------------------------------------------------

BASELINE_KINDS = ("majority", "text-only", "llava", "hf")


def is_hf_folder(path: str) -> bool:
    """A transformers checkpoint folder of another family (molmini.hub.checkpoint_files.is_transformers_folder)."""
    from molmini.hub.checkpoint_files import is_transformers_folder
    return is_transformers_folder(path)


def build_adapter(spec: str, batch_size: int = 16, device: str = "cpu", quantize: str = "none",
                  compile: bool = False) -> ModelAdapter:
    """An adapter from a command-line spec:
    PATH_OR_ID (molmini checkpoint; a transformers folder is detected), `hf:PATH_OR_ID` or
    `llava:PATH_OR_ID` (any AutoModelForImageTextToText), `text-only:MOLMINI_PATH`, `majority` (the
    benchmark's own golds) or `majority:TRAIN_SHARD_DIR`. `quantize` and `compile` speed up the molmini or
    transformers model it loads (molmini/model/fast_inference.py); a baseline ignores them."""
    kind, _, target = spec.partition(":")
    if kind not in BASELINE_KINDS:
        kind, target = "", spec
    if kind == "majority":
        return MajorityAnswerBaseline(train_dir=target or None)
    if not target:
        raise ValueError(f"model spec {spec!r} names no model; use {kind}:PATH_OR_HUB_ID")
    if kind == "text-only":
        return TextOnlyAdapter(target, batch_size, device)
    if kind in ("hf", "llava") or is_hf_folder(target):
        return HFVisionLanguageAdapter(target, batch_size, device, quantize=quantize, compile=compile)
    return MolminiAdapter(target, batch_size, device, quantize=quantize, compile=compile)


def adapter_for(model, name_or_path: str, batch_size: int = 32) -> ModelAdapter:
    """The adapter for a model loaded already (a molmini.model.interface.VisionLanguageModel: molmini's own,
    or a transformers VLM molmini fine-tuned), which came from the folder `name_or_path`."""
    if model.family == "transformers":
        return HFVisionLanguageAdapter(name_or_path, batch_size, model=model)
    return MolminiAdapter(name_or_path, batch_size, model=model)
