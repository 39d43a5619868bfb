"""In-place edits patch the file where it lies behind an undo journal; a killed edit is
rolled back by the next embcli run."""

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import FIXTURES

from embcli import atomic, journal
from embcli.edit import plan_patches
from embcli.model import find_table, open_model, read_rows


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def interrupted_edit(tmp_path, fixture, complete_journal=True, applied=0.5):
    """Leave the state a SIGKILL between journal and the last patch would leave."""
    target = tmp_path / fixture
    shutil.copy(FIXTURES / fixture, target)
    with open_model(target) as model:
        table = find_table(model, "words")
        patches, _ = plan_patches(
            model, table, np.arange(0, 50, 3), np.ones((17, table.dim), np.float32)
        )
        plan = model.plan_write(target, patches, in_place=True)
    item = plan.files[0]
    fd = os.open(target, os.O_RDWR)
    try:
        changes = atomic.file_changes(fd, item, target.name)
        written = journal.write_journal(target, changes)
        for offset, _, new in changes[: int(len(changes) * applied)]:
            os.pwrite(fd, new, offset)
    finally:
        os.close(fd)
    stale = written.with_name(f"{journal.JOURNAL_PREFIX}{dead_pid()}-{target.name}")
    if complete_journal:
        written.rename(stale)
    else:
        stale.write_bytes(written.read_bytes()[:-3])
        written.unlink()
    return target


@pytest.mark.parametrize("fixture", ["k3_functional.keras", "k3.weights.h5"])
def test_reads_refuse_a_killed_edit_and_recover_rolls_it_back(tmp_path, runner, fixture):
    from embcli.cli import cli

    original = sha(FIXTURES / fixture)
    target = interrupted_edit(tmp_path, fixture)
    torn = sha(target)
    assert torn != original
    result = runner.invoke(cli, ["layers", str(target)])
    assert result.exit_code == 1
    assert f"Error: an in-place edit of {target} was interrupted" in result.output
    assert f"run `embcli recover {target}` to restore it" in result.output
    assert sha(target) == torn
    result = runner.invoke(cli, ["recover", str(target)])
    assert result.exit_code == 0
    assert result.output == f"restored {fixture}\n"
    assert sha(target) == original
    assert sorted(p.name for p in tmp_path.iterdir()) == [fixture]
    assert runner.invoke(cli, ["recover", str(target)]).output == "nothing to recover\n"


def test_the_next_in_place_edit_rolls_back_first(tmp_path, runner):
    from embcli.cli import cli

    target = interrupted_edit(tmp_path, "k3_functional.keras")
    result = runner.invoke(
        cli,
        ["assign", str(target), "-l", "positions", "--fill", "zeros", "--rows", "0", "--in-place"],
    )
    assert result.exit_code == 0, result.output
    with open_model(target) as model:
        words = read_rows(model, find_table(model, "words"), np.arange(50))
    np.testing.assert_array_equal(
        words, np.load(FIXTURES / "expected" / "k3_functional_keras.npz")["words"]
    )


def test_a_journal_for_another_file_is_ignored(tmp_path, runner):
    """A journal copied next to a different file with the same name proves nothing."""
    from embcli.cli import cli

    target = interrupted_edit(tmp_path, "k3_functional.keras")
    journal_file = next(tmp_path.glob(".embcli-journal-*"))
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    shutil.copy(FIXTURES / "k3_functional.keras", elsewhere / target.name)
    shutil.copy(journal_file, elsewhere / journal_file.name)
    before = sha(elsewhere / target.name)
    assert runner.invoke(cli, ["layers", str(elsewhere / target.name)]).exit_code == 0
    assert runner.invoke(cli, ["recover", str(elsewhere / target.name)]).exit_code == 0
    assert sha(elsewhere / target.name) == before


def test_incomplete_journal_is_harmless_and_recover_removes_it(tmp_path, runner):
    from embcli.cli import cli

    target = interrupted_edit(tmp_path, "k3_functional.keras", complete_journal=False, applied=0)
    with open_model(target) as model:
        read_rows(model, find_table(model, "words"), np.arange(3))
    assert sha(target) == sha(FIXTURES / "k3_functional.keras")
    assert len(list(tmp_path.iterdir())) == 2
    assert runner.invoke(cli, ["recover", str(target)]).output == "nothing to recover\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k3_functional.keras"]


def test_in_place_writes_only_the_changed_bytes(tmp_path, runner):
    """The cost follows the rows: the file is neither copied nor renamed."""
    from embcli.cli import cli

    target = tmp_path / "m.keras"
    shutil.copy(FIXTURES / "k3_functional.keras", target)
    inode = target.stat().st_ino
    before = target.read_bytes()
    result = runner.invoke(
        cli, ["assign", str(target), "-l", "words", "--fill", "zeros", "--rows", "7", "--in-place"]
    )
    assert result.exit_code == 0, result.output
    after = target.read_bytes()
    assert target.stat().st_ino == inode
    differing = np.flatnonzero(np.frombuffer(before, np.uint8) != np.frombuffer(after, np.uint8))
    assert 0 < len(differing) <= 8 * 4 + 2 * 4
    import zipfile

    assert zipfile.ZipFile(target).testzip() is None
