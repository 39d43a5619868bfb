"""Crash safety of writes: `embcli assign` killed (SIGKILL) or interrupted (SIGINT,
SIGTERM) at random moments, on a 20 MB `.keras` built in Keras's layout.

After a kill, the model is its old bytes or its new bytes; where an in-place edit was cut
short mid-patch, its undo journal is there: reads refuse the model and `embcli recover`
puts the old bytes back. Whatever a killed run leaves is named `.embcli-tmp-*` or `.embcli-journal-*`, never
anything that could be taken for the output, and the next successful write removes it. An
interrupted run cleans up after itself before it exits.

`bench/crash_loop.py` runs the same loops with hundreds of kills.
"""

import hashlib
import importlib.util
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from embcli.atomic import TEMP_PREFIX

JOURNAL_PREFIX = ".embcli-journal-"
ROWS, DIM = 160_000, 32
EDIT_ROWS = "1000:130000"
RUN_TIMEOUT = 120
CI_KILLS = 15
CI_COPY_KILLS = 6
CI_INTERRUPTS = 8


def _load_corpus():
    path = Path(__file__).resolve().parent / "corpus" / "make_corpus.py"
    spec = importlib.util.spec_from_file_location("make_corpus", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_corpus", module)
    spec.loader.exec_module(module)
    return module


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def embcli(*args: str, cwd: Path | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "embcli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        **popen,
    )


def run(*args: str) -> subprocess.CompletedProcess:
    process = embcli(*args)
    out, err = process.communicate(timeout=RUN_TIMEOUT)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@dataclass
class BigModel:
    """A large `.keras`, and the hashes of its bytes before and after the edit."""

    pristine: Path
    old: str
    new: str
    seconds: float


def make_big_model(folder: Path, rows: int = ROWS, dim: int = DIM) -> BigModel:
    folder.mkdir(parents=True, exist_ok=True)
    values = np.random.default_rng(5).standard_normal((rows, dim)).astype(np.float32)
    pristine = folder / "pristine.keras"
    _load_corpus().write_keras_archive(pristine, values)
    scratch = folder / "measure"
    scratch.mkdir()
    target = scratch / "model.keras"
    shutil.copyfile(pristine, target)
    started = time.monotonic()
    done = run("assign", target, "--fill", "zeros", "--rows", EDIT_ROWS, "--in-place")
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    new = sha256(target)
    copy = run(
        "assign", pristine, "--fill", "zeros", "--rows", EDIT_ROWS, "-o", scratch / "copy.keras"
    )
    assert copy.returncode == 0, copy.stderr
    assert sha256(scratch / "copy.keras") == new, "in-place and copy edits differ"
    shutil.rmtree(scratch)
    old = sha256(pristine)
    assert old != new
    return BigModel(pristine, old, new, seconds)


@dataclass
class LoopReport:
    """What a kill loop saw, for the test's assertions and the bench's summary."""

    states: Counter = field(default_factory=Counter)
    leftovers: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    exits: Counter = field(default_factory=Counter)

    def __str__(self) -> str:
        return (
            f"states {dict(self.states)}, leftovers {dict(self.leftovers)}, "
            f"exit codes {dict(self.exits)}, problems {len(self.problems)}"
        )


def _wait_then_signal(
    process: subprocess.Popen,
    folder: Path,
    delay: float,
    when_writing: bool,
    signum: int,
    rng: random.Random,
) -> None:
    """Signal the process after `delay`; or, with `when_writing`, at a random moment once
    it has started writing (a temporary folder or journal appeared)."""
    deadline = time.monotonic() + delay
    if when_writing:
        while process.poll() is None and time.monotonic() < deadline + RUN_TIMEOUT:
            if any(p.name.startswith((TEMP_PREFIX, JOURNAL_PREFIX)) for p in folder.iterdir()):
                break
            time.sleep(0.002)
        deadline = time.monotonic() + rng.uniform(0, delay / 2)
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    if process.poll() is None:
        process.send_signal(signum)


def _leftovers(folder: Path, expected: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in expected)


def kill_in_place(
    big: BigModel, folder: Path, kills: int, rng: random.Random, signum: int = signal.SIGKILL
) -> LoopReport:
    """Kill `assign --in-place` again and again; check the model after each kill."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.keras"
    report = LoopReport()
    for number in range(kills):
        if not target.exists() or sha256(target) != big.old:
            shutil.copyfile(big.pristine, target)
        process = embcli("assign", target, "--fill", "zeros", "--rows", EDIT_ROWS, "--in-place")
        _wait_then_signal(
            process,
            folder,
            rng.uniform(0, big.seconds * 1.2),
            when_writing=number % 2 == 1,
            signum=signum,
            rng=rng,
        )
        _, err = process.communicate(timeout=RUN_TIMEOUT)
        report.exits[process.returncode] += 1
        if process.returncode not in (0, 1, -signum):
            report.problems.append(f"kill {number}: exit {process.returncode}: {err[-500:]}")
        left = _leftovers(folder, {target.name})
        for name in left:
            report.leftovers[name.split("-")[1] if name.startswith(".embcli-") else name] += 1
            if not name.startswith((TEMP_PREFIX, JOURNAL_PREFIX)):
                report.problems.append(f"kill {number}: left {name}")
        digest = sha256(target)
        state = "old" if digest == big.old else "new" if digest == big.new else "torn"
        report.states[state] += 1
        journals = [n for n in left if n.startswith(JOURNAL_PREFIX)]
        if state == "torn" and not journals:
            report.problems.append(f"kill {number}: the model is torn and no journal says how")
        if signum != signal.SIGKILL and (left or state == "torn"):
            report.problems.append(f"kill {number}: interrupted run left {left}, model {state}")
        probe = run("layers", target)
        refused = probe.returncode == 1 and "was interrupted" in probe.stderr
        if state == "torn" and not refused:
            report.problems.append(f"kill {number}: a half-edited model was read: {probe.stderr}")
        if refused and not journals or not refused and probe.returncode != 0:
            report.problems.append(f"kill {number}: the next read failed: {probe.stderr}")
        recovered = run("recover", target)
        if recovered.returncode != 0:
            report.problems.append(f"kill {number}: recover failed: {recovered.stderr}")
        after = sha256(target)
        if after not in (big.old, big.new):
            report.problems.append(f"kill {number}: still torn after the next run")
        if state in ("old", "new") and after != digest and not journals:
            report.problems.append(f"kill {number}: the next run changed a whole model")
        if any(n.startswith(JOURNAL_PREFIX) for n in _leftovers(folder, {target.name})):
            report.problems.append(f"kill {number}: a journal outlived the next run")
    return report


def kill_copy(
    big: BigModel, folder: Path, kills: int, rng: random.Random, signum: int = signal.SIGKILL
) -> LoopReport:
    """Kill `assign -o OUT` again and again: OUT is absent or complete, the input never
    changes, and what is left is a temporary folder that the next write removes."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "model.keras"
    shutil.copyfile(big.pristine, source)
    output = folder / "out.keras"
    report = LoopReport()
    for number in range(kills):
        output.unlink(missing_ok=True)
        process = embcli("assign", source, "--fill", "zeros", "--rows", EDIT_ROWS, "-o", output)
        _wait_then_signal(
            process,
            folder,
            rng.uniform(0, big.seconds * 1.2),
            when_writing=number % 2 == 1,
            signum=signum,
            rng=rng,
        )
        _, err = process.communicate(timeout=RUN_TIMEOUT)
        report.exits[process.returncode] += 1
        if process.returncode not in (0, 1, -signum):
            report.problems.append(f"kill {number}: exit {process.returncode}: {err[-500:]}")
        if sha256(source) != big.old:
            report.problems.append(f"kill {number}: the input changed")
        if output.exists():
            report.states["new" if sha256(output) == big.new else "torn"] += 1
            if sha256(output) != big.new:
                report.problems.append(f"kill {number}: a partial output is in place")
        else:
            report.states["absent"] += 1
        for name in _leftovers(folder, {source.name, output.name}):
            report.leftovers[name.split("-")[1] if name.startswith(".embcli-") else name] += 1
            if not name.startswith(TEMP_PREFIX):
                report.problems.append(f"kill {number}: left {name}")
            elif signum != signal.SIGKILL:
                report.problems.append(f"kill {number}: an interrupted run left {name}")
    final = folder / "final.keras"
    done = run("assign", source, "--fill", "zeros", "--rows", EDIT_ROWS, "-o", final)
    if done.returncode != 0 or sha256(final) != big.new:
        report.problems.append(f"the run after the kills failed: {done.stderr}")
    stale = _leftovers(folder, {source.name, output.name, final.name})
    if stale:
        report.problems.append(f"a successful run left stale temporaries: {stale}")
    return report


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> BigModel:
    return make_big_model(tmp_path_factory.mktemp("crash"))


def test_sigkill_during_in_place_assign_leaves_old_or_new(big, tmp_path):
    report = kill_in_place(big, tmp_path, CI_KILLS, random.Random(1))
    assert not report.problems, "\n".join(report.problems) + f"\n{report}"
    assert sum(report.states.values()) == CI_KILLS


def test_sigkill_during_assign_to_a_new_file_never_leaves_a_partial_output(big, tmp_path):
    report = kill_copy(big, tmp_path, CI_COPY_KILLS, random.Random(2))
    assert not report.problems, "\n".join(report.problems) + f"\n{report}"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupted_in_place_assign_cleans_up(big, tmp_path, signum):
    report = kill_in_place(big, tmp_path, CI_INTERRUPTS // 2, random.Random(signum), signum)
    assert not report.problems, "\n".join(report.problems) + f"\n{report}"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupted_assign_to_a_new_file_cleans_up(big, tmp_path, signum):
    report = kill_copy(big, tmp_path, CI_INTERRUPTS // 2, random.Random(signum + 10), signum)
    assert not report.problems, "\n".join(report.problems) + f"\n{report}"


def test_the_edit_is_what_keras_layout_expects(big, tmp_path):
    """The loops' `new` is a real edit: the rows are zero, the rest untouched."""
    from embcli.model import find_table, open_model, read_rows

    target = tmp_path / "model.keras"
    shutil.copyfile(big.pristine, target)
    assert (
        run("assign", target, "--fill", "zeros", "--rows", EDIT_ROWS, "--in-place").returncode == 0
    )
    assert sha256(target) == big.new
    with open_model(target) as model:
        table = find_table(model, None)
        rows = read_rows(model, table, np.array([999, 1000, 129_999, 130_000]))
    assert not rows[1:3].any() and rows[0].any() and rows[3].any()
