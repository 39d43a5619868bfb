"""Real servers on loopback for the tests of models at URLs.

`CountingServer` (stdlib `http.server`) serves byte ranges and counts the bytes and
requests it answers, so that byte budgets are checked from the server's side; it runs on
127.0.0.1 in one daemon thread, is shut down by its fixture, and shuts itself down after
`SERVER_LIFETIME` seconds whatever happens. `running_s3_server` runs
moto's S3 server. conftest makes fixtures of both.
"""

from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

SERVER_LIFETIME = 300.0
MB = 1024 * 1024


class CountingServer(HTTPServer):
    """Serves the files in `files` (URL path -> local path), with Range support, one
    request at a time in the server's own thread (embcli's reads are sequential)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.files: dict[str, Path] = {}
        self.redirects: dict[str, str] = {}
        self.ignore_ranges = False
        self.cut_after: int | None = None
        self.bytes_sent = 0
        self.requests = 0
        self.asked: list[str] = []
        self._lock = threading.Lock()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def serve(self, path: Path, name: str | None = None) -> str:
        name = name or path.name
        self.files[name] = path
        return self.url(name)

    def serve_folder(self, folder: Path, name: str) -> str:
        """Serve every file under `folder` at `name/...`; the folder's URL, with `/`."""
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.serve(path, f"{name}/{path.relative_to(folder).as_posix()}")
        return self.url(name + "/")

    def names_asked(self) -> list[str]:
        """The URL paths asked for so far, in order."""
        with self._lock:
            return list(self.asked)

    def count(self, sent: int, name: str | None = None) -> None:
        """One request (for the URL path `name`), answered with `sent` bytes."""
        with self._lock:
            self.bytes_sent += sent
            self.requests += 1
            if name is not None:
                self.asked.append(name)

    def count_bytes(self, sent: int) -> None:
        with self._lock:
            self.bytes_sent += sent

    def reset(self) -> None:
        with self._lock:
            self.bytes_sent = 0
            self.requests = 0
            self.asked = []


class _RangeHandler(BaseHTTPRequestHandler):
    server: CountingServer
    timeout = 10

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        # Everything is counted before the answer is sent, so that a client that has its
        # answer sees the counts that include it.
        name = self.path.lstrip("/")
        self.server.count(0, name)
        if name in self.server.redirects:
            self.send_response(302)
            self.send_header("Location", self.server.url(self.server.redirects[name]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = self.server.files.get(name)
        if path is None:
            self.send_error(404)
            return
        size = path.stat().st_size
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if match and not self.server.ignore_ranges:
            start, end = int(match.group(1)), min(int(match.group(2)), size - 1)
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            start, end = 0, size - 1
            self.send_response(200)
        length = end - start + 1
        self.send_header("Content-Length", str(length))
        self.end_headers()
        cut = self.server.cut_after
        self.server.count_bytes(length if cut is None else min(length, cut))
        sent = 0
        with open(path, "rb") as handle:
            handle.seek(start)
            while sent < length:
                chunk = handle.read(min(1 << 20, length - sent))
                if cut is not None and sent + len(chunk) > cut:
                    chunk = chunk[: max(0, cut - sent)]
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    break
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(chunk)
        if cut is not None:
            self.close_connection = True


def running_http_server():
    """A `CountingServer` running in a daemon thread, shut down when the caller is done."""
    server = CountingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stopper = threading.Timer(SERVER_LIFETIME, server.shutdown)
    stopper.daemon = True
    stopper.start()
    try:
        yield server
    finally:
        stopper.cancel()
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def running_s3_server():
    """moto's S3 server on a free loopback port, stopped when the caller is done; its
    endpoint URL."""
    moto_server = pytest.importorskip("moto.server", reason="needs moto[server] (the test extra)")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


S3_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3_store(endpoint: str, monkeypatch):
    """An s3fs filesystem on moto's server, with the environment embcli reads it from."""
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for name, value in S3_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    return s3fs.S3FileSystem(skip_instance_cache=True)
