"""A real HTTP server on loopback that records every request and answers as told (no mocks)."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    body: bytes
    at: float = field(default_factory=time.time)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"code": 0}'
    delay: float = 0.0
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)
    drip: float = 0.0  # seconds between the body's bytes (a slow-dripping server)
    endless_for: float = 0.0  # stream a chunked body for this long (bounded: a test must end)


class RecordingServer:
    """`routes` maps a path to a Reply, or to a callable(Recorded) -> Reply."""

    def __init__(self, routes: Optional[dict] = None, host: str = "127.0.0.1"):
        self.routes: dict[str, object] = dict(routes or {})
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                record = Recorded(self.command, self.path, dict(self.headers), self.rfile.read(length))
                with server.lock:
                    server.requests.append(record)
                route = server.routes.get(self.path.split("?")[0], Reply(404, b"no such route"))
                reply = route(record) if callable(route) else route
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                try:
                    if reply.endless_for:
                        self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        chunk, until = b"x" * 65536, time.monotonic() + reply.endless_for
                        while time.monotonic() < until:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    if reply.drip:
                        for byte in reply.body:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(reply.drip)
                    else:
                        self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading, as it should past its limit

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self, path: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path.split("?")[0] == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 90.0) -> list[Recorded]:
        """Poll (never a fixed sleep) until `count` requests reached `path`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received(path)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{count} request(s) to {path} expected within {timeout}s, "
                             f"got {len(self.received(path))}")

    def __enter__(self) -> "RecordingServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def json_reply(document, status: int = 200) -> Reply:
    return Reply(status, json.dumps(document).encode())
