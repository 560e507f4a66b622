"""`molmini serve`: the real OpenAI client against the server on localhost, serving a tiny checkpoint saved
here. Answers must equal `MolminiModel.generate` (greedy) on the same image and prompt, alone, streamed, with
history, and when concurrent requests are batched; bad requests get a 400 naming the problem, and the server
keeps serving."""
from __future__ import annotations

import base64
import contextlib
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from PIL import Image

from tests.helpers import ROOT, png_bytes, trained_checkpoint

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
from molmini.model.vlm import MolminiModel  # noqa: E402
from molmini.serve.requests import Limits, parse_chat_request  # noqa: E402
from molmini.serve.server import Batcher, Job, build_app  # noqa: E402

LIMITS = Limits(max_new_tokens=16, max_image_pixels=64 * 64, max_image_bytes=100_000)
QUESTION = "What colour are the bars?"


@pytest.fixture(scope="module")
def checkpoint(tokenizer, model_config, tmp_path_factory):
    """A tiny model trained for a few steps, so its greedy answers depend on the image and are not near-ties."""
    return trained_checkpoint(model_config, tokenizer, tmp_path_factory.mktemp("serve") / "checkpoint")


@pytest.fixture(scope="module")
def reference(checkpoint):
    return MolminiModel.from_pretrained(checkpoint)


@contextlib.contextmanager
def running(app):
    """`app` served by uvicorn in a background thread on a free localhost port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server stopped while starting"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def server(checkpoint):
    # A long batch wait, so that concurrent requests surely meet in one batch.
    app = build_app(MolminiModel.from_pretrained(checkpoint), "tiny", LIMITS, max_batch_size=8, batch_wait_ms=300)
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0, timeout=120)


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def user(text: str, *urls: str) -> dict:
    return {"role": "user", "content": [*({"type": "image_url", "image_url": {"url": u}} for u in urls),
                                        {"type": "text", "text": text}]}


def image_of(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_a_base64_image_gets_the_answer_generate_gives(client, reference):
    png = png_bytes("red", bars=2)
    reply = client.chat.completions.create(model="tiny", messages=[user(QUESTION, data_url(png))], max_tokens=6)
    assert reply.choices[0].message.content == reference.generate([image_of(png)], [QUESTION], max_new_tokens=6)[0]
    assert reply.model == "tiny" and reply.id.startswith("chatcmpl-") and reply.created > 0
    prompt_tokens = len(reference.processor.process_prompt(image_of(png), QUESTION)["input_ids"])
    used = reply.usage
    assert used.prompt_tokens == prompt_tokens and used.total_tokens == prompt_tokens + used.completion_tokens
    assert 1 <= used.completion_tokens <= 6
    assert reply.choices[0].finish_reason == ("length" if used.completion_tokens == 6 else "stop")
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_several_images_in_one_message_match_generate_with_an_image_list(client, reference):
    pngs = [png_bytes("blue", bars=1), png_bytes("green", bars=4)]
    content = [{"type": "text", "text": "Left"}, {"type": "image_url", "image_url": {"url": data_url(pngs[0])}},
               {"type": "text", "text": "right"}, {"type": "image_url", "image_url": {"url": data_url(pngs[1])}},
               {"type": "text", "text": QUESTION}]
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                           max_tokens=5)
    prompt = f"Left\n<image>\nright\n<image>\n{QUESTION}"
    expected = reference.generate([[image_of(p) for p in pngs]], [prompt], max_new_tokens=5)[0]
    assert reply.choices[0].message.content == expected


def test_an_image_url_is_fetched(client, reference, tmp_path):
    png = png_bytes("green", bars=3)
    (tmp_path / "chart.png").write_bytes(png)
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    images = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{images.server_address[1]}/chart.png"
        reply = client.chat.completions.create(model="tiny", messages=[user(QUESTION, url)], max_tokens=6)
        with pytest.raises(openai.BadRequestError, match="HTTP 404"):
            client.chat.completions.create(model="tiny", messages=[user(QUESTION, url + ".missing")])
    finally:
        images.shutdown()
    assert reply.choices[0].message.content == reference.generate([image_of(png)], [QUESTION], max_new_tokens=6)[0]


def test_history_turns_are_the_conversation_so_far(client, reference):
    png = png_bytes("blue", bars=2)
    messages = [user(QUESTION, data_url(png)), {"role": "assistant", "content": "blue"},
                {"role": "user", "content": "How many bars are there?"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6)
    history = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "blue"}]
    expected = reference.chat(image_of(png), "How many bars are there?", history=history, max_new_tokens=6)
    assert reply.choices[0].message.content == expected


def test_streamed_chunks_join_to_the_non_streamed_answer(client):
    reasons = set()
    for colour, max_tokens in (("red", 8), ("green", 1)):  # the answer ends, or is cut at max_tokens
        messages = [user(QUESTION, data_url(png_bytes(colour, bars=1)))]
        whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=max_tokens)
        chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=max_tokens,
                                                     stream=True, stream_options={"include_usage": True}))
        assert all(c.object == "chat.completion.chunk" and c.model == "tiny" for c in chunks)
        assert chunks[0].choices[0].delta.role == "assistant"
        texts = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        assert "".join(texts) == whole.choices[0].message.content
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
        assert chunks[-1].usage == whole.usage  # the last chunk, without choices, carries the counts
        reasons.add(whole.choices[0].finish_reason)
    assert reasons == {"stop", "length"}


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(client, server, reference):
    cases = [(png_bytes(c, bars=b), q, n) for c, b, q, n in [
        ("red", 1, QUESTION, 6), ("blue", 2, "How many bars are there?", 4), ("green", 3, QUESTION, 6),
        ("red", 4, "How many bars are there?", 3), ("blue", 3, QUESTION, 6), ("green", 1, "colour?", 5)]]
    expected = [reference.generate([image_of(png)], [q], max_new_tokens=n)[0] for png, q, n in cases]
    assert len(set(expected)) > 1  # the answers tell the requests apart
    before = httpx.get(f"{server[0]}/health").json()
    answers, start = [None] * len(cases), threading.Barrier(len(cases) + 1)

    def ask(i, png, question, max_tokens):
        start.wait()
        reply = client.chat.completions.create(model="tiny", messages=[user(question, data_url(png))],
                                               max_tokens=max_tokens)
        answers[i] = reply.choices[0].message.content

    def sample():  # other generation settings: a batch of its own, beside the greedy one
        start.wait()
        client.chat.completions.create(model="tiny", messages=[user(QUESTION, data_url(cases[0][0]))],
                                       max_tokens=3, temperature=1.0, top_p=0.9)

    threads = [threading.Thread(target=ask, args=(i, *case)) for i, case in enumerate(cases)]
    threads.append(threading.Thread(target=sample))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert answers == expected
    after = httpx.get(f"{server[0]}/health").json()
    batched, batches = after["batched_requests"] - before["batched_requests"], after["batches"] - before["batches"]
    assert batched == len(cases) + 1 and batches < batched and after["largest_batch"] > 1
    assert server[1].state.batcher.largest_batch == after["largest_batch"]


def test_special_tokens_in_a_request_are_text_and_do_not_fail_the_requests_batched_with_it(client, reference):
    """A question holding `<im_patch>` (or `<|end|>`) is answered (it was a 500, and it failed every valid
    request batched with it): its text is tokenized as plain characters, as generate does."""
    literal = "What is <im_patch><|end|> in this chart?"
    cases = [(png_bytes("red", bars=1), literal, 4), (png_bytes("blue", bars=2), QUESTION, 5),
             (png_bytes("green", bars=3), "How many bars are there?", 4), (png_bytes("red", bars=4), literal, 3)]
    expected = [reference.generate([image_of(png)], [q], max_new_tokens=n)[0] for png, q, n in cases]
    answers, start = [None] * len(cases), threading.Barrier(len(cases))

    def ask(i, png, question, max_tokens):
        start.wait()  # all at once: one batch (the server waits 300 ms for company)
        try:
            reply = client.chat.completions.create(model="tiny", messages=[user(question, data_url(png))],
                                                   max_tokens=max_tokens)
            answers[i] = reply.choices[0].message.content
        except openai.APIError as e:
            answers[i] = e

    threads = [threading.Thread(target=ask, args=(i, *case)) for i, case in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert answers == expected


BAD_REQUESTS = [
    ("no image", [{"role": "user", "content": QUESTION}], "has no image"),
    ("broken base64", [user(QUESTION, "data:image/png;base64,iVBOR$$not-base64")], "not valid base64"),
    ("not an image", [user(QUESTION, data_url(b"just some text, not a picture"))], "not an image PIL can read"),
    ("too many pixels", [user(QUESTION, data_url(png_bytes("red", size=80)))], "80x80 = 6400 pixels"),
    ("too many bytes", [user(QUESTION, data_url(bytes(150_000)))], "over this server's limit of 100000 bytes"),
    ("not a URL", [user(QUESTION, "chart.png")], "neither a data: URL"),
    ("image in a later turn", [user(QUESTION, data_url(png_bytes("red"))), {"role": "assistant", "content": "red"},
                               user("and this?", data_url(png_bytes("blue")))], "first user message"),
    ("system message", [{"role": "system", "content": "Be brief."}, user(QUESTION, data_url(png_bytes("red")))],
     "system message"),
    ("markers do not match", [user("<image><image> compare", data_url(png_bytes("red")))], "markers"),
]


@pytest.mark.parametrize("messages,expected", [case[1:] for case in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_a_bad_request_is_a_400_naming_the_problem_and_the_server_goes_on(client, messages, expected):
    with pytest.raises(openai.BadRequestError, match=expected) as caught:
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    assert caught.value.body["type"] == "invalid_request_error"
    good = client.chat.completions.create(model="tiny", messages=[user(QUESTION, data_url(png_bytes("red")))],
                                          max_tokens=2)
    assert good.choices[0].finish_reason in ("stop", "length")


def test_bad_settings_and_malformed_json_are_400s(client, server):
    messages = [user(QUESTION, data_url(png_bytes("red")))]
    with pytest.raises(openai.BadRequestError, match="over this server's limit of 16 new tokens"):
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=17)
    with pytest.raises(openai.BadRequestError, match="temperature must be a number from 0.0 to 2.0"):
        client.chat.completions.create(model="tiny", messages=messages, temperature=3)
    long_question = [user(QUESTION * 40, data_url(png_bytes("red")))]
    with pytest.raises(openai.BadRequestError, match="over the model's context of 256 tokens"):
        client.chat.completions.create(model="tiny", messages=long_question, max_tokens=16)
    with pytest.raises(openai.BadRequestError, match="does not support stop sequences"):
        client.chat.completions.create(model="tiny", messages=messages, stop=["."])
    reply = httpx.post(f"{server[0]}/v1/chat/completions", content=b'{"messages": [', timeout=60,
                       headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert "not valid JSON" in reply.json()["error"]["message"]
    assert client.chat.completions.create(model="tiny", messages=messages, max_tokens=2).choices


def test_a_failed_generation_fails_its_own_requests_and_the_worker_goes_on(reference):
    png = png_bytes("green", bars=2)
    request = parse_chat_request({"messages": [user(QUESTION, data_url(png))], "max_tokens": 3}, LIMITS)
    sample = reference.processor.process_prompt(request.images, request.prompt)
    cut = {**sample, "input_ids": sample["input_ids"][:5]}  # cut inside its image tokens: collate refuses it
    batcher = Batcher(reference, max_batch_size=1, batch_wait_ms=0)
    batcher.start()
    try:
        broken, good = Job(request, cut, 3), Job(request, sample, 3)
        batcher.submit(broken)
        batcher.submit(good)
        with pytest.raises(ValueError, match="placeholder"):
            broken.future.result(timeout=60)
        answer = good.future.result(timeout=60)
    finally:
        batcher.stop()
    assert answer.text == reference.generate([image_of(png)], [QUESTION], max_new_tokens=3)[0]
    assert batcher.stats()["batches"] == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_molmini_serve_command_serves_with_its_options(checkpoint, reference):
    port = free_port()
    command = [sys.executable, "-m", "molmini.cli", "serve", "--model", str(checkpoint), "--port", str(port),
               "--served-model-name", "tiny-cli", "--max-batch-size", "3", "--batch-wait-ms", "1",
               "--max-new-tokens-limit", "4", "--max-image-pixels", "2000", "--max-image-bytes", "90000",
               "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            assert process.poll() is None, process.stdout.read().decode()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                health = httpx.get(f"{url}/health").json()
                break
            time.sleep(0.2)
        assert health["model"] == "tiny-cli" and health["max_batch_size"] == 3
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        png = png_bytes("blue", bars=2)
        reply = client.chat.completions.create(model="tiny-cli", messages=[user(QUESTION, data_url(png))],
                                               max_tokens=4)
        assert reply.choices[0].message.content == reference.generate([image_of(png)], [QUESTION],
                                                                      max_new_tokens=4)[0]
        for too_much, problem in [({"max_tokens": 5}, "limit of 4 new tokens"),
                                  ({"image": png_bytes("red", size=48)}, "2304 pixels"),
                                  ({"image": bytes(100_000)}, "limit of 90000 bytes")]:
            with pytest.raises(openai.BadRequestError, match=problem):
                client.chat.completions.create(model="tiny-cli", max_tokens=too_much.get("max_tokens", 2),
                                               messages=[user(QUESTION, data_url(too_much.get("image", png)))])
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_without_fastapi_the_command_says_what_to_install(monkeypatch, capsys):
    from molmini.cli import main
    monkeypatch.setitem(sys.modules, "fastapi", None)  # an import of it now fails, as when it is not installed
    assert main(["serve", "--model", "unused"]) == 2
    assert 'pip install "molmini[serve]"' in capsys.readouterr().err


def test_import_molmini_serve_requests_needs_no_web_framework():
    code = "import sys, molmini.serve.requests, molmini.cli; print(json.dumps([m for m in ('fastapi', 'uvicorn', " \
           "'torch') if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == []
