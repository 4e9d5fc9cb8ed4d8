"""The explorer's web server: FastAPI routes over an :class:`~convirt.app.explorer.Explorer`, and uvicorn.

Routes (all answers are JSON except images; an error is ``{"error": message}`` with its HTTP status, which the
page shows as it is):

================================== ==================================================================================
``GET /``                          the page (``static/index.html``; its script and style under ``/static/``)
``GET /api/about``                 index, encoder, labels, what works (:meth:`Explorer.about`)
``GET /api/search?text=&k=``       text search (``label=`` for Precision@k of that label, ``only=true`` to filter)
``GET /api/similar?row=&k=``       images nearest to index row ``row`` (or ``upload=ID``)
``POST /api/upload?k=``            the request body is an image file: keep it, search by it
``GET /api/image/ROW?size=``       index row ``ROW`` as a PNG (``/api/upload/ID/image`` for an upload)
``GET /api/saliency?row=&text=``   Grad-CAM overlay of the text query on the image (PNG)
``GET /api/zeroshot?row=``         zero-shot class scores of the image
================================== ==================================================================================

Images are addressed by index row, never by path (:mod:`convirt.app.explorer` says what is refused). Requests
whose ``Host`` header is not the loopback name are refused unless the server was started on another address (a web
page on the internet cannot reach the explorer through DNS rebinding), and every answer carries a content security
policy that allows only the explorer's own script.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from convirt.app.explorer import MAX_K, Explorer, ImageRef, RequestError, TooLargeError
from convirt.errors import ConfigError, ConvirtError

STATIC = Path(__file__).parent / "static"
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _png(data: bytes, **headers: str) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600", **headers})


def create_app(explorer: Explorer, host: str = "127.0.0.1", log: Callable[[str], None] = print) -> FastAPI:
    """The web app over ``explorer``; ``host`` is the address it is served on (for the ``Host`` check)."""
    app = FastAPI(title="convirt explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_NAMES) if is_loopback(host) else ["*"])

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(RequestError)
    async def request_error(_request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(ConvirtError)
    async def convirt_error(_request: Request, exc: ConvirtError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}" for e in exc.errors())
        return _error(400, f"bad request ({problems})")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log(f"convirt serve: error answering {request.url.path}:\n{''.join(traceback.format_exception(exc))}")
        return _error(500, f"internal error ({type(exc).__name__}: {exc}); the server keeps running")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/about")
    def about() -> dict:
        return explorer.about()

    k_query = Query(12, ge=1, le=MAX_K)

    @app.get("/api/search")
    def search(text: str = "", k: int = k_query, label: str = "", only: bool = False) -> dict:
        return explorer.text_search(text, k, label, only)

    @app.get("/api/similar")
    def similar(row: int | None = None, upload: str | None = None, k: int = k_query, label: str = "",
                only: bool = False) -> dict:  # fmt: skip
        return explorer.similar(ImageRef(row, upload), k, label, only)

    @app.post("/api/upload")
    async def upload(request: Request, k: int = k_query, label: str = "", only: bool = False) -> dict:
        limit = explorer.settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise TooLargeError(f"the upload is {int(declared):,} bytes; at most {limit:,} are accepted")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise TooLargeError(f"the upload is larger than the {limit:,} bytes accepted")
        upload_id = await run_in_threadpool(explorer.upload, bytes(body))
        result = await run_in_threadpool(explorer.similar, ImageRef(upload=upload_id), k, label, only)
        return result

    @app.get("/api/image/{row}")
    def image(row: int, size: int = 256) -> Response:
        return _png(explorer.image_png(ImageRef(row=row), size))

    @app.get("/api/upload/{upload_id}/image")
    def upload_image(upload_id: str, size: int = 256) -> Response:
        return _png(explorer.image_png(ImageRef(upload=upload_id), size))

    @app.get("/api/saliency")
    def saliency(text: str = "", row: int | None = None, upload: str | None = None) -> Response:
        data, similarity = explorer.saliency_png(ImageRef(row, upload), text)
        return _png(data, **{"X-Similarity": f"{similarity:.4f}"})

    @app.get("/api/zeroshot")
    def zeroshot(row: int | None = None, upload: str | None = None) -> dict:
        return explorer.zero_shot(ImageRef(row, upload))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``port`` 0: any free port); a clear error when it is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot serve on {host!r}: {exc.strerror}", setting="host") from exc
    family, kind, protocol, _, address = infos[0]
    # the protocol must be IPPROTO_TCP (not 0): asyncio disables Nagle's algorithm only on such sockets, and without
    # that every answer on a kept-alive connection waits ~40 ms for the client's delayed ACK
    sock = socket.socket(family, kind, protocol or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot serve on {host}:{port}: {exc.strerror}; choose another port", setting="port"
        ) from exc
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _server(app: FastAPI) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))


def serve(app: FastAPI, sock: socket.socket) -> None:
    """Serve ``app`` on the bound socket until interrupted (Ctrl-C)."""
    _server(app).run(sockets=[sock])


@contextmanager
def background_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` in a thread for the duration of the block; yields its base URL (tests, benchmarks, notebooks)."""
    sock = bind(host, port)
    server = _server(app)  # outside the main thread uvicorn leaves the signal handlers alone
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            time.sleep(0.02)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
