"""Bytes fetched and requests made by each read-only command on a model at a URL.

Usage:
    python bench/remote.py                  # a 1 GiB .keras and the 512 MB .h5, over HTTP
    python bench/remote.py --gb 0.25 --rows 100000 --no-results   # a quick look
    python bench/remote.py --python /path/to/python --json remote.json

The models are served from bench/work/ by an HTTP server on loopback, started here, that
honours `Range` and counts what it sends. Each command runs as its own subprocess with
`embcli -v`; the table gives the server's own count beside the one embcli reports on
stderr, so either can be checked against the other. Counts do not depend on the machine's
speed; the times are shown only to say how long each command took against loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cases import NEIGHBOR_K, NEIGHBOR_ROW, embcli_argv
from environment import EMBCLI_PACKAGES, Interpreter, fresh_venv
from models import LAYER, ensure_models, spread_rows

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / "work"
RESULTS = BENCH / "RESULTS-remote.md"
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
GIB = 1024**3
SPREAD_ROWS = 100
SUMMARY = re.compile(r"fetched (\d+) bytes in (\d+) requests?")
RANGE = re.compile(r"bytes=(\d+)-(\d*)")
SEND_BLOCK = 1 << 20


class CountingFiles(ThreadingHTTPServer):
    """Serves named local files over HTTP with byte ranges, counting bytes and requests."""

    daemon_threads = True

    def __init__(self, files: dict[str, Path]) -> None:
        super().__init__(("127.0.0.1", 0), RangeRequests)
        self.files = files
        self.sent = 0
        self.requests = 0
        self.tally = threading.Lock()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def counted(self, sent: int) -> None:
        with self.tally:
            self.sent += sent
            self.requests += 1

    def take_counts(self) -> tuple[int, int]:
        with self.tally:
            counts = (self.sent, self.requests)
            self.sent = self.requests = 0
        return counts


class RangeRequests(BaseHTTPRequestHandler):
    server: CountingFiles

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.server.files.get(self.path.lstrip("/"))
        if path is None:
            self.send_error(404)
            self.server.counted(0)
            return
        size = path.stat().st_size
        wanted = RANGE.fullmatch(self.headers.get("Range", ""))
        first, last = 0, size - 1
        if wanted:
            first = int(wanted.group(1))
            last = min(int(wanted.group(2) or size - 1), size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        self.server.counted(self.send_span(path, first, last - first + 1))

    def send_span(self, path: Path, offset: int, length: int) -> int:
        sent = 0
        with open(path, "rb") as handle:
            handle.seek(offset)
            while sent < length:
                block = handle.read(min(SEND_BLOCK, length - sent))
                if not block:
                    break
                try:
                    self.wfile.write(block)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(block)
        return sent


def big_archive(rows: int, dim: int, keras: Interpreter) -> Path:
    """A `.keras` of `rows` x `dim` float32 laid out as Keras lays it out (bench/big.py)."""
    target = WORK / f"big-{rows}x{dim}.keras"
    if not target.is_file():
        template = ensure_models(WORK, 1000, dim, keras)["keras"]
        argv = [keras.python, str(BENCH / "big.py"), str(target), str(rows), str(dim)]
        subprocess.run([*argv, str(template)], env=keras.env, check=True)
    return target


def commands(url: str, rows: int, export: Path) -> list[tuple[str, list[object]]]:
    spread = ",".join(map(str, spread_rows(rows, SPREAD_ROWS)))
    return [
        ("layers", ["layers", url]),
        ("layers --json", ["layers", url, "--json"]),
        ("rows 0 5 -1", ["rows", url, "-l", LAYER, 0, 5, -1]),
        (f"rows ({SPREAD_ROWS} spread)", ["rows", url, "-l", LAYER, spread, "--json"]),
        ("export .npy (whole table)", ["export", url, "-l", LAYER, "-o", export, "--force"]),
        ("stats (whole table)", ["stats", url, "-l", LAYER, "--json"]),
        (
            f"neighbors {NEIGHBOR_ROW} -k {NEIGHBOR_K}",
            ["neighbors", url, "-l", LAYER, NEIGHBOR_ROW, "-k", NEIGHBOR_K],
        ),
    ]


def measure_model(
    server: CountingFiles, embcli: Interpreter, name: str, path: Path, rows: int
) -> list[dict]:
    export = WORK / "out" / "remote-export.npy"
    export.parent.mkdir(parents=True, exist_ok=True)
    measured = []
    for label, args in commands(server.url(name), rows, export):
        server.take_counts()
        argv = embcli_argv(embcli, "-v", *args)
        started = time.perf_counter()
        done = subprocess.run(argv, env=embcli.env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        sent, requests = server.take_counts()
        reported = SUMMARY.search(done.stderr)
        measured.append(
            {
                "model": name,
                "model_bytes": path.stat().st_size,
                "command": label,
                "ok": done.returncode == 0,
                "error": done.stderr.strip().splitlines()[-1:] if done.returncode else [],
                "server_bytes": sent,
                "server_requests": requests,
                "embcli_bytes": int(reported.group(1)) if reported else None,
                "embcli_requests": int(reported.group(2)) if reported else None,
                "seconds": round(seconds, 3),
            }
        )
    export.unlink(missing_ok=True)
    return measured


def size_text(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def render(measured: list[dict], embcli: Interpreter) -> str:
    lines = [
        "# Remote reads: bytes and requests per command",
        "",
        f"`python bench/remote.py`, {time.strftime('%Y-%m-%d')}; embcli: "
        f"{embcli.versions_line()}. HTTP server on loopback with Range support; "
        "`server` is what it sent, `embcli -v` what embcli counted.",
        "",
        "| model | command | fetched (server) | requests | % of file | embcli -v | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in measured:
        share = 100 * row["server_bytes"] / row["model_bytes"]
        own = (
            f"{row['embcli_bytes']} B / {row['embcli_requests']}"
            if row["embcli_bytes"] is not None
            else "-"
        )
        status = "" if row["ok"] else f" (failed: {' '.join(row['error'])})"
        lines.append(
            f"| {row['model']} ({size_text(row['model_bytes'])}) | `{row['command']}`{status} "
            f"| {size_text(row['server_bytes'])} ({row['server_bytes']} B) "
            f"| {row['server_requests']} | {share:.2f}% | {own} | {row['seconds']:.2f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="size of the .keras table, GiB")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the .h5 model")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--python", help="run embcli with this interpreter")
    parser.add_argument("--keras-python", help="build the models with this interpreter")
    parser.add_argument("--json", type=Path, help="also write the measurements as JSON")
    parser.add_argument("--no-results", action="store_true", help=f"do not write {RESULTS}")
    args = parser.parse_args()

    env = {**os.environ, **CHILD_ENV}
    if args.python:
        embcli = Interpreter(args.python, env, "--python")
    else:
        embcli = fresh_venv(REPO, WORK, env)
    embcli = embcli.probe(EMBCLI_PACKAGES)
    keras = Interpreter(args.keras_python or sys.executable, env, "Keras side")

    big_rows = int(args.gb * GIB) // (args.dim * 4)
    models = {
        "model.keras": (big_archive(big_rows, args.dim, keras), big_rows),
        "model.h5": (ensure_models(WORK, args.rows, args.dim, keras)["h5"], args.rows),
    }
    server = CountingFiles({name: path for name, (path, _) in models.items()})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        measured = [
            row
            for name, (path, rows) in models.items()
            for row in measure_model(server, embcli, name, path, rows)
        ]
    finally:
        server.shutdown()
        server.server_close()
    text = render(measured, embcli)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(measured, indent=2) + "\n")
    if not args.no_results:
        RESULTS.write_text(text)
    return 0 if all(row["ok"] for row in measured) else 1


if __name__ == "__main__":
    raise SystemExit(main())
