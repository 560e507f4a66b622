"""A seeded fuzzer over the record reader and every command that reads shards: shards of random mixtures of
valid and corrupted records (bytes flipped, members dropped, keys repeated, json mutated in type and
shape, images of random modes, sizes and formats, shards cut or replaced by noise). Each command either
finishes with the exact count of bad records or exits 2 with one line; none raises, hangs or changes its
input.

The count is exact by conservation: every sample the manifest lists is either used or counted once."""
from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import pytest
from PIL import Image

from molmini.data.reader import BadRecords, Skip, find_shards, read_records
from molmini.data.records import Record, RecordError, UnusableDataError
from molmini.data.stream import ShardStream
from tests.data.test_bad_records import members, toy_config, within, write_manifest, write_tar
from tests.helpers import make_records

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # PIL on corrupted images

MODES = ["RGB", "L", "P", "RGBA", "LA", "1", "I;16", "I", "F", "CMYK", "YCbCr", "La", "RGBa"]
FORMATS = ["PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP"]
SIDES = [1, 2, 3, 5, 8, 17, 32, 50, 97]


def random_image(rng: random.Random) -> bytes:
    """An image of a random mode, size and format (saved as whatever of those PIL can write)."""
    size = (rng.choice(SIDES), rng.choice(SIDES))
    noise = bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3))
    img = Image.frombytes("RGB", size, noise)
    mode = rng.choice(MODES)
    try:
        img = img.convert(mode)
    except ValueError:
        pass
    for fmt in [rng.choice(FORMATS), "TIFF", "PNG"]:
        out = io.BytesIO()
        try:
            img.save(out, format=fmt)
            return out.getvalue()
        except (OSError, ValueError, KeyError):
            continue
    return random_image(rng)  # a mode no format writes (e.g. premultiplied alpha): draw another


def flip(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def mutated_body(body: dict, rng: random.Random):
    """The json body changed in type or shape, in one of the ways a broken producer writes it."""
    messages = body["messages"]
    choices = [
        None, [body], 3, "text", {},
        {**body, "messages": None}, {**body, "messages": "hello"}, {**body, "messages": []},
        {**body, "messages": [1, 2]}, {**body, "messages": messages[:1]},
        {**body, "messages": [{**messages[0], "content": rng.choice([None, 5, ["a"], {"t": 1}])}] + messages[1:]},
        {**body, "messages": [{**messages[0], "role": rng.choice(["assistant", None, ["user"], 7])}] + messages[1:]},
        {**body, "messages": [{"text": "hi"}] + messages[1:]},
        {**body, "meta": rng.choice([[], "meta", 1, None])},
        {**body, "source": rng.choice([1, [], None])}, {**body, "task": {"a": 1}},
        {**body, "meta": {**body["meta"], "qa_types": rng.choice(["colour", 3, [1, 2]])}},
        {**body, "meta": {**body["meta"], "transcript": rng.choice([5, ["x"], {}])}},
    ]
    return rng.choice(choices)


def fuzzed_shards(folder: Path, rng: random.Random, n_records: int, n_shards: int,
                  lying_manifest: bool = False) -> tuple[list[str], int, set[str]]:
    """Shards of `n_records` samples, about half of them corrupted; returns (shards, samples the manifest
    lists, keys of records that must not be read). `lying_manifest`: the manifest also misstates one shard's
    count or lists a shard that was never written."""
    folder.mkdir(parents=True, exist_ok=True)
    records = make_records(n_records, seed=rng.randrange(10**6))
    groups: list[list[tuple[str, bytes]]] = []
    must_not_read: set[str] = set()
    for i, record in enumerate(records):
        if rng.random() < 0.3:
            record = Record(key=record.key, image=random_image(rng), messages=record.messages, source=record.source,
                            task=record.task, meta=record.meta)
        entry = members(record)
        kind = rng.choice(["valid"] * 8 + ["flip_image", "cut_image", "flip_json", "mutate_json", "drop_member",
                                           "repeat_key", "other_extension", "special_tokens", "exif",
                                           "zero_byte_image", "zero_byte_json"])
        if kind == "special_tokens":  # molmini's control tokens as user text: plain characters, a valid record
            body = json.loads(entry[0][1])
            token = rng.choice(SPECIAL_TEXTS)
            body["messages"][0]["content"] += f" {token}"
            body["messages"][1]["content"] = f"{token} {body['messages'][1]['content']}"
            entry[0] = (entry[0][0], json.dumps(body).encode())
        elif kind == "exif":  # a JPEG whose EXIF orientation turns it: valid, decoded upright everywhere
            entry[1] = (f"{record.key}.jpg", exif_jpeg(rng))
        elif kind == "zero_byte_image":
            entry[1] = (entry[1][0], b"")
        elif kind == "zero_byte_json":
            entry[0] = (entry[0][0], b"")
            must_not_read.add(record.key)
        elif kind == "flip_image":
            entry[1] = (entry[1][0], flip(entry[1][1], rng))
        elif kind == "cut_image":
            entry[1] = (entry[1][0], entry[1][1][:rng.randrange(len(entry[1][1]))])
        elif kind == "flip_json":
            entry[0] = (entry[0][0], flip(entry[0][1], rng))
        elif kind == "mutate_json":
            body = json.loads(entry[0][1])
            entry[0] = (entry[0][0], json.dumps(mutated_body(body, rng)).encode())
            must_not_read.add(record.key)
        elif kind == "drop_member":
            entry.pop(rng.randrange(2))
            must_not_read.add(record.key)
        elif kind == "other_extension":
            entry[1] = (f"{record.key}.gif", entry[1][1])
            must_not_read.add(record.key)
        elif kind == "repeat_key" and groups:
            # a key already written (not one that must not be read: this copy may well be readable)
            other = rng.choice([g[0][0].split(".")[0] for g in groups])
            if other in must_not_read:
                other = record.key
            entry = [(name.replace(record.key, other), data) for name, data in entry]
        groups.append(entry)
    shards, counts, intact = [], {}, []
    per_shard = -(-len(groups) // n_shards)
    for s in range(n_shards):
        chunk = groups[s * per_shard:(s + 1) * per_shard]
        name = f"shard-{s:06d}.tar"
        path = write_tar(folder / name, [m for g in chunk for m in g])
        counts[name] = len(chunk)
        fate = rng.random()
        if fate >= 0.2:
            intact.append(name)
        if fate < 0.15:  # cut anywhere
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[:rng.randrange(len(data))])
        elif fate < 0.2:  # not a tar at all
            Path(path).write_bytes(bytes(rng.getrandbits(8) for _ in range(rng.randrange(2000))))
        shards.append(path)
    listed = dict(counts)
    # The samples there are to account for: what the manifest lists, or what a shard holds beyond that.
    total = sum(counts.values())
    if lying_manifest:  # a manifest that lies: more or fewer samples than a shard holds, or a ghost shard
        lie = rng.choice(["more", "fewer", "ghost"] if intact else ["more", "ghost"])
        if lie == "more":  # read as a truncated shard: the shortfall is counted
            name = rng.choice(sorted(listed))
            extra = rng.randint(1, 5)
            listed[name] += extra
            total += extra
        elif lie == "fewer":  # an intact shard holding more than listed: every sample it holds is read
            name = rng.choice(intact)
            listed[name] = max(0, listed[name] - rng.randint(1, 5))
        else:  # listed, never written: counted as missing_shard
            ghost = rng.randint(1, 20)
            listed[f"shard-{n_shards:06d}.tar"] = ghost
            total += ghost
    write_manifest(folder, listed)
    return shards, total, must_not_read


SPECIAL_TEXTS = ["<im_patch>", "<im_start>", "<im_end>", "<im_col>", "<|end|>", "<|user|>", "<|assistant|>",
                 "<pad>", "<image>"]


def exif_jpeg(rng: random.Random) -> bytes:
    """A small JPEG carrying EXIF orientation 2-8 (a phone photo held sideways)."""
    img = Image.frombytes("RGB", (16, 8), bytes(rng.getrandbits(8) for _ in range(16 * 8 * 3)))
    exif = Image.Exif()
    exif[0x0112] = rng.randint(2, 8)
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()


def digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def decoded(records, bad: BadRecords) -> list[Record]:
    """The records whose image decodes; the others counted in `bad`."""
    out = []
    for record in records:
        try:
            record.load_image()
            out.append(record)
        except RecordError as e:
            bad.add(Skip(record.key, e.reason, str(e)))
    return out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("seed", range(6))
def test_the_reader_and_the_stream_count_every_sample_once(tmp_path, seed):
    rng = random.Random(seed)
    shards, listed, must_not_read = fuzzed_shards(tmp_path, rng, n_records=400, n_shards=4,
                                                  lying_manifest=seed % 2 == 1)
    before = digest(tmp_path)
    bad = BadRecords(on_skip=lambda skip: None)
    with within(120):
        records = list(read_records(shards, bad))
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)) and not set(keys) & must_not_read, set(keys) & must_not_read
    assert len(records) + bad.total == listed, bad.by_reason

    def transform(record, rng):
        record.load_image()
        return {"key": record.key}

    # The stream reads its shards in a seeded order (the first draw of its generator), and of two records
    # with one key keeps the first it reads: the reader in that order says which records it can use.
    order = list(shards)
    random.Random(f"{seed}-0-0").shuffle(order)
    usable = decoded(read_records(order), BadRecords(on_skip=lambda skip: None))
    try:
        with within(120):
            out = list(ShardStream(shards, transform, shuffle_buffer=8, seed=seed))
    except UnusableDataError as e:
        assert not usable and "\n" not in str(e)
    else:
        assert sorted(s["key"] for s in out) == sorted(r.key for r in usable)
        assert out[-1]["skipped"][2] <= listed - len(out)  # the bad records read before the last sample
    assert digest(tmp_path) == before


@pytest.fixture(scope="module")
def init_model(tmp_path_factory, tokenizer, model_config):
    """A tiny checkpoint: training starts from it (train.init_from) and evaluation loads it."""
    import torch

    from molmini.model.vlm import MolminiModel
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("init") / "model"
    MolminiModel(model_config, tokenizer).save_pretrained(path)
    return path


@pytest.mark.parametrize("seed", range(3))
def test_training_counts_exactly_the_bad_records_of_a_pass_or_stops_with_one_line(tmp_path, seed, init_model):
    from molmini.data.formatter import training_transform
    from molmini.model.vlm import MolminiModel
    from molmini.train.loop import train
    rng = random.Random(100 + seed)
    shards, listed, _ = fuzzed_shards(tmp_path / "train", rng, n_records=24, n_shards=2, lying_manifest=seed == 1)
    fuzzed_shards(tmp_path / "test", rng, n_records=8, n_shards=1)
    before = digest(tmp_path / "train")
    cfg = toy_config(tmp_path / "train", tmp_path / "test", f"train.init_from={init_model}")
    # One pass of the stream training reads (same seed, same order): what it can use.
    transform = training_transform(MolminiModel.from_pretrained(init_model).processor)
    try:
        usable = len(list(ShardStream(shards, transform, seed=cfg.train.seed)))
    except UnusableDataError:
        usable = 0
    cfg.train.max_steps = max(2, usable // 4 + 2)  # more samples than a pass holds: every bad record is met
    try:
        with within(300):
            summary = train(cfg, tmp_path / "run")
    except UnusableDataError as e:
        assert usable == 0 and "\n" not in str(e), (usable, str(e))
    else:
        assert summary["skipped_records"] == listed - usable
        assert sum(summary["skipped_by_reason"].values()) == listed - usable
    assert digest(tmp_path / "train") == before


@pytest.mark.parametrize("seed", range(3))
def test_evaluation_curation_and_inspection_count_exactly_or_exit_2_with_one_line(tmp_path, seed, init_model,
                                                                                  capsys):
    from data_pipelines.__main__ import main as pipelines
    from eval.__main__ import main as evaluation
    from eval.benchmarks import undecodable
    rng = random.Random(200 + seed)
    test, train = tmp_path / "test", tmp_path / "train"
    shards, listed, _ = fuzzed_shards(test, rng, n_records=60, n_shards=3, lying_manifest=seed == 2)
    fuzzed_shards(train, rng, n_records=20, n_shards=2)
    inputs = digest(tmp_path)
    reader_bad = BadRecords(on_skip=lambda skip: None)
    records = list(read_records(shards, reader_bad))
    usable = decoded(records, BadRecords(on_skip=lambda skip: None))
    with within(300):
        # eval heldout: every record read or counted, once
        code = evaluation(["heldout", "--model", str(init_model), "--test-dir", str(test), "--train-dir", str(train),
                           "--out", str(tmp_path / "heldout"), "--max-new-tokens", "2",
                           # the counts, at any share skipped (the share's limit: tests/eval/test_runner.py)
                           "--max-skipped-fraction", "1"])
        if code == 0:
            results = json.loads((tmp_path / "heldout" / "eval_results.json").read_text())
            assert results["skipped_records"] == listed - len(usable)
            assert results["overall"]["n"] == sum(len(r.qa_pairs()) for r in usable)
        else:
            assert code == 2 and not usable and "nothing to evaluate" in one_line_error(capsys)
        capsys.readouterr()
        # eval run: the benchmark's rows are questions; a record lost before them counts as one row
        code = evaluation(["run", "--baselines", "majority", "--benchmarks", f"synthetic={test}",
                           "--out", str(tmp_path / "run"), "--max-skipped-fraction", "1"])
        questions = [(r, undecodable(r.image)) for r in records]
        if code == 0:
            entry = json.loads((tmp_path / "run" / "results.json").read_text())["results"][0]
            assert entry["n"] == sum(len(r.qa_pairs()) for r, problem in questions if not problem)
            assert entry["settings"]["skipped_rows"] == reader_bad.total + sum(
                len(r.qa_pairs()) for r, problem in questions if problem)
        else:
            assert code == 2 and "no readable item" in one_line_error(capsys)
        capsys.readouterr()
        # curate: what the reader could not read is reported; everything else is seen by the filters
        code = pipelines(["curate", "--input", str(test), "--out", str(tmp_path / "curated"),
                          "--skip", "near_duplicates"])
        assert code == 0, capsys.readouterr().err
        report = json.loads((tmp_path / "curated" / "curation_report.json").read_text())
        assert report["seen"] == len(records)
        assert report["unreadable_input_records"] == reader_bad.total == listed - len(records)
        assert report["unreadable_by_reason"] == reader_bad.by_reason
        # inspect: a contact sheet of what is readable, or one line saying nothing is
        code = pipelines(["inspect", "--input", str(test), "--out", str(tmp_path / "sheet.png")])
        if usable:
            assert code == 0 and (tmp_path / "sheet.png").is_file()
        else:
            assert code == 2 and "no readable record" in one_line_error(capsys)
    assert {k: v for k, v in digest(tmp_path).items() if k in inputs} == inputs


@pytest.mark.parametrize("seed", range(3))
def test_convert_counts_every_bad_row(tmp_path, seed, capsys):
    from data_pipelines.__main__ import main as pipelines
    rng = random.Random(300 + seed)
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(random_image(rng))
    entries, bad = [], 0
    turns = [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "a chart"}]
    for i in range(60):
        name = f"img{i}.png"
        data = random_image(rng)
        kind = rng.choice(["valid"] * 5 + ["flip", "cut", "missing", "escape", "absolute", "turns", "no_image"])
        entry = {"id": f"e{i}", "image": name, "conversations": turns}
        if kind == "flip":
            data = flip(data, rng)
        elif kind == "cut":
            data = data[:rng.randrange(len(data))]
        if kind != "missing":
            (images / name).write_bytes(data)
        if kind == "escape":
            entry["image"] = "../../outside.png"
        elif kind == "absolute":
            entry["image"] = str(tmp_path / "outside.png")
        elif kind == "turns":
            entry["conversations"] = mutated_body({"messages": turns, "meta": {}}, rng)
        elif kind == "no_image":
            entry.pop("image")
        entries.append(entry)
        bad += kind in ("missing", "escape", "absolute", "no_image")
    (tmp_path / "data" / "llava.json").write_text(json.dumps(entries))
    inputs = digest(tmp_path)
    with within(120):
        code = pipelines(["convert", "llava", "--input", str(tmp_path / "data" / "llava.json"), "--images", str(images),
                          "--out", str(tmp_path / "out"), "--one-record-per-row", "--max-skipped-fraction", "1"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    skipped = manifest["params"]["conversion"]["skipped"]
    assert manifest["num_samples"] + sum(skipped.values()) == len(entries)
    # an entry without its image but with an <image> marker is a mismatch (without the marker: a text-only record)
    assert sum(skipped.get(r, 0) for r in ("missing_image_file", "unsafe_image_path", "image_marker_mismatch")) == bad
    # every record written reads back, and its image decodes
    assert len(decoded(read_records(find_shards(tmp_path / "out")), BadRecords())) == manifest["num_samples"]
    assert {k: v for k, v in digest(tmp_path).items() if k in inputs} == inputs
