"""`molmini serve`: an OpenAI-compatible chat-completions server (`POST /v1/chat/completions`, `GET /v1/models`,
`GET /health`) over one checkpoint, so any OpenAI client or chat UI can talk to a molmini model.

Requests are checked and their images processed in the HTTP threads (molmini/serve/requests.py); one worker
thread owns the model. It takes requests off a queue, waits up to `batch_wait_ms` for more (up to
`max_batch_size`), and answers requests that share generation settings with one batched `generate` call:
left-padded, each row cut at its own max_tokens. A streaming request runs alone, through
`MolminiModel.stream`, and is sent as server-sent `chat.completion.chunk` events ending with `data: [DONE]`.

FastAPI and uvicorn are imported only here, so `import molmini` stays light (`pip install "molmini[serve]"`).
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (`Request`), which are
# imported inside build_app and so cannot be looked up later from strings.
import asyncio
import json
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from molmini.serve.requests import ChatRequest, Limits, RequestError, parse_chat_request

log = logging.getLogger(__name__)
SERVER_PACKAGES = ("fastapi", "uvicorn")


def missing_server_packages() -> list[str]:
    """The packages `molmini serve` needs that are not installed."""
    import importlib
    missing = []
    for name in SERVER_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (the model ended its answer) or "length" (max_tokens reached)
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Job:
    """One request on its way through the worker: its processed prompt and where its answer goes."""
    request: ChatRequest
    sample: dict[str, Any]  # the processor's prompt: input_ids and image tensors
    max_tokens: int
    future: Future = field(default_factory=Future)  # the Completion of a non-streaming request
    pieces: "queue.Queue[str | Completion | BaseException]" = field(default_factory=queue.Queue)  # streaming
    cancelled: threading.Event = field(default_factory=threading.Event)  # the streaming client went away

    @property
    def prompt_tokens(self) -> int:
        return len(self.sample["input_ids"])


class TokenCounter(StoppingCriteria):
    """Counts the tokens a one-row `generate` has made (the streamer gives text, not tokens) and stops it
    when its client has gone."""

    def __init__(self, stop_token_id: int, cancelled: threading.Event):
        self.stop_token_id, self.cancelled = stop_token_id, cancelled
        self.generated, self.last_token = 0, None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
        self.generated, self.last_token = input_ids.shape[1], int(input_ids[0, -1])  # new tokens only (embeds in)
        return torch.full((input_ids.shape[0],), self.cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

    @property
    def finish_reason(self) -> str:
        return "stop" if self.last_token == self.stop_token_id else "length"


class Batcher:
    """The worker thread that runs the model: batches of queued requests, and streaming requests one at a time.
    `stats()` counts what it ran (batches < requests shows that requests were batched)."""

    def __init__(self, model, max_batch_size: int = 8, batch_wait_ms: float = 10.0):
        self.model, self.processor = model, model.processor
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_ms / 1000
        self.jobs: "queue.Queue[Job | None]" = queue.Queue()
        self.batches = self.requests = self.streams = self.largest_batch = 0
        self.thread = threading.Thread(target=self._run, name="molmini-batcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def stats(self) -> dict[str, int]:
        return {"batches": self.batches, "batched_requests": self.requests, "streamed_requests": self.streams,
                "largest_batch": self.largest_batch, "max_batch_size": self.max_batch_size,
                "queued": self.jobs.qsize()}

    def _run(self) -> None:
        while (first := self.jobs.get()) is not None:
            jobs, stopping = self._collect(first)
            groups: dict[Any, list[Job]] = {}
            for job in jobs:
                if not job.request.stream:
                    groups.setdefault(job.request.sampling, []).append(job)
            for group in groups.values():
                self._generate(group)
            for job in jobs:
                if job.request.stream:
                    self._stream(job)
            if stopping:
                return

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """`first` and the requests that arrive within batch_wait_ms of it, up to max_batch_size; and whether
        the stop signal came meanwhile."""
        jobs, deadline = [first], time.monotonic() + self.batch_wait_s
        while len(jobs) < self.max_batch_size and (wait := deadline - time.monotonic()) > 0:
            try:
                job = self.jobs.get(timeout=wait)
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _generate(self, jobs: list[Job]) -> None:
        """One batched `generate` for requests with the same sampling settings, to the longest max_tokens."""
        start = time.perf_counter()
        try:
            batch = self.processor.collate([job.sample for job in jobs], padding_side="left")
            longest = max(job.max_tokens for job in jobs)
            new = self.model.generate_ids(**self.model._on_device(batch), max_new_tokens=longest,
                                          **jobs[0].request.sampling.generate_kwargs())
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error; the worker goes on
            log.exception("generation failed for a batch of %d requests", len(jobs))
            for job in jobs:
                job.future.set_exception(e)
            return
        self.batches, self.requests = self.batches + 1, self.requests + len(jobs)
        self.largest_batch = max(self.largest_batch, len(jobs))
        log.info("batch %d: %d requests, %d new tokens at most, %.2f s", self.batches, len(jobs), new.shape[1],
                 time.perf_counter() - start)
        for job, row in zip(jobs, new.tolist()):
            job.future.set_result(self._completion(job, row[:job.max_tokens]))

    def _completion(self, job: Job, tokens: list[int]) -> Completion:
        stop = self.processor.stop_token_id
        ended = stop in tokens
        tokens = tokens[:tokens.index(stop) + 1] if ended else tokens
        text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        return Completion(text, "stop" if ended else "length", job.prompt_tokens, len(tokens))

    def _stream(self, job: Job) -> None:
        if job.cancelled.is_set():
            return
        counter = TokenCounter(self.processor.stop_token_id, job.cancelled)
        request = job.request
        try:
            for piece in self.model.stream_sample(job.sample, job.max_tokens,
                                                  stopping_criteria=StoppingCriteriaList([counter]),
                                                  **request.sampling.generate_kwargs()):
                job.pieces.put(piece)
            self.streams += 1
            job.pieces.put(Completion("", counter.finish_reason, job.prompt_tokens, counter.generated))
        except Exception as e:  # noqa: BLE001 - the client hears of it; the worker goes on
            log.exception("generation failed for a streaming request")
            job.pieces.put(e)


def prepare_job(body: Any, model, limits: Limits) -> Job:
    """The checked request with its prompt processed, and its max_tokens within the model's context."""
    request = parse_chat_request(body, limits)
    try:
        sample = model.processor.process_prompt(request.images, request.prompt, request.history)
    except ValueError as e:  # e.g. <image> markers that do not match the images
        raise RequestError(f"the messages cannot be laid out as a prompt: {e}", param="messages") from e
    prompt_tokens = len(sample["input_ids"])
    context = getattr(model.lm.config, "max_position_embeddings", None) or prompt_tokens + limits.max_new_tokens
    room = context - prompt_tokens
    max_tokens = request.max_tokens or min(limits.max_new_tokens, room)
    if max_tokens < 1 or max_tokens > room:
        raise RequestError(f"the prompt is {prompt_tokens} tokens (with its images) and max_tokens is {max_tokens}: "
                           f"over the model's context of {context} tokens; lower max_tokens, or send a smaller "
                           "image or a shorter conversation", param="max_tokens")
    return Job(request, sample, max_tokens)


def visible_text(pieces: Iterator[str]) -> Iterator[str]:
    """The pieces with the answer's leading and trailing whitespace held back, so that they join to exactly
    the stripped text a non-streaming request returns."""
    started, pending = False, ""
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        text = pending + piece
        body = text.rstrip()
        pending = text[len(body):]
        if body:
            yield body


def build_app(model, model_name: str, limits: Limits = Limits(), max_batch_size: int = 8,
              batch_wait_ms: float = 10.0):
    """The FastAPI app serving `model` under `model_name`; `app.state.batcher` runs it (started with the app)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    batcher = Batcher(model, max_batch_size, batch_wait_ms)

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="molmini", lifespan=lifespan)
    app.state.batcher = batcher
    created = int(time.time())

    @app.exception_handler(RequestError)
    async def refused(_request, error: RequestError):
        log.info("refused a request: %s", error)
        return JSONResponse(error.body(), status_code=400)

    @app.exception_handler(Exception)
    async def failed(_request, error: Exception):
        log.error("failed to answer a request: %r", error)
        return JSONResponse({"error": {"message": f"the server failed: {type(error).__name__}: {error}",
                                       "type": "server_error", "param": None, "code": None}}, status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **batcher.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "molmini"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(http_request: Request):
        try:
            body = json.loads(await http_request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the request body is not valid JSON ({e}); send a JSON object with 'messages'") from e
        job = await run_in_threadpool(prepare_job, body, model, limits)
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name}
        batcher.submit(job)
        if job.request.stream:
            return StreamingResponse(server_sent_events(job, reply), media_type="text/event-stream")
        done: Completion = await asyncio.wrap_future(job.future)
        return {**reply, "object": "chat.completion", "usage": usage(done),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                             "finish_reason": done.finish_reason, "logprobs": None}]}

    return app


def usage(done: Completion) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def server_sent_events(job: Job, reply: dict[str, Any]) -> Iterator[str]:
    """OpenAI's `chat.completion.chunk` events of a streaming job: the role, the text pieces, the finish
    reason, the usage when asked for (stream_options.include_usage), then `[DONE]`."""
    def event(delta: dict | None, finish_reason: str | None = None, **extra: Any) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                              "logprobs": None}]
        return f"data: {json.dumps({**reply, 'object': 'chat.completion.chunk', 'choices': choices, **extra})}\n\n"

    def pieces() -> Iterator[str]:
        while not isinstance(item := job.pieces.get(), (Completion, BaseException)):
            yield item
        outcome.append(item)

    outcome: list[Completion | BaseException] = []
    try:
        yield event({"role": "assistant", "content": ""})
        for text in visible_text(pieces()):
            yield event({"content": text})
        done = outcome[0]
        if isinstance(done, BaseException):
            error = {"message": f"generation failed: {type(done).__name__}: {done}", "type": "server_error"}
            yield f"data: {json.dumps({'error': error})}\n\n"
        else:
            yield event({}, done.finish_reason)
            if job.request.include_usage:
                yield event(None, usage=usage(done))
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # a client that hung up stops the generation at its next token


def serve(model_path: str, host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 8,
          batch_wait_ms: float = 10.0, limits: Limits = Limits(), device: str = "auto", dtype: str | None = None,
          model_name: str | None = None, quantize: str = "none", compile: bool = False) -> None:
    """Load the checkpoint (sped up on a CPU by `quantize` and `compile`, molmini/model/fast_inference.py) and
    serve it until interrupted."""
    import uvicorn

    from molmini.model.fast_inference import check_options, speed_up
    from molmini.model.vlm import MolminiModel

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    check_options(quantize, compile, device)
    model = speed_up(MolminiModel.from_pretrained(model_path, device=device, dtype=dtype), quantize, compile)
    name = model_name or str(model_path)
    log.info("serving %s on http://%s:%d/v1 (batches of up to %d, waiting %g ms)", name, host, port,
             max_batch_size, batch_wait_ms)
    uvicorn.run(build_app(model, name, limits, max_batch_size, batch_wait_ms), host=host, port=port)
