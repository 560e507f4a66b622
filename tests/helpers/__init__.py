"""What the tests share: the tiny model config, small records whose answers depend on the image, a trained
tiny checkpoint, tiny synthetic charts and the exact-resume check. The fixtures built on them are in
tests/conftest.py; the modules beside this one hold tiny backbones (backbones.py), tiny transformers VLMs
(hf_tiny_vlms.py), a local hub server (hub_server.py), file hashes (file_hashes.py) and the scripts that the
multi-process tests launch (grad_step.py, fsdp_step.py)."""
from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

from molmini.config import Config, ModelConfig, load_config
from molmini.data.records import Record

ROOT = Path(__file__).resolve().parents[2]


TINY_OVERRIDES = [
    "model.vision.vision_cfg={image_size: 32, patch_size: 8, width: 64, layers: 2, head_width: 32}",
    "model.lm.config={model_type: llama, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
    "num_key_value_heads: 2, intermediate_size: 128, max_position_embeddings: 256, tie_word_embeddings: true}",
    "model.tokenizer.vocab_size=300",
    "model.reading.weight=0",  # the tiny model as before the reading loss; its tests turn it on (tests/model/test_reading.py)
]


def tiny_config(*extra: str) -> Config:
    return load_config(None, TINY_OVERRIDES + list(extra))


def png_bytes(colour: str, size: int = 32, bars: int = 3) -> bytes:
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    for i in range(bars):
        draw.rectangle([2 + i * 6, size - 4 - 5 * (i + 1), 6 + i * 6, size - 2], fill=colour)
    buf = io.BytesIO()
    img.save(buf, "png")
    return buf.getvalue()


def make_records(n: int, seed: int = 0) -> list[Record]:
    """Small records whose answers depend on the image (colour and number of bars)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        colour, bars = rng.choice(["red", "blue", "green"]), rng.randint(1, 4)
        out.append(Record(key=f"r{seed}-{i:05d}", image=png_bytes(colour, bars=bars), messages=[
            {"role": "user", "content": "<image>What colour are the bars?"}, {"role": "assistant", "content": colour},
            {"role": "user", "content": "How many bars are there?"}, {"role": "assistant", "content": str(bars)}],
            source="test", task="toy", meta={"qa_types": ["colour", "count"]}))
    return out


def corpus() -> list[str]:
    return [m["content"] for r in make_records(50) for m in r.messages]


def trained_checkpoint(model_config: ModelConfig, tokenizer, folder: Path, steps: int = 40) -> Path:
    """A tiny model trained `steps` steps on 16 records and saved to `folder`, so its greedy answers are
    words that depend on the image, not near-ties between random logits."""
    import torch

    from molmini.model.vlm import MolminiModel
    torch.manual_seed(0)
    model = MolminiModel(model_config, tokenizer)
    batch = model.processor.collate([model.processor.process_record(r) for r in make_records(16)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        model(**batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval().save_pretrained(folder)


def synth_tiny_charts(folder: Path, train_shard_size: int = 16) -> Path:
    """32 training and 8 held-out 32 px charts under folder/train and folder/test."""
    from data_pipelines.synth.charts import synthesize
    synthesize(folder / "train", 32, 0, split="train", image_px=32, shard_size=train_shard_size, progress=False)
    synthesize(folder / "test", 8, 1, split="test", image_px=32, shard_size=8, progress=False)
    return folder


def check_exact_resume(make_stream, seed: int, workers: int, batch_size: int | None, stop_after: int,
                       more: int) -> None:
    """Read `stop_after` items, "crash", resume from the recorded StreamPosition and read `more`: the keys
    must be exactly those of one uninterrupted read. `make_stream(resume)` builds the stream."""
    import torch

    from molmini.data.stream import StreamPosition

    def loader(resume=None):
        collate = (lambda s: {"key": [x["key"] for x in s], "position": [x["position"] for x in s]}) \
            if batch_size else None
        return iter(torch.utils.data.DataLoader(make_stream(resume), batch_size=batch_size, num_workers=workers,
                                                collate_fn=collate))

    def keys(item):
        return item["key"] if batch_size else [item["key"]]

    full = loader()
    uninterrupted = [k for _ in range(stop_after + more) for k in keys(next(full))]
    first = loader()
    state = StreamPosition(workers=max(workers, 1), world_size=1, seed=seed)
    seen = []
    for _ in range(stop_after):
        item = next(first)
        seen += keys(item)
        state.update(item["position"] if batch_size else [item["position"]])
    del first  # the "crash"
    resumed = loader(StreamPosition.from_dict(state.to_dict()))
    seen += [k for _ in range(more) for k in keys(next(resumed))]
    assert seen == uninterrupted
