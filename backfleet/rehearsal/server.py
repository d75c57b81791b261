"""The rehearsal provider over HTTP: a stdlib threading server, in-process or blocking."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import structlog

from backfleet.rehearsal.app import (
    DEFAULT_DIMENSION,
    RehearsalApp,
    Response,
    error_response,
    json_response,
)
from backfleet.rehearsal.faults import BadRequest, Json

DEFAULT_PORT = 8099
MAX_BODY_BYTES = 64 * 1024 * 1024

log = structlog.get_logger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: RehearsalApp, stopping: threading.Event):
        super().__init__(address, _Handler)
        self.app = app
        self.stopping = stopping


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "backfleet-rehearsal/1"
    timeout = 60  # idle keep-alive connections are closed after this

    @property
    def _app(self) -> RehearsalApp:
        return cast(_Server, self.server).app

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no per-request lines on stderr

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise BadRequest("the body is too large")
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, response: Response, rate_headers: bool = False) -> None:
        if response.delay > 0:
            cast(_Server, self.server).stopping.wait(response.delay)
        headers = {"content-type": "application/json", **response.headers}
        if rate_headers:
            headers.update(self._app.rate_headers())
        try:
            self.send_response(response.status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. timed out)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/admin/stats":
            self._send(json_response(200, self._app.stats_json()))
        elif path == "/admin/faults":
            self._send(json_response(200, self._app.faults_json()))
        elif path == "/health":
            self._send(json_response(200, {"ok": True}))
        else:
            self._send(error_response(404, f"unknown path {path}", "invalid_request_error"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            raw = self._body()
            if path in ("/v1/embeddings", "/embeddings"):
                response = self._app.embeddings(self.headers.get("Authorization"), raw)
                self._send(response, rate_headers=True)
                return
            if path == "/admin/faults":
                self._send(json_response(200, self._app.set_faults(_admin_body(raw))))
            elif path == "/admin/limits":
                self._send(json_response(200, self._app.set_limits(_admin_body(raw))))
            elif path == "/admin/reset":
                self._app.reset()
                self._send(json_response(200, {"ok": True}))
            else:
                self._send(error_response(404, f"unknown path {path}", "invalid_request_error"))
        except BadRequest as exc:
            self._send(error_response(400, str(exc), "invalid_request_error"))


def _admin_body(raw: bytes) -> Json:
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


class RehearsalServer:
    """The rehearsal provider on a background thread; port 0 picks a free port."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rpm: int = 3000,
        tpm: int = 1_000_000,
        window_seconds: float = 60.0,
        latency_ms: float = 0.0,
        default_dimension: int = DEFAULT_DIMENSION,
        faults: Json | None = None,
        seed: int = 0,
        require_key: bool = True,
    ) -> None:
        initial = dict(faults or {})
        if latency_ms:
            initial.setdefault("latency_ms", latency_ms)
        self.app = RehearsalApp(
            rpm=rpm,
            tpm=tpm,
            window_seconds=window_seconds,
            default_dimension=default_dimension,
            faults=initial,
            seed=seed,
            require_key=require_key,
        )
        self._host = host
        self._port = port
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the rehearsal server is not started")
        return int(self._httpd.server_address[1])

    @property
    def base(self) -> str:
        """``http://host:port`` (admin endpoints live here)."""
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL: ``http://host:port/v1``."""
        return f"{self.base}/v1"

    def start(self) -> RehearsalServer:
        if self._httpd is not None:
            raise RuntimeError("the rehearsal server is already started")
        self._stopping.clear()
        self._httpd = _Server((self._host, self._port), self.app, self._stopping)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        log.info(
            "rehearsal_started", url=self.url, rpm=self.app.window.rpm, tpm=self.app.window.tpm
        )
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # wakes handlers sleeping on latency or a timeout fault
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None
        log.info("rehearsal_stopped")

    def __enter__(self) -> RehearsalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # in-process conveniences, same as the admin endpoints
    def set_faults(self, **faults: Any) -> Json:
        return self.app.set_faults(faults)

    def stats(self) -> Json:
        return self.app.stats_json()

    def reset(self) -> None:
        self.app.reset()


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    rpm: int = 3000,
    tpm: int = 1_000_000,
    latency_ms: float = 0.0,
    *,
    window_seconds: float = 60.0,
    dimension: int = DEFAULT_DIMENSION,
    error_rate: float = 0.0,
    poison: list[str] | None = None,
    faults: Json | None = None,
    seed: int = 0,
    latency_per_input_ms: float = 0.0,
    require_key: bool = True,
) -> None:
    """Serve the rehearsal provider until interrupted (``backfleet fake-provider``).

    ``error_rate`` is a shortcut for ``{"probability": {"503": error_rate}}``; ``faults`` is
    the full ``/admin/faults`` body and wins over the shortcuts.
    """
    initial: Json = {}
    if error_rate:
        initial["probability"] = {"503": error_rate}
    if poison:
        initial["poison"] = poison
    if latency_per_input_ms:
        initial["latency_per_input_ms"] = latency_per_input_ms
    initial.update(faults or {})
    server = RehearsalServer(
        host,
        port,
        rpm=rpm,
        tpm=tpm,
        window_seconds=window_seconds,
        latency_ms=latency_ms,
        default_dimension=dimension,
        faults=initial,
        seed=seed,
        require_key=require_key,
    )
    server.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
