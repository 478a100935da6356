"""HTTP plumbing for the project's small servers (`stages.export serve`, `stages.generate explore`): a threading
server with bounded connections, a request handler that answers every malformed request with a 4xx and one line
of JSON, and the parsers of untrusted query values. Knows nothing of networks.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import PIL.Image

from stages.serving.batching import MAX_BODY_BYTES, MAX_SEED, BatchOptions, DynamicBatcher, Overloaded, RequestError

# ---------------------------------------------------------------------------------------------
# HTTP plumbing shared with `python -m stages.generate explore`


class BoundedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with at most `max_connections` connections (threads) open: the next one is answered
    503 and closed, so a flood of clients costs a bounded number of threads and their memory."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: socketserver's 5 drops the SYNs of 16 clients connecting at once,
                              # and each dropped one waits a 1 s retransmit

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], options: BatchOptions
                 ) -> None:
        self.options = options
        self._slots = threading.BoundedSemaphore(options.max_connections)
        self._count_lock = threading.Lock()
        self.open_connections = 0
        self.rejected_connections = 0
        self.batcher: DynamicBatcher | None = None  # poked when a connection closes (see DynamicBatcher.expected)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.rejected_connections += 1
            body = b'{"error": "too many open connections; retry shortly"}'
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                                % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._count_lock:
            self.open_connections += 1
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread did not start: its slot is free again
            self._closed_one()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed_one()

    def _closed_one(self) -> None:
        with self._count_lock:
            self.open_connections -= 1
        self._slots.release()
        if self.batcher is not None:
            self.batcher.poke()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-response is not the server's problem; handlers answer their own errors


class SafeHandler(BaseHTTPRequestHandler):
    """Request plumbing for JSON/PNG servers: one-line JSON errors, bounded bodies, 405 for other methods,
    socket timeouts, and no stack trace or server version in answers."""

    server: BoundedHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "sg2"
    sys_version = ""
    max_body_bytes = MAX_BODY_BYTES
    allowed_methods = ("GET", "POST")

    def setup(self) -> None:
        self.timeout = self.server.options.timeout_s  # applied to the socket by StreamRequestHandler.setup
        super().setup()
        # Headers and body go out as two writes; with Nagle's algorithm the second waits for the client's
        # delayed ACK (40 ms on Linux) on every keep-alive request.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # the base class names the argument `format`
        pass  # one line per request on stderr would drown the start-up line; errors go back to the client

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler answers an unknown method with 501 (a server error); it is the client's: 405.
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def _method_not_allowed(self) -> None:
        self.close_connection = True  # a body we did not read must not be parsed as the next request
        self._json(405, {"error": f"method {self.command[:20]!r} not allowed; use {', '.join(self.allowed_methods)}"},
                   {"Allow": ", ".join(self.allowed_methods)})

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Malformed request lines and headers (400, 414, 431) as one-line JSON like every other error, with a
        # status line even when the request line was too broken to name an HTTP version. http.server calls only
        # this for what the client sent wrong, so its 505 (an unknown HTTP version) is a 400 here.
        self.close_connection = True
        if code >= 500:
            code, message = 400, f"{message or 'bad request'} ({code})"
        if self.request_version in ("HTTP/0.9", ""):
            self.request_version = "HTTP/1.0"
        with contextlib.suppress(OSError):
            self._json(code, {"error": message or explain or "bad request"})

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        if status >= 400 and self.command == "POST":
            self.close_connection = True  # the body may be unread
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", {"Cache-Control": "no-store",
                                                                         **(headers or {})})

    def _body(self) -> Any:
        """The request's JSON body: at most `max_body_bytes`, with a Content-Length (no chunked bodies)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            raise RequestError("chunked request bodies are not accepted; send a Content-Length", 411)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True  # the body stays unread: it must not be parsed as the next request
            raise RequestError("bad Content-Length") from None
        if not 0 <= length <= self.max_body_bytes:  # read no more than a valid request can need
            self.close_connection = True
            raise RequestError(f"request body of {length} bytes; at most {self.max_body_bytes} are read")
        raw = self.rfile.read(length)
        if len(raw) != length:
            self.close_connection = True
            raise RequestError("request body shorter than its Content-Length")
        try:
            return json.loads(raw or b"null")
        except (ValueError, RecursionError) as exc:  # RecursionError: [[[[...]]]] nested deeper than Python goes
            raise RequestError(f"body is not JSON: {type(exc).__name__}: {str(exc)[:80]}") from None

    def _route(self) -> None:
        """Answer the request (GET and POST); the server's handler defines it and raises RequestError for 4xx."""
        raise RequestError(f"no {self.command} {self.path[:80]}", 404)

    def do_GET(self) -> None:
        self._guarded(self._route)

    def do_POST(self) -> None:
        self._guarded(self._route)

    def _guarded(self, route: Callable[[], None]) -> None:
        """Run `route`, answering its `RequestError` (4xx), `Overloaded` (503) or anything unexpected (500)."""
        try:
            route()
        except RequestError as exc:
            self._json(exc.status, {"error": str(exc).splitlines()[0] if str(exc) else "bad request"})
        except Overloaded as exc:
            self._json(503, {"error": str(exc)}, {"Retry-After": "1"})
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client went away or stalled mid-body: nobody to answer
        except Exception as exc:  # the server keeps serving; the client hears what failed
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._json(500, {"error": f"internal error: {type(exc).__name__}: {str(exc)[:200]}".splitlines()[0]})


def parse_seed(value: Any, what: str = "seed") -> int:
    """A seed from a query string or JSON: a plain integer in [0, 2**32) (no bools, floats, signs or 1e3)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise RequestError(f"{what} must be an integer in [0, {MAX_SEED}], got {str(value)[:40]!r}")
    text = str(value).strip()
    if not text.isdigit() or not text.isascii() or len(text) > 10 or int(text) > MAX_SEED:
        raise RequestError(f"{what} must be an integer in [0, {MAX_SEED}], got {text[:40]!r}")
    return int(text)


def parse_number(value: Any, what: str, lo: float, hi: float) -> float:
    """A finite number in [lo, hi] from a query string or JSON."""
    if isinstance(value, bool) or not isinstance(value, int | float | str) or len(str(value)) > 40:
        raise RequestError(f"{what} must be a number in [{lo:g}, {hi:g}], got {str(value)[:40]!r}")
    try:
        x = float(value)
    except ValueError:
        raise RequestError(f"{what} must be a number in [{lo:g}, {hi:g}], got {str(value)[:40]!r}") from None
    if not np.isfinite(x):
        raise RequestError(f"{what} must be a finite number, got {str(value)[:40]!r}")
    if not lo <= x <= hi:
        raise RequestError(f"{what} must be in [{lo:g}, {hi:g}], got {x:g}")
    return x


def query_params(query: str, known: Sequence[str], max_fields: int = 32) -> dict[str, str]:
    """A query string as {name: value} (the last of repeated names), refusing unknown names and garbage."""
    if len(query) > 4096:
        raise RequestError("query string longer than 4096 characters", 414)
    try:
        raw = parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=max_fields,
                       errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise RequestError(f"malformed query string (at most {max_fields} fields, UTF-8)") from None
    unknown = sorted(k for k in raw if k not in known)
    if unknown:
        raise RequestError(f"unknown parameter {unknown[0][:40]!r}; known: {', '.join(known)}")
    return {k: v[-1] for k, v in raw.items()}


def png_bytes(image: np.ndarray, compress_level: int = 6) -> bytes:
    """uint8 [H, W, C] -> PNG file bytes (C = 1 is saved as greyscale)."""
    buf = io.BytesIO()
    PIL.Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buf, format="PNG",
                                                                               compress_level=compress_level)
    return buf.getvalue()
