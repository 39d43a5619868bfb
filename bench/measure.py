"""Running commands one at a time and recording their wall time and peak RSS.

This module, like everything run.py imports, stays clear of numpy and h5py: on Linux a
spawned child's peak RSS starts at its parent's, so the parent must stay small.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

MB = 1024 * 1024


@dataclass
class Run:
    """One finished subprocess."""

    seconds: float
    rss_mb: float
    code: int


@dataclass
class Series:
    """Repeated runs of one command.

    `outputs` are removed before each run; each `(source, target)` of `prepare` is copied
    before each run, untimed (an in-place edit needs a fresh copy of its model every time).
    """

    label: str
    argv: list[str]
    outputs: list[Path] = field(default_factory=list)
    prepare: list[tuple[Path, Path]] = field(default_factory=list)
    env: dict[str, str] | None = None
    runs: list[Run] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.code == 0 for r in self.runs)

    @property
    def seconds(self) -> float | None:
        return statistics.median(r.seconds for r in self.runs) if self.ok else None

    @property
    def min_seconds(self) -> float | None:
        return min(r.seconds for r in self.runs) if self.ok else None

    @property
    def max_seconds(self) -> float | None:
        return max(r.seconds for r in self.runs) if self.ok else None

    @property
    def rss_mb(self) -> float | None:
        return statistics.median(r.rss_mb for r in self.runs) if self.ok else None

    def record(self) -> dict:
        """The JSON form of this series."""
        return {
            "label": self.label,
            "argv": [a if len(a) < 200 else "<script>" for a in self.argv],
            "median_seconds": self.seconds,
            "min_seconds": self.min_seconds,
            "max_seconds": self.max_seconds,
            "median_rss_mb": self.rss_mb,
            "max_rss_mb": max(r.rss_mb for r in self.runs) if self.ok else None,
            "runs": [asdict(r) for r in self.runs],
        }


def measure(argv: list[str], log: Path, env: dict[str, str]) -> Run:
    """Run `argv` to completion, alone; its wall time and peak RSS (from `os.wait4`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log.with_suffix(".out")), flags, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, str(log.with_suffix(".err")), flags, 0o644),
    ]
    start = time.perf_counter()
    pid = os.posix_spawnp(argv[0], argv, env, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    return Run(seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status))


def rss_floor(env: dict[str, str], logs: Path) -> float:
    """The peak RSS `measure` reports for `true`: numbers near it mean nothing."""
    return measure(["true"], logs / "floor", env).rss_mb


def warm(path: Path) -> None:
    """Read a file (or every file of a folder) once so that runs start from the page cache."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    buffer = bytearray(MB)
    for item in files:
        with open(item, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


def remove(path: Path) -> None:
    """Delete a file or folder if it is there."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def run_once(series: Series, case: str, env: dict[str, str], logs: Path) -> Run:
    """One run of `series`, after removing its outputs and copying its inputs."""
    for path in series.outputs:
        remove(path)
    for source, target in series.prepare:
        remove(target)
        shutil.copyfile(source, target)
    if series.outputs or series.prepare:
        os.sync()
    log = logs / slug(f"{case}-{series.label}")
    run = measure(series.argv, log, series.env or env)
    series.runs.append(run)
    if run.code != 0:
        error = log.with_suffix(".err").read_text(errors="replace")[-2000:]
        print(f"  ! {case} / {series.label} exited {run.code}:\n{error}", file=sys.stderr)
    return run


def run_rounds(
    plan: list[tuple[str, Series]], repeat: int, env: dict[str, str], logs: Path
) -> None:
    """Run every series `repeat` times, a round at a time, so that background load hits
    every side alike. A series listed twice runs once per round."""
    for round_ in range(repeat):
        done: set[int] = set()
        for case, series in plan:
            if id(series) in done:
                continue
            done.add(id(series))
            last = run_once(series, case, env, logs)
            print(
                f"  [{round_ + 1}/{repeat}] {case:<24} {series.label:<16}"
                f" {last.seconds:8.3f} s {last.rss_mb:8.0f} MB",
                flush=True,
            )
