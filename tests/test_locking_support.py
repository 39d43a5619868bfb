"""Helpers for the tests that run several embcli processes against one model: start one
that stops at a named step of its write (`EMBCLI_TEST_PAUSE_AT`), and know that it got
there before acting on it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_WAIT = 120


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_digest(path: Path) -> str:
    """A digest of a file, or of every file in a folder with its relative name."""
    path = Path(path)
    if path.is_file():
        return sha(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def start(
    *args: object,
    pause: str | None = None,
    ready: Path | None = None,
    timeout: float | None = None,
    user: int | None = None,
) -> subprocess.Popen:
    """`python -m embcli ARGS` in the background; with `pause`, it stops at that step
    (`step` waits to be killed, `step:SECONDS` goes on after that long)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    env.pop("EMBCLI_TEST_PAUSE_AT", None)
    if pause is not None:
        env["EMBCLI_TEST_PAUSE_AT"] = pause
        env["EMBCLI_TEST_PAUSE_READY"] = str(ready)
    if timeout is not None:
        env["EMBCLI_LOCK_TIMEOUT"] = str(timeout)
    return subprocess.Popen(
        [sys.executable, "-m", "embcli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        user=user,
    )


def run(*args: object, **kwargs: object) -> subprocess.CompletedProcess:
    process = start(*args, **kwargs)  # type: ignore[arg-type]
    out, err = process.communicate(timeout=READY_WAIT)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def wait_until_paused(process: subprocess.Popen, ready: Path) -> int:
    """Wait until the process reports it reached its pause step; returns its pid. Fails
    if it ends first, so a test never acts on a process that was not where it meant."""
    deadline = time.monotonic() + READY_WAIT
    while not ready.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the process ended before its pause: {out}{err}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the process never reached its pause")
        time.sleep(0.01)
    return int(ready.read_text())


def kill(process: subprocess.Popen) -> None:
    process.kill()
    process.communicate(timeout=READY_WAIT)


def embcli_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(".embcli-"))
