"""Crash safety of writes: `embcli assign` killed (SIGKILL) or interrupted (SIGINT,
SIGTERM) at random moments, on a 20 MB `.keras` built in Keras's layout.

After a kill, the model is its old bytes or its new bytes; where an in-place edit was cut
short mid-patch, its undo journal is there: reads refuse the model and `embcli recover`
puts the old bytes back. Whatever a killed run leaves is named `.embcli-tmp-*` or `.embcli-journal-*`, never
anything that could be taken for the output, and the next successful write removes it. An
interrupted run cleans up after itself before it exits.

The small artifacts (folders, sharded weights, legacy HDF5, TensorFlow checkpoints and
SavedModels) are killed at a random named step of the write (`EMBCLI_TEST_PAUSE_AT`),
which the process reports before it is killed, so every kill is counted inside the
step it was meant for. Two writers started together on one model both succeed, one after
the other, or the second names the first; the model is never damaged.

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

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

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


def embcli(
    *args: str, cwd: Path | None = None, env: dict | None = None, **popen
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "embcli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
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


# Small artifacts of every kind, killed at named steps. -----------------------------


@dataclass(frozen=True)
class Artifact:
    """A fixture, how to write it, and the steps at which its write may be killed."""

    fixture: str
    layer: str
    in_place: bool
    steps: tuple[str, ...]

    @property
    def name(self) -> str:
        return Path(self.fixture).name


PATCH_STEPS = ("locked", "journaled", "half-patched", "patched")
COMMIT_STEPS = ("staged", "commit-recorded", "commit-half", "commit-renamed")
ARTIFACTS = {
    "folder --in-place": Artifact("k3_folder", "words", True, PATCH_STEPS),
    "folder -o --force": Artifact("k3_folder", "words", False, COMMIT_STEPS),
    "sharded --in-place": Artifact("k3_sharded.weights.json", "words", True, PATCH_STEPS),
    "sharded -o --force": Artifact("k3_sharded.weights.json", "words", False, COMMIT_STEPS),
    "weights.h5 --in-place": Artifact("k3.weights.h5", "words", True, PATCH_STEPS),
    "legacy h5 --in-place": Artifact("k3_legacy.h5", "inner_table", True, PATCH_STEPS),
    "checkpoint --in-place": Artifact("tfk_ckpt/ckpt", "word_emb", True, COMMIT_STEPS),
    "savedmodel --in-place": Artifact("tfk_savedmodel", "word_emb", True, COMMIT_STEPS),
}
TENSORFLOW_ARTIFACTS = {"checkpoint --in-place", "savedmodel --in-place"}
CI_STEP_KILLS = 4


def _place(artifact: Artifact, folder: Path) -> Path:
    """A fresh copy of the artifact in `folder`; returns the model path."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    source = FIXTURES / artifact.fixture
    if artifact.fixture.startswith("tfk_ckpt/"):
        shutil.copytree(source.parent, folder, dirs_exist_ok=True)
    elif source.is_dir():
        shutil.copytree(source, folder / source.name)
    else:
        shutil.copy(source, folder / source.name)
    if artifact.fixture.endswith(".weights.json"):
        for shard in FIXTURES.glob(artifact.fixture.removesuffix(".weights.json") + "_*.h5"):
            shutil.copy(shard, folder / shard.name)
    return folder / source.name


def _output(artifact: Artifact, model: Path) -> Path:
    suffix = model.name[model.name.index(".") :] if "." in model.name else ""
    return model.parent / f"out{suffix}"


def _write_args(artifact: Artifact, model: Path) -> list[object]:
    edit = ["-l", artifact.layer, "--fill", "zeros", "--rows", "0:10"]
    if artifact.in_place:
        return [model, *edit, "--in-place"]
    return [model, *edit, "-o", _output(artifact, model), "--force"]


def _state(path: Path, by_name: bool) -> str:
    """A digest of what the model holds (names only where TensorFlow varies the bytes)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if path.name == "ckpt":
        files = sorted(path.parent.glob("ckpt*")) + [path.parent / "checkpoint"]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        if not by_name or file.suffix in (".h5", ".json"):
            digest.update(sha256(file).encode())
    return digest.hexdigest()


def _rows(path: Path, layer: str) -> bytes:
    from embcli.model import find_table, open_model, read_rows

    with open_model(path) as model:
        table = find_table(model, layer)
        return read_rows(model, table, np.arange(table.rows)).tobytes()


def kill_at_steps(artifact: Artifact, folder: Path, kills: int, rng: random.Random) -> LoopReport:
    """Kill the artifact's write at a random named step, `kills` times; after each kill
    the model reads as old or new, or is refused until `recover` makes it old or new."""
    by_name = artifact.fixture.startswith("tfk_")
    reference = _place(artifact, folder / "reference")
    if not artifact.in_place:
        run("assign", reference, "-l", artifact.layer, "--fill", "zeros", "--rows", "20:30",
            "-o", _output(artifact, reference))  # fmt: skip
    target = reference if artifact.in_place else _output(artifact, reference)
    old_rows = _rows(target, artifact.layer)
    done = run("assign", *_write_args(artifact, reference))
    assert done.returncode == 0, done.stderr
    new_rows = _rows(target, artifact.layer)
    report = LoopReport()
    work = folder / "work"
    for number in range(kills):
        model = _place(artifact, work)
        if not artifact.in_place:
            run("assign", model, "-l", artifact.layer, "--fill", "zeros", "--rows", "20:30",
                "-o", _output(artifact, model))  # fmt: skip
        written = model if artifact.in_place else _output(artifact, model)
        step = rng.choice(artifact.steps)
        ready = folder / "ready"
        ready.unlink(missing_ok=True)
        process = embcli(
            "assign",
            *_write_args(artifact, model),
            env={"EMBCLI_TEST_PAUSE_AT": step, "EMBCLI_TEST_PAUSE_READY": str(ready)},
        )
        deadline = time.monotonic() + RUN_TIMEOUT
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if not ready.exists():
            process.kill()
            _, err = process.communicate(timeout=RUN_TIMEOUT)
            report.problems.append(f"kill {number}: never reached {step}: {err[-300:]}")
            continue
        process.kill()
        process.communicate(timeout=RUN_TIMEOUT)
        report.exits[f"killed at {step}"] += 1
        probe = run("layers", written)
        refused = probe.returncode == 1 and "was interrupted" in probe.stderr
        if refused:
            report.states["refused"] += 1
        else:
            rows = _rows(written, artifact.layer) if probe.returncode == 0 else None
            state = "old" if rows == old_rows else "new" if rows == new_rows else "torn"
            report.states[state] += 1
            if state == "torn":
                report.problems.append(f"kill {number} at {step}: read a torn model")
        left = [p.name for p in work.iterdir() if p.name.startswith(".embcli-")]
        if written.is_dir():
            left += [p.name for p in written.iterdir() if p.name.startswith(".embcli-")]
        for name in left:
            report.leftovers[name.split("-")[1]] += 1
        recovered = run("recover", written)
        if recovered.returncode != 0:
            report.problems.append(f"kill {number}: recover failed: {recovered.stderr}")
            continue
        rows = _rows(written, artifact.layer)
        if rows not in (old_rows, new_rows):
            report.problems.append(f"kill {number} at {step}: neither old nor new after recover")
        if rows == new_rows and _state(written, by_name) != _state(target, by_name):
            report.problems.append(f"kill {number} at {step}: new rows, but other bytes differ")
        again = run("assign", *_write_args(artifact, model))
        stale = [p.name for p in work.iterdir() if p.name.startswith(".embcli-")]
        if again.returncode != 0 or stale:
            report.problems.append(f"kill {number}: the next write: {again.stderr} {stale}")
    return report


def two_writers(folder: Path, rounds: int, rng: random.Random) -> LoopReport:
    """Start two `assign --in-place` on one `.keras` at the same moment (a shared start
    file), each on its own rows; every run succeeds or names the other, and the archive
    holds exactly the edits of the runs that succeeded."""
    import zipfile

    from embcli.model import find_table, open_model, read_rows

    report = LoopReport()
    for number in range(rounds):
        work = folder / f"round{number}"
        model = _place(Artifact("k3_functional.keras", "words", True, ()), work)
        pristine = np.frombuffer(_rows(model, "words"), np.float32).reshape(50, 8)
        rows = [rng.randrange(0, 25), rng.randrange(25, 50)]
        processes = [
            embcli(
                "assign",
                model,
                "-l",
                "words",
                "--fill",
                "zeros",
                "--rows",
                str(row),
                "--in-place",
                env={
                    "EMBCLI_TEST_PAUSE_AT": "write-start",
                    "EMBCLI_TEST_PAUSE_READY": str(work / f"r{i}"),
                },
            )  # fmt: skip
            for i, row in enumerate(rows)
        ]
        deadline = time.monotonic() + RUN_TIMEOUT
        while not all((work / f"r{i}").exists() for i in range(2)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                break
            time.sleep(0.01)
        for i in range(2):
            Path(f"{work / f'r{i}'}.go").touch()
        expected = pristine.copy()
        for process, row in zip(processes, rows, strict=True):
            _, err = process.communicate(timeout=RUN_TIMEOUT)
            report.exits[process.returncode] += 1
            if process.returncode == 0:
                expected[row] = 0
            elif "another process" not in err:
                report.problems.append(f"round {number}: {err[-300:]}")
        if zipfile.ZipFile(model).testzip() is not None:
            report.problems.append(f"round {number}: the archive's CRC is wrong")
        with open_model(model) as opened:
            got = read_rows(opened, find_table(opened, "words"), np.arange(50))
        if not np.array_equal(got, expected):
            report.problems.append(f"round {number}: the rows are not the successful edits")
            report.states["wrong"] += 1
        else:
            report.states["both edits" if (got != pristine).any(axis=1).sum() == 2 else "one"] += 1
        shutil.rmtree(work)
    return report


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(k, marks=[pytest.mark.tensorflow] if k in TENSORFLOW_ARTIFACTS else [])
        for k in ARTIFACTS
    ],
)
def test_killing_any_artifacts_write_at_a_named_step_leaves_old_or_new(tmp_path, kind):
    report = kill_at_steps(ARTIFACTS[kind], tmp_path, CI_STEP_KILLS, random.Random(kind))
    assert not report.problems, "\n".join(report.problems) + f"\n{report}"
    assert sum(report.states.values()) == CI_STEP_KILLS


def test_two_writers_started_together_never_damage_the_model(tmp_path):
    report = two_writers(tmp_path, 3, random.Random(7))
    assert not report.problems, "\n".join(report.problems) + f"\n{report}"


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
