"""Locks: a writer excludes other writers and readers, readers exclude writers, nothing
is created to lock, and the overlap in each test is made to happen (a process stops at a
named step and says so) rather than hoped for."""

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES
from test_locking_support import (
    embcli_leftovers,
    kill,
    run,
    sha,
    start,
    wait_until_paused,
)

from embcli import locking
from embcli.model import find_table, open_model, read_rows

KINDS = {
    "k3_functional.keras": "words",
    "k3.weights.h5": "words",
    "k3_legacy.h5": "inner_table",
    "k3_folder": "words",
    "k3_sharded.weights.json": "words",
}


def copy_fixture(fixture: str, folder: Path) -> Path:
    target = folder / fixture
    if (FIXTURES / fixture).is_dir():
        shutil.copytree(FIXTURES / fixture, target)
    else:
        shutil.copy(FIXTURES / fixture, target)
    if fixture.endswith(".weights.json"):
        for shard in FIXTURES.glob(fixture.removesuffix(".weights.json") + "_*.weights.h5"):
            shutil.copy(shard, folder / shard.name)
    return target


def rows_of(target: Path, layer: str) -> np.ndarray:
    with open_model(target) as model:
        table = find_table(model, layer)
        return read_rows(model, table, np.arange(table.rows))


def in_place(target: Path, layer: str, rows: str, **kwargs) -> subprocess.Popen:
    return start(
        "assign", target, "-l", layer, "--fill", "zeros", "--rows", rows, "--in-place", **kwargs
    )


def test_a_second_writer_waits_then_names_the_first(tmp_path):
    target = copy_fixture("k3_functional.keras", tmp_path)
    original = sha(target)
    ready = tmp_path / "ready"
    first = in_place(target, "words", "1", pause="locked", ready=ready)
    try:
        pid = wait_until_paused(first, ready)
        second = run(
            "assign", target, "-l", "words", "--fill", "zeros", "--rows", "2", "--in-place",
            timeout=0.3,
        )  # fmt: skip
        assert second.returncode == 1
        assert second.stderr == (
            f"Error: {target} is being written by another process (pid {pid}); "
            "try again once that process has finished\n"
        )
        assert sha(target) == original
    finally:
        kill(first)
    assert run("assign", target, "-l", "words", "--fill", "zeros", "--rows", "2", "--in-place")
    assert sha(target) != original


@pytest.mark.parametrize("fixture", sorted(KINDS))
def test_two_writers_at_once_both_land_and_the_model_stays_valid(tmp_path, fixture):
    """The second writer starts while the first holds the lock, waits, then makes its
    own edit on top of the first one's: both rows are zero, nothing else changed."""
    layer = KINDS[fixture]
    target = copy_fixture(fixture, tmp_path)
    before = rows_of(target, layer)
    ready = tmp_path / "ready"
    first = in_place(target, layer, "1", pause="locked", ready=ready)
    second = None
    try:
        wait_until_paused(first, ready)
        waiting = tmp_path / "waiting"
        second = in_place(target, layer, "2", timeout=120, pause="lock-wait", ready=waiting)
        wait_until_paused(second, waiting)
        Path(f"{waiting}.go").touch()
        Path(f"{ready}.go").touch()
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                kill(process)
    after = rows_of(target, layer)
    expected = before.copy()
    expected[[1, 2]] = 0
    np.testing.assert_array_equal(after, expected)
    if fixture.endswith(".keras"):
        assert zipfile.ZipFile(target).testzip() is None
    assert embcli_leftovers(tmp_path) == []


def test_a_reader_waits_for_a_writer_and_sees_only_the_finished_edit(tmp_path):
    target = copy_fixture("k3_functional.keras", tmp_path)
    original = sha(target)
    ready = tmp_path / "ready"
    writer = in_place(target, "words", "0:50", pause="half-patched", ready=ready)
    try:
        pid = wait_until_paused(writer, ready)
        assert sha(target) != original, "the writer is not mid-patch"
        with pytest.raises(locking.ModelBusy) as caught:
            locking.reading(target, timeout=0.1)
        assert str(caught.value) == (
            f"{target} is being written by another process (pid {pid}); "
            "try again once that process has finished"
        )
        Path(f"{ready}.go").touch()
        lock = locking.reading(target, timeout=120)
        try:
            assert writer.wait(timeout=120) == 0
            with open_model(target) as model:
                words = read_rows(model, find_table(model, "words"), np.arange(50))
            assert not words.any()
        finally:
            lock.close()
    finally:
        if writer.poll() is None:
            kill(writer)


def test_a_writer_waits_for_readers_then_names_them(tmp_path):
    target = copy_fixture("k3.weights.h5", tmp_path)
    original = sha(target)
    with locking.shared(target):
        result = run(
            "assign", target, "-l", "words", "--fill", "zeros", "--rows", "3", "--in-place",
            timeout=0.2,
        )  # fmt: skip
        assert result.returncode == 1
        assert result.stderr == (
            f"Error: {target} is being read by another process (pid {os.getpid()}); "
            "try again once that process has finished\n"
        )
        assert sha(target) == original
    assert run("assign", target, "-l", "words", "--fill", "zeros", "--rows", "3", "--in-place")


def test_a_model_reached_through_a_link_has_the_same_lock(tmp_path):
    target = copy_fixture("k3.weights.h5", tmp_path)
    link = tmp_path / "link.weights.h5"
    link.symlink_to(target)
    with locking.shared(link):
        result = run(
            "assign", target, "-l", "words", "--fill", "zeros", "--rows", "3", "--in-place",
            timeout=0.2,
        )  # fmt: skip
        assert result.returncode == 1 and "is being read" in result.stderr


def test_a_waiter_follows_a_model_replaced_by_a_rename(tmp_path):
    """`-o OUT --force` renames a new file over OUT; a reader that waited on the old
    inode notices and locks, and reads, the new one."""
    source = copy_fixture("k3_functional.keras", tmp_path)
    output = tmp_path / "out.keras"
    shutil.copy(source, output)
    old_inode = output.stat().st_ino
    ready = tmp_path / "ready"
    writer = start(
        "assign", source, "-l", "words", "--fill", "zeros", "--rows", "0:50", "-o", output,
        "--force", pause="locked", ready=ready,
    )  # fmt: skip
    try:
        wait_until_paused(writer, ready)
        with pytest.raises(locking.ModelBusy):
            locking.reading(output, timeout=0.1)
        Path(f"{ready}.go").touch()
        lock = locking.reading(output, timeout=120)
        try:
            assert writer.wait(timeout=120) == 0
            assert output.stat().st_ino != old_inode
            assert locking.is_held(output)
            assert not rows_of(output, "words").any()
        finally:
            lock.close()
    finally:
        if writer.poll() is None:
            kill(writer)


def test_an_upgrade_refuses_a_model_another_process_changed(tmp_path):
    target = copy_fixture("k3_functional.keras", tmp_path)
    lock = locking.reading(target)
    try:
        replacement = tmp_path / "replacement"
        shutil.copy(FIXTURES / "k3_nested.keras", replacement)
        os.replace(replacement, target)
        with pytest.raises(locking.ModelChanged) as caught:
            with locking.exclusive(target):
                pass
        assert str(caught.value) == (
            f"{target} was changed by another process after it was read; "
            "nothing was written, so the edit can simply be made again"
        )
    finally:
        lock.close()
    assert not locking.is_held(target)


def test_a_process_that_reads_a_model_may_write_it(tmp_path):
    target = copy_fixture("k3.weights.h5", tmp_path)
    with locking.shared(target), locking.exclusive(target):
        assert locking.is_held(target)
    assert not locking.is_held(target)


def test_readers_create_nothing_and_read_in_a_folder_they_cannot_write(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    target = copy_fixture("k3_functional.keras", folder)
    target.chmod(0o444)
    folder.chmod(0o555)
    try:
        with locking.shared(target):
            assert rows_of(target, "words").shape == (50, 8)
            assert locking.holders(locking.lock_target(target)) == []
        assert sorted(p.name for p in folder.iterdir()) == [target.name]
    finally:
        folder.chmod(0o755)


def test_a_read_lock_bound_to_a_model_is_released_when_the_model_closes(tmp_path):
    """The hook `open_model` uses: the lock lives exactly as long as the open model."""
    target = copy_fixture("k3_functional.keras", tmp_path)
    model = locking.reading(target).bind(open_model(target))
    assert locking.is_held(target)
    result = run(
        "assign", target, "-l", "words", "--fill", "zeros", "--rows", "1", "--in-place",
        timeout=0.1,
    )  # fmt: skip
    assert result.returncode == 1 and "is being read by another process" in result.stderr
    model.close()
    assert not locking.is_held(target)
    with locking.reading(target).bind(open_model(target)):
        assert locking.is_held(target)
    assert not locking.is_held(target)
