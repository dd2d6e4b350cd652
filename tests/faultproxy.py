"""A fault-injecting HTTP proxy on loopback, for tests of how the pipeline survives a failing S3 or web server.

It sits in front of a real peer (the moto S3 server of ``tests/s3server.py``, a photo server) and
forwards every request, except that a :class:`Fault` rule answers matching requests itself, N times:
an HTTP status with an S3-style error body (403, 404, 500, 503 ...), a delay before forwarding
(a slow server), or a connection reset (TCP RST, no response at all). Point ``s3.endpoint_url`` (boto3
and GDAL's ``/vsis3/`` alike) at :attr:`FaultProxy.url`.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import urlparse

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
_S3_CODES = {403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError", 503: "SlowDown"}


@dataclass
class Fault:
    """Answer requests whose method is in ``methods`` and whose path matches ``path`` (a regex).

    ``action``: an HTTP status (int), ``"reset"`` (close the connection with a TCP RST) or
    ``"delay"`` (wait ``delay_s`` then forward). ``times``: how many matching requests get the fault
    (None: all); ``skip``: matching requests let through before the first fault (e.g. a GeoTIFF's
    header read, so the fault hits its windowed reads). ``ranged``: only requests with a Range header.
    """

    path: str
    action: int | str
    methods: tuple[str, ...] = ("GET", "HEAD", "PUT", "POST", "DELETE")
    times: int | None = 1
    skip: int = 0
    delay_s: float = 0.0
    ranged: bool = False
    seen: int = 0  # matching requests so far
    fired: int = 0  # faults given so far

    def take(self, method: str, path: str, headers) -> bool:
        """Whether this request gets the fault (counts it)."""
        if method not in self.methods or not re.search(self.path, path):
            return False
        if self.ranged and "Range" not in headers:
            return False
        self.seen += 1
        if self.seen <= self.skip or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True


@dataclass
class FaultProxy:
    """Forward to ``upstream`` (``http://host:port``); :meth:`add` faults; ``requests`` counts (method, path)."""

    upstream: str
    faults: list[Fault] = field(default_factory=list)
    requests: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        parsed = urlparse(self.upstream)
        self._host, self._port = parsed.hostname, parsed.port

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """The fault clears: forward everything from now on."""
        with self._lock:
            self.faults.clear()

    def hits(self, pattern: str, method: str | None = None) -> int:
        """Requests so far whose path matches ``pattern`` (and method, when given)."""
        with self._lock:
            return sum(n for (m, p), n in self.requests.items() if re.search(pattern, p) and method in (None, m))

    def _pick(self, method: str, path: str, headers) -> Fault | None:
        with self._lock:
            self.requests[(method, path)] += 1
            return next((f for f in self.faults if f.take(method, path, headers)), None)

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._pick(self.command, self.path, self.headers)
                if fault is not None and fault.action == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault is not None and fault.action == "delay":
                    time.sleep(fault.delay_s)
                elif fault is not None:
                    self._error(int(fault.action))
                    return
                self._forward(body)

            def _error(self, code: int) -> None:
                s3code = _S3_CODES.get(code, "InternalError")
                text = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{s3code}</Code>'
                text += f"<Message>injected fault {code}</Message></Error>"
                payload = text.encode() if self.command != "HEAD" else b""
                self.send_response(code)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(text.encode())))
                self.end_headers()
                self.wfile.write(payload)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(proxy._host, proxy._port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            def _safe(self) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, OSError):
                    self._handle()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _safe  # http.server's naming

        return Handler

    def __enter__(self) -> Self:
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
