"""Images as users pass them to `molmini generate --image` and to MolminiModel.generate/chat/stream: a file
path, an http(s) URL (served here from 127.0.0.1, no internet) or a PIL image; each failure one error that
names the input."""
from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from molmini.cli import main as molmini
from molmini.data.images import load_image
from tests.helpers import png_bytes

PNG = png_bytes("red", bars=2)


@pytest.fixture(scope="module")
def server():
    """http://127.0.0.1:PORT serving /chart.png (a PNG), /page.html (not an image); anything else is a 404."""
    files = {"/chart.png": ("image/png", PNG), "/page.html": ("text/html", b"<html>not an image</html>")}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            kind, body = files.get(self.path, ("text/plain", b"no such file"))
            self.send_response(200 if self.path in files else 404)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "chart.png"
    path.write_bytes(PNG)
    return path


def pixels(image: Image.Image) -> list:
    return list(image.getdata())


def test_a_path_a_url_and_a_pil_image_load_the_same_pixels(image_file, server):
    from_path = load_image(image_file)
    assert from_path.mode == "RGB" and from_path.size == (32, 32)
    assert pixels(load_image(str(image_file))) == pixels(from_path)
    assert pixels(load_image(f"{server}/chart.png")) == pixels(from_path)
    grey = Image.open(image_file).convert("L")
    assert load_image(grey).mode == "RGB"  # a PIL image in another mode comes back as RGB


def test_each_failure_names_its_input(tmp_path, server):
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match=f"image '{missing}' does not exist"):
        load_image(missing)
    broken = tmp_path / "broken.png"
    broken.write_bytes(PNG[:60])  # a PNG cut short
    with pytest.raises(ValueError, match=f"image '{broken}' is not an image PIL can read"):
        load_image(broken)
    text = tmp_path / "notes.png"
    text.write_text("just some text")
    with pytest.raises(ValueError, match="notes.png' is not an image PIL can read"):
        load_image(text)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(ConnectionError, match=r"image URL 'http://127.0.0.1:1/x.png' cannot be fetched"):
        load_image("http://127.0.0.1:1/x.png")  # nothing listens on port 1
    with pytest.raises(ConnectionError, match=f"image URL '{server}/gone.png' answered HTTP 404"):
        load_image(f"{server}/gone.png")
    with pytest.raises(ValueError, match=r"page.html' did not return an image PIL can read \(text/html"):
        load_image(f"{server}/page.html")
    with pytest.raises(TypeError, match="is a bytes"):
        load_image(PNG)


def test_the_model_answers_the_same_from_a_path_a_url_and_a_pil_image(tiny_model, image_file, server):
    pil = Image.open(image_file)
    url = f"{server}/chart.png"
    answers = tiny_model.generate([pil, str(image_file), url, [url, image_file]],
                                  ["Colour?", "Colour?", "Colour?", "<image><image>Same?"], max_new_tokens=4)
    assert answers[0] == answers[1] == answers[2]
    assert tiny_model.generate(url, ["Colour?"], max_new_tokens=4) == answers[:1]  # one image for one prompt
    assert tiny_model.chat(image_file, "Colour?", max_new_tokens=4) == tiny_model.chat(pil, "Colour?", max_new_tokens=4)
    assert "".join(tiny_model.stream(url, "Colour?", max_new_tokens=4)).strip() == tiny_model.chat(
        pil, "Colour?", max_new_tokens=4)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        tiny_model.chat(image_file.parent / "nope.png", "Colour?")


def test_generate_command_takes_a_url_and_names_a_bad_image(tiny_model, tmp_path, image_file, server, capsys):
    checkpoint = str(tiny_model.save_pretrained(tmp_path / "checkpoint"))
    common = ["--prompt", "Colour?", "--max-new-tokens", "3", "--device", "cpu", "--json"]
    url = f"{server}/chart.png"
    assert molmini(["generate", "--model", checkpoint, "--image", url, str(image_file), *common]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 2 and '"image": "http://127.0.0.1:' in rows[0]
    assert rows[0].split('"answer": ')[1] == rows[1].split('"answer": ')[1]  # the same image, either way
    missing = str(tmp_path / "missing.png")
    for bad, said in (("http://127.0.0.1:1/x.png", "URL 'http://127.0.0.1:1/x.png' cannot be fetched"),
                      (missing, f"'{missing}' does not exist")):
        assert molmini(["generate", "--model", checkpoint, "--image", bad, *common]) == 2
        err = capsys.readouterr().err
        assert f"error: image {said}" in err and "Traceback" not in err


def exif_rotated_jpeg() -> bytes:
    """A 128x64 JPEG (as stored) whose EXIF orientation 6 says: turn it 90 degrees clockwise to view it, as a
    phone writes a portrait photo. Viewed, it is 64x128 with its red half on top."""
    stored = Image.new("RGB", (128, 64), "white")
    stored.paste((200, 30, 30), (0, 0, 64, 64))  # the left half as stored: the top half once turned clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "jpeg", quality=95, exif=exif)
    return buf.getvalue()


def test_an_exif_rotated_jpeg_gives_the_same_pixels_to_training_eval_generate_and_serve(tiny_model, tmp_path):
    """One decoding everywhere (molmini/data/images.py): the record reader's image (training, eval, curate,
    inspect), an eval item's, a path given to `generate` and an image sent to `serve` are the same upright
    64x128 RGB image, and the processor turns each into the same crops."""
    from data_pipelines.shards import ShardWriter
    from eval.items import BenchmarkItem
    from molmini.data.reader import find_shards, read_records
    from molmini.data.records import Record
    from molmini.serve.requests import Limits, decode_image

    data = exif_rotated_jpeg()
    with ShardWriter(tmp_path / "shards", generator="test", maxcount=4) as writer:
        writer.write(Record(key="portrait", image=data, image_ext="jpg", messages=[
            {"role": "user", "content": "<image>What colour is the top?"}, {"role": "assistant", "content": "red"}]))
    (record,) = read_records(find_shards(tmp_path / "shards"))
    (tmp_path / "portrait.jpg").write_bytes(data)
    item = BenchmarkItem(id="portrait-0", images=(data,), question="What colour is the top?", golds=["red"],
                         metric="exact_match", prompt_template="question_only")
    seen = {"record": record.load_images()[0], "eval item": item.load_images(),
            "generate (a path)": load_image(tmp_path / "portrait.jpg"),
            "serve": decode_image(data, Limits(), "messages[0].content image 0")}
    for path, image in seen.items():
        assert (image.size, image.mode) == ((64, 128), "RGB"), path
        assert image.getpixel((32, 10))[0] > 150 and image.getpixel((32, 118))[1] > 200, path  # red on top
        assert image.tobytes() == seen["record"].tobytes(), path

    processor = tiny_model.processor
    trained = processor.process_record(record)["pixel_values"]
    for path in ("generate (a path)", "serve"):
        source = tmp_path / "portrait.jpg" if path.startswith("generate") else seen["serve"]
        assert torch.equal(processor.process_prompt(source, "What colour is the top?")["pixel_values"], trained)
