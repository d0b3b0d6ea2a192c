"""The HTTP service: routes, limits and errors around one loaded classifier and its dynamic batcher.

    GET  /          the page: drop, paste or pick images, see their top classes
    POST /predict   an image as the raw body, or multipart field "file" (several -> a list): top-k JSON
    POST /explain   the same uploads: top-k and a saliency map per image, heatmap numbers and overlay PNG
    GET  /model     the model card;  GET /health  liveness, batching, connection and memory counters
    GET  /report/   the run's report

`create_app(classifier, settings)` builds the app (the model is loaded once, by the caller); its lifespan
starts and stops the batcher. Every mistake a client can make is a 4xx answer {"error": "one sentence"} and
leaves the service as it was. Slow and stalled clients are dropped by the connection's protocol, and what the
service takes on at once is bounded by work, not sockets (connections.py): past a limit, 503 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from ..data.prepare import declared_size
from ..errors import AlexnetError
from ..runtime import Classifier, top_predictions
from .batching import BatcherStopped, DynamicBatcher
from .connections import (RETRY_AFTER_S, Admission, ConnectionLimits, HeldBody, Overloaded, connection_cap,
                          guarded_protocol)
from .errors import ClientError, image_refusal
from .explainer import Explainer, gradient_passes

try:
    import psutil
except ImportError:  # a deployment without the package's dependencies (docs/serving.md): /health has no RSS
    psutil = None

PAGE = Path(__file__).with_name("page") / "index.html"
# Images of at most this many pixels (by their header) are decoded on the event loop: a CIFAR-sized JPEG takes
# ~35 us, less than handing it to a decoding thread and back; larger ones go to the decoding threads.
INLINE_PIXELS = 96 * 96
FIELD = "file"  # the multipart field that carries images


@dataclass(frozen=True)
class ServeSettings:
    """How `alexnet serve` runs: address, batching knobs, answers and limits."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32  # images per forward pass; 1 = batching off
    max_wait_ms: float = 5.0  # how long the oldest queued image may wait for others
    top_k: int = 5
    max_image_bytes: int = 20 * 2 ** 20  # one encoded image
    max_pixels: int = 40_000_000  # one image's width x height, read from its header before decoding
    max_request_bytes: int = 64 * 2 ** 20  # a whole request body (several multipart files)
    max_files: int = 64  # images in one multipart request
    decode_threads: int = 0  # 0 = one per core
    # Slow and stalled clients (connections.py, docs/serving.md "Slow and stalled clients").
    header_timeout: float = 10.0  # seconds for a request's line and headers (from the connection's opening, or
    # from the end of the previous answer on a keep-alive connection)
    body_timeout: float = 10.0  # seconds an upload may stall, or fall behind min_upload_rate
    min_upload_rate: float = 1024.0  # bytes/s a body must average (0 = only stalls count)
    max_in_flight: int = 64  # requests whose body has arrived, being decoded, queued or predicted; more: 503
    max_connections: int = 4096  # open connections (lowered to fit the open-files limit); more: closed at once
    max_buffered_bytes: int = 256 * 2 ** 20  # request bodies held in memory, all requests together; more: 503

    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(header_timeout=self.header_timeout, body_timeout=self.body_timeout,
                                min_upload_rate=self.min_upload_rate, max_connections=self.max_connections)


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class JSONBytes(Response):
    """JSON from a ready `json.dumps`: the hot path skips FastAPI's encoders and pydantic."""

    media_type = "application/json"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


async def read_body(request: Request, limit: int, what: str, held: HeldBody) -> bytes:
    """The request body, refused (413) as soon as it is known to pass `limit` bytes, and (503) as soon as it would
    pass the service's budget of body bytes in memory; `held` counts what it holds against that budget."""
    length = request.headers.get("content-length")
    if length is not None and length.isascii() and length.isdigit():
        if int(length) > limit:
            raise ClientError(413, f"{what} is {int(length):,} bytes, over the limit of {limit:,}; send a smaller one")
        held.expect(int(length))  # against the bytes held now: a declared length alone reserves nothing
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ClientError(413, f"{what} is over the limit of {limit:,} bytes; send a smaller one")
            held.add(len(chunk))
            chunks.append(chunk)
    except ClientDisconnect:  # the client left, or was dropped for a stalled upload: nobody reads the answer
        raise ClientError(400, f"the connection closed before {what} arrived") from None
    return b"".join(chunks)


async def multipart_files(request: Request, body: bytes, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every upload in the multipart field "file", in order."""

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=settings.max_files, max_fields=64,
                                     max_part_size=64 * 2 ** 10).parse()
    except MultiPartException as e:
        raise ClientError(400, f"the multipart body cannot be parsed ({e}); send images as -F file=@cat.jpg")
    try:
        uploads = form.getlist(FIELD)
        if not uploads:
            raise ClientError(400, f"the multipart form has no field {FIELD!r}; send images as -F {FIELD}=@cat.jpg")
        files = []
        for i, upload in enumerate(uploads):
            if not isinstance(upload, UploadFile):
                raise ClientError(400, f"field {FIELD!r} holds text, not a file; send images as -F {FIELD}=@cat.jpg")
            files.append((upload.filename or f"{FIELD}[{i}]", await upload.read()))
        return files
    finally:
        await form.close()


def page_html() -> bytes:
    return PAGE.read_bytes()


def create_app(classifier: Classifier, settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The service around a loaded `classifier` (see alexnet.runtime.load_classifier)."""
    batcher = DynamicBatcher(classifier.probabilities, settings.max_batch, settings.max_wait_ms,
                             maps=gradient_passes(classifier))
    threads = settings.decode_threads or os.cpu_count() or 2
    decoders = ThreadPoolExecutor(threads, thread_name_prefix="alexnet-decode")
    explainer = Explainer(classifier, batcher, threads)
    started = time.time()
    page = page_html()
    limits = ("max_image_bytes", "max_pixels", "max_request_bytes", "max_files")
    card = {**classifier.card, "report_url": "/report/report.html" if classifier.report_dir else None,
            "top_k": settings.top_k, "limits": {k: getattr(settings, k) for k in limits}}
    card_json = dumps(card)
    admission = Admission(settings.max_in_flight, settings.max_buffered_bytes)
    process = psutil.Process() if psutil is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            decoders.shutdown(wait=False, cancel_futures=True)
            explainer.close()

    # No /docs: FastAPI's documentation pages fetch their scripts from a CDN. /openapi.json stays.
    app = FastAPI(title="alexnet", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher, app.state.classifier, app.state.settings = batcher, classifier, settings
    app.state.admission = admission  # its counters are shared with the connections' protocol (Server)

    async def prepare(name: str, data: bytes) -> np.ndarray:
        if not data:
            raise ClientError(400, f"{name} is empty; send the bytes of an image file")
        if len(data) > settings.max_image_bytes:
            raise ClientError(413, f"{name} is {len(data):,} bytes, over the limit of {settings.max_image_bytes:,} "
                                   "per image; send a smaller image")
        try:
            size = declared_size(data)
        except Exception:  # noqa: BLE001 - an unreadable header is the decoder's to name, in a decoding thread
            size = None
        try:
            if size is not None and size[0] * size[1] <= INLINE_PIXELS:
                # A small picture decodes in tens of microseconds: cheaper here than the hand-off to a thread.
                return classifier.prepare(data, name, settings.max_pixels, size)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(decoders, classifier.prepare, data, name, settings.max_pixels, size)
        except AlexnetError as e:  # over a size cap, unreadable, ...
            raise image_refusal(name, e) from None

    def top_k_of(request: Request) -> int:
        if b"top_k" not in request.scope.get("query_string", b""):  # the usual case, without parsing the query
            return settings.top_k
        text = request.query_params.get("top_k")
        if text is None:
            return settings.top_k
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise ClientError(400, f"top_k must be a whole number >= 1, got {text!r}")
        return int(text)

    async def uploads(request: Request, held: HeldBody) -> tuple[list[tuple[str, bytes]], bool]:
        """Every image a request carries, as (name, bytes), and whether the answer is a list (several multipart
        files). /predict and /explain take the same uploads under the same limits."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            body = await read_body(request, settings.max_request_bytes, "the request body", held)
            files = await multipart_files(request, body, settings)
        elif kind in ("", "application/octet-stream") or kind.startswith("image/"):
            name = request.query_params.get("name") or "upload"
            files = [(name, await read_body(request, settings.max_image_bytes, f"image {name}", held))]
        else:
            raise ClientError(415, f"Content-Type {kind} is not an image; send the image as the body with "
                                   f"Content-Type image/jpeg (or image/png ...), or as multipart field {FIELD!r}")
        return files, kind == "multipart/form-data" and len(files) > 1

    async def prepared(files: list[tuple[str, bytes]]) -> list[np.ndarray]:
        if len(files) == 1:
            return [await prepare(*files[0])]
        return list(await asyncio.gather(*(prepare(name, data) for name, data in files)))

    # A request's body bytes count against --max-buffered-bytes from its first byte to its answer; once the body
    # has arrived, the request counts against --max-in-flight until the model has answered it.
    async def predict(request: Request) -> Response:
        top_k = top_k_of(request)
        with admission.body() as held:
            files, many = await uploads(request, held)
            with admission.work():
                images = await prepared(files)
                try:
                    rows = await batcher.predict(images)
                except BatcherStopped:
                    return error_response(503, "the service is shutting down; retry on another instance")
        results = top_predictions(np.stack(rows), classifier.classes, [name for name, _ in files], top_k)
        return JSONBytes(dumps(results if many else results[0]))

    async def explain(request: Request) -> Response:
        top_k = top_k_of(request)
        options = explainer.options(request.query_params)  # a bad method or class is refused before the upload
        with admission.body() as held:
            files, many = await uploads(request, held)
            with admission.work():
                images = await prepared(files)
                try:
                    answers = await explainer.explain(files, images, options, top_k)
                except BatcherStopped:
                    return error_response(503, "the service is shutting down; retry on another instance")
        return JSONBytes(b"[" + b",".join(answers) + b"]" if many else answers[0])

    # The hot path is a plain Starlette route: no dependency solving or response model on each request.
    app.router.add_route("/predict", predict, methods=["POST"])
    app.router.add_route("/explain", explain, methods=["POST"])

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return HTMLResponse(page)

    @app.get("/model")
    async def model() -> Response:
        return JSONBytes(card_json)

    @app.get("/health")
    async def health() -> Response:
        return JSONBytes(dumps({"status": "ok", "backend": classifier.backend, "model": classifier.card["name"],
                                "uptime_s": round(time.time() - started, 1),
                                "batching": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                                             **batcher.counters.as_dict()},
                                "connections": admission.counters.connections(), "work": admission.as_dict(),
                                "rss_mb": round(process.memory_info().rss / 2 ** 20, 1) if process else None}))

    if classifier.report_dir is not None:
        @app.get("/report", include_in_schema=False)
        @app.get("/report/", include_in_schema=False)
        async def report() -> Response:
            return RedirectResponse("/report/report.html")

        app.mount("/report", StaticFiles(directory=classifier.report_dir), name="report")

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> Response:
        return error_response(exc.status, exc.message)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> Response:
        return JSONResponse({"error": exc.message}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        messages = {404: f"no such page: {request.url.path}; the service answers /, /predict, /explain, /model and "
                         "/health",
                    405: f"{request.method} is not allowed on {request.url.path}; see GET / for how to send images"}
        return error_response(exc.status_code, messages.get(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        # Ours to fix, not the client's: one line in the answer; uvicorn logs the traceback.
        return error_response(500, f"internal error while answering {request.url.path} ({type(exc).__name__}); "
                                   "the service keeps running")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(422, f"the request does not fit {request.url.path}: {exc.errors()[0].get('msg', '')}")

    return app


class Server:
    """uvicorn on a socket bound beforehand (so --port 0 works and a taken port is one clear line)."""

    def __init__(self, app: FastAPI, settings: ServeSettings):
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((settings.host, settings.port))
        except OSError as e:
            self.socket.close()
            raise AlexnetError(f"cannot listen on {settings.host}:{settings.port} ({e.strerror or e}); pick another "
                               "--port (0 = any free one) or --host") from None
        self.socket.listen(2048)
        self.host, self.port = self.socket.getsockname()[:2]
        self.app, self.limits = app, settings.connection_limits()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM, then finish the requests in flight and return."""
        # No uvicorn limit_concurrency: it counts open connections, so clients that connect and stall would hold
        # every slot. The app bounds the work and the body bytes in memory (Admission); the protocol drops slow
        # and stalled clients and caps the open connections (connections.py). The protocol is httptools' (no
        # WebSocket upgrades: the service has no WebSocket routes).
        counters = self.app.state.admission.counters
        limits = replace(self.limits, max_connections=connection_cap(self.limits.max_connections))
        counters.max_connections = limits.max_connections
        config = uvicorn.Config(self.app, http=guarded_protocol(limits, counters), ws="none", log_level="warning",
                                access_log=False, lifespan="on", timeout_graceful_shutdown=5)
        _QuietServer(config).run(sockets=[self.socket])


class _QuietServer(uvicorn.Server):
    """uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown; `alexnet serve` returns instead, so the
    command ends with its own line and exit code 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
