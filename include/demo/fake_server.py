"""Shared machinery for fake vendor APIs: a real HTTP server on 127.0.0.1 with a request
log, Basic auth and a queue of switchable faults.

The tests' fakes (`tests/fakes/`) and the demo's Netmera sandbox (`include.demo.sandbox`)
are built on it. Clients are tested over real sockets (no patching of `requests`), so timeouts,
resets and short bodies behave as they do in production.

Usage::

    with FakeMixpanel(...) as fake:           # or fake.start() ... fake.stop()
        fake.base_url                          # "http://127.0.0.1:PORT"
        fake.fail_next("429", retry_after=1)   # == fake.faults.push(Fault("429", retry_after=1))
        fake.fail_next("500", path=ENGAGE, after=2, times=3)
        fake.requests                          # list[Recorded], in arrival order

Fault kinds (one fault is consumed per matching request):

- ``"429"``, ``"500"``, ``"503"`` (any 3-digit status works): answer that status with the fake's
  error body (``message``, default "injected fault"); ``retry_after`` (seconds, or a string
  such as an HTTP date) adds ``Retry-After``.
- ``"slow"``: wait ``delay`` seconds, then answer normally (to exceed a client's timeout; a
  client that has gone away is tolerated).
- ``"drop"``: reset the connection without sending any response.
- ``"truncated"`` (alias ``"truncated_json"``): the real status and headers, ``Content-Length``
  of the full body, half the body, then close - a download or JSON cut short.

Matching: ``path`` is a prefix (``"/api/query/engage"``) or a glob where ``*`` is one path
segment and ``**`` anything (``"/api/5/cohorts/request/*/file"``); ``""`` matches every request.
Faults form a FIFO queue: a request uses the first queued fault whose path matches; that fault
first lets ``after`` such requests through, then fails ``times`` of them and leaves the queue.
Authentication is checked before faults, so a rejected request consumes none.

Nothing logged or recorded contains credentials: ``Authorization`` is recorded as its scheme only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, urlsplit

FAULT_KINDS = ("slow", "drop", "truncated", "truncated_json")


@dataclass
class Recorded:
    """One request as the server saw it; ``status`` is 0 until answered, and stays 0 for a drop."""

    method: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names; Authorization reduced to "<scheme> <redacted>"
    body: bytes
    at: float  # time.monotonic() on arrival
    status: int = 0
    done: float = 0.0  # time.monotonic() once the answer was sent; 0 until then
    fault: str | None = None  # the fault kind applied, if any

    def param(self, name: str) -> str | None:
        """The last value of `name` from the form, else the query (how the fakes read params)."""
        values = self.form.get(name) or self.query.get(name)
        return values[-1] if values else None


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def path_matcher(pattern: str) -> re.Pattern[str]:
    """A prefix, or a glob when it has `*` (`*` = one path segment, `**` = anything)."""
    if "*" not in pattern:
        return re.compile(re.escape(pattern) + ".*", re.S)
    parts = (re.escape(part).replace(r"\*", "[^/]*") for part in pattern.split("**"))
    return re.compile(".*".join(parts), re.S)


@dataclass
class Fault:
    """A misbehaviour for upcoming requests; see the module docstring for kinds and matching."""

    kind: str
    path: str = ""
    after: int = 0
    times: int = 1
    retry_after: float | str | None = None
    delay: float = 1.0
    message: str = "injected fault"  # the error text of a status fault

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS and not re.fullmatch(r"[1-5]\d\d", self.kind):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.times < 1 or self.after < 0:
            raise ValueError("times must be >= 1 and after >= 0")
        self._matcher = path_matcher(self.path)

    def matches(self, path: str) -> bool:
        return self._matcher.fullmatch(path) is not None


class FaultQueue:
    """Thread-safe FIFO of faults; `take` decides the fault (if any) for one request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def push(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def take(self, path: str) -> Fault | None:
        with self._lock:
            fault = next((f for f in self._faults if f.matches(path)), None)
            if fault is None:
                return None
            if fault.after > 0:
                fault.after -= 1
                return None
            fault.times -= 1
            if fault.times == 0:
                self._faults.remove(fault)
            return fault


def format_retry_after(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up is normal here (timeouts, faults); anything else is a fake bug."""
        if not isinstance(sys.exc_info()[1], OSError):
            self.fake.errors.append(traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real APIs do; every answer has a length
    server: _HTTPServer
    timeout = 10  # idle keep-alive connections end eventually

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request line may carry tokens, and the log is `FakeServer.requests`."""

    def _serve(self) -> None:
        self.server.fake._dispatch(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve


class FakeServer:
    """Base of the fakes: subclasses implement `route` (and may override the error hooks)."""

    realm: ClassVar[str] = "fake"

    def __init__(self, username: str | None = None, secret: str | None = None) -> None:
        self.username = username
        self._secret = secret
        self.faults = FaultQueue()
        self.errors: list[str] = []  # tracebacks of bugs in the fake itself; tests assert empty
        self._log: list[Recorded] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, port: int = 0) -> Self:
        """Listen on 127.0.0.1:`port` (0: any free port, see `port`)."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def refuse_connections(self) -> None:
        """Close the listening socket but keep the address, so URLs made for this server still
        look right while clients get "connection refused" (a host that is down)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # wakes "slow" sleepers
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # end idle keep-alive connections now
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- log and faults --------------------------------------------------------------------

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._log)

    def requests_to(self, path: str) -> list[Recorded]:
        """Recorded requests whose path matches `path` (prefix or glob, as for faults)."""
        matcher = path_matcher(path)
        return [r for r in self.requests if matcher.fullmatch(r.path)]

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def fail_next(self, kind: str, times: int = 1, **kw: Any) -> Fault:
        """Shorthand for `faults.push(Fault(kind, times=times, **kw))`."""
        return self.faults.push(Fault(kind, times=times, **kw))

    # --- hooks for subclasses --------------------------------------------------------------

    def route(self, req: Recorded) -> Response:
        raise NotImplementedError

    def error_response(self, status: int, message: str) -> Response:
        """The body a vendor sends with an error status (faults, auth and validation errors)."""
        return json_response({"error": message}, status)

    def authorize(self, authorization: str | None) -> Response | None:
        """None to let the request in; Basic auth against username/secret when configured."""
        if self.username is None:
            return None
        expected = base64.b64encode(f"{self.username}:{self._secret}".encode()).decode()
        if authorization is not None and authorization.strip() == f"Basic {expected}":
            return None
        response = self.error_response(401, "Invalid credentials")
        response.headers["WWW-Authenticate"] = f'Basic realm="{self.realm}"'
        return response

    # --- request handling ------------------------------------------------------------------

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def _record(self, handler: _Handler) -> tuple[Recorded, str | None]:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        url = urlsplit(handler.path)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        authorization = headers.get("authorization")
        if authorization is not None:
            headers["authorization"] = f"{authorization.split(' ', 1)[0]} <redacted>"
        form: dict[str, list[str]] = {}
        if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        req = Recorded(
            method=handler.command,
            path=url.path,
            query=parse_qs(url.query, keep_blank_values=True),
            form=form,
            headers=headers,
            body=body,
            at=time.monotonic(),
        )
        with self._lock:
            self._log.append(req)
        return req, authorization

    def _dispatch(self, handler: _Handler) -> None:
        req, authorization = self._record(handler)
        response = self.authorize(authorization)
        fault = None if response is not None else self.faults.take(req.path)
        req.fault = fault.kind if fault else None
        if fault is not None and fault.kind == "drop":
            handler.close_connection = True
            # SO_LINGER 0: close() sends a TCP reset instead of an orderly FIN.
            handler.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            handler.connection.close()
            return
        if fault is not None and fault.kind.isdigit():
            response = self.error_response(int(fault.kind), fault.message)
            if fault.retry_after is not None:
                response.headers["Retry-After"] = format_retry_after(fault.retry_after)
        if fault is not None and fault.kind == "slow":
            self._stopping.wait(fault.delay)
        if response is None:
            try:
                response = self.route(req)
            except Exception:
                self.errors.append(traceback.format_exc())
                response = self.error_response(500, "bug in the fake server")
        truncate = fault is not None and fault.kind in ("truncated", "truncated_json")
        req.status = response.status
        self._send(handler, req, response, truncate)

    def _send(self, handler: _Handler, req: Recorded, response: Response, truncate: bool) -> None:
        body = response.body
        try:
            handler.send_response(response.status)
            for name, value in response.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(body)))
            if truncate:
                handler.send_header("Connection", "close")
            handler.end_headers()
            if req.method != "HEAD":
                handler.wfile.write(body[: len(body) // 2] if truncate else body)
            handler.wfile.flush()
            req.done = time.monotonic()
        except OSError:
            handler.close_connection = True  # the client has gone (e.g. after its timeout)
        if truncate:
            handler.close_connection = True
