"""In-place edits patch the file where they lie behind an undo journal; an edit killed
half done is refused by reads and rolled back by the next embcli run, but only by a
journal that proves it belongs to the file."""

import errno
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES
from test_locking_support import embcli_leftovers, kill, sha, start, wait_until_paused

from embcli import journal
from embcli.model import find_table, open_model, read_rows

FILES = {
    "k3_functional.keras": ("k3_functional.keras", "words"),
    "k3.weights.h5": ("k3.weights.h5", "words"),
    "k3_legacy.h5": ("k3_legacy.h5", "inner_table"),
    "k3_folder": ("k3_folder", "words"),
    "k3_sharded.weights.json": ("k3_sharded.weights.json", "words"),
}


def copy_fixture(fixture: str, folder: Path, name: str | None = None) -> Path:
    target = folder / (name or fixture)
    if (FIXTURES / fixture).is_dir():
        shutil.copytree(FIXTURES / fixture, target)
    else:
        shutil.copy(FIXTURES / fixture, target)
    if fixture.endswith(".weights.json"):
        for shard in FIXTURES.glob(fixture.removesuffix(".weights.json") + "_*.weights.h5"):
            shutil.copy(shard, folder / shard.name)
    return target


def killed_in_place(target: Path, layer: str, step: str = "half-patched") -> None:
    """Run `assign --in-place` on `target` and SIGKILL it once it reports `step`."""
    ready = target.parent / f"ready-{target.name}"[:200]
    process = start(
        "assign", target, "-l", layer, "--fill", "zeros", "--rows", "0:20", "--in-place",
        pause=step, ready=ready,
    )  # fmt: skip
    wait_until_paused(process, ready)
    kill(process)
    ready.unlink()


def files_of(target: Path) -> dict[str, str]:
    folder = target if target.is_dir() else target.parent
    return {p.name: sha(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name[0] != "."}


@pytest.mark.parametrize("fixture", sorted(FILES))
def test_reads_refuse_a_killed_edit_and_recover_rolls_it_back(tmp_path, runner, fixture):
    from embcli.cli import cli

    name, layer = FILES[fixture]
    target = copy_fixture(name, tmp_path)
    original = files_of(target)
    killed_in_place(target, layer)
    assert files_of(target) != original, "the kill did not land mid-patch"
    result = runner.invoke(cli, ["layers", str(target)])
    assert result.exit_code == 1
    assert "was interrupted" in result.output
    assert f"run `embcli recover {tmp_path}/" in result.output
    result = runner.invoke(cli, ["recover", str(target)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("restored ")
    assert files_of(target) == original
    assert embcli_leftovers(tmp_path) == []
    if target.is_dir():
        assert embcli_leftovers(target) == []
    assert runner.invoke(cli, ["recover", str(target)]).output == "nothing to recover\n"


def test_the_next_in_place_edit_rolls_back_first(tmp_path, runner):
    from embcli.cli import cli

    target = copy_fixture("k3_functional.keras", tmp_path)
    killed_in_place(target, "words")
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
    assert zipfile.ZipFile(target).testzip() is None


def test_an_edit_through_a_symbolic_link_is_recovered_by_either_name(tmp_path, runner):
    from embcli.cli import cli

    (tmp_path / "store").mkdir()
    real = copy_fixture("k3_functional.keras", tmp_path / "store")
    link = tmp_path / "link.keras"
    link.symlink_to(real)
    original = sha(real)
    killed_in_place(link, "words")
    assert journal.pending_for(real) and journal.pending_for(link)
    assert embcli_leftovers(tmp_path) == [], "the journal belongs beside the real file"
    assert runner.invoke(cli, ["layers", str(real)]).exit_code == 1
    assert journal.recover_model(link) == [real.name]
    assert sha(real) == original


def test_a_journal_beside_an_untouched_copy_does_nothing(tmp_path, runner):
    """A journal copied next to a pristine file of the same name finds only old bytes."""
    from embcli.cli import cli

    target = copy_fixture("k3_functional.keras", tmp_path)
    killed_in_place(target, "words")
    journal_file = next(tmp_path.glob(".embcli-journal-*"))
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    shutil.copy(FIXTURES / "k3_functional.keras", elsewhere / target.name)
    shutil.copy(journal_file, elsewhere / journal_file.name)
    before = sha(elsewhere / target.name)
    assert journal.pending_for(elsewhere / target.name) == []
    assert runner.invoke(cli, ["layers", str(elsewhere / target.name)]).exit_code == 0
    assert runner.invoke(cli, ["recover", str(elsewhere / target.name)]).exit_code == 0
    assert sha(elsewhere / target.name) == before


def test_a_journal_is_not_applied_to_another_file_with_its_inode_and_size(tmp_path, runner):
    """The file was replaced in place (same inode, same size) by other bytes after the
    kill: the journal's bytes match neither, so it is left alone and so is the file."""
    from embcli.cli import cli

    target = copy_fixture("k3_functional.keras", tmp_path)
    killed_in_place(target, "words")
    inode = target.stat().st_ino
    other = np.random.default_rng(0).integers(0, 256, target.stat().st_size, np.uint8)
    with open(target, "r+b") as handle:
        handle.write(other.tobytes())
    assert target.stat().st_ino == inode
    assert journal.pending_for(target) == []
    assert runner.invoke(cli, ["recover", str(target)]).output == "nothing to recover\n"
    assert target.read_bytes() == other.tobytes()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant another user's file")
def test_a_journal_planted_by_another_user_is_never_trusted(tmp_path, runner):
    from embcli.cli import cli

    target = copy_fixture("k3_functional.keras", tmp_path)
    killed_in_place(target, "words")
    torn = sha(target)
    journal_file = next(tmp_path.glob(".embcli-journal-*"))
    os.chown(journal_file, 12345, 12345)
    assert journal.pending_for(target) == []
    assert runner.invoke(cli, ["recover", str(target)]).output == "nothing to recover\n"
    assert sha(target) == torn
    assert journal_file.exists(), "another user's file is not embcli's to delete"


def test_a_journal_others_may_write_is_never_trusted(tmp_path, runner):
    from embcli.cli import cli

    target = copy_fixture("k3_functional.keras", tmp_path)
    killed_in_place(target, "words")
    torn = sha(target)
    journal_file = next(tmp_path.glob(".embcli-journal-*"))
    journal_file.chmod(0o666)
    assert journal.pending_for(target) == []
    runner.invoke(cli, ["recover", str(target)])
    assert sha(target) == torn


def test_recover_leaves_an_edit_alone_while_its_writer_runs(tmp_path, runner):
    """Liveness is the journal's lock, not a process id (which a PID namespace or a
    reused id would fool)."""
    from embcli.cli import cli

    target = copy_fixture("k3_functional.keras", tmp_path)
    ready = tmp_path / "ready"
    process = start(
        "assign", target, "-l", "words", "--fill", "zeros", "--rows", "0:20", "--in-place",
        pause="half-patched", ready=ready,
    )  # fmt: skip
    try:
        wait_until_paused(process, ready)
        torn = sha(target)
        assert journal.pending_for(target) == []
        assert runner.invoke(cli, ["recover", str(target)]).output == "nothing to recover\n"
        assert sha(target) == torn
        Path(f"{ready}.go").touch()
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            kill(process)
    assert embcli_leftovers(tmp_path) == []


def test_a_model_with_a_long_name_is_edited_in_place_and_recovered(tmp_path, runner):
    from embcli.cli import cli

    target = copy_fixture("k3_functional.keras", tmp_path, "m" * 240 + ".keras")
    original = sha(target)
    result = runner.invoke(
        cli, ["assign", str(target), "--fill", "zeros", "--rows", "1", "-l", "words", "--in-place"]
    )
    assert result.exit_code == 0, result.output
    edited = sha(target)
    killed_in_place(target, "positions")
    assert runner.invoke(cli, ["recover", str(target)]).exit_code == 0
    assert sha(target) == edited != original


def test_one_models_journal_does_not_concern_another_in_its_folder(tmp_path):
    first = copy_fixture("k3_functional.keras", tmp_path, "a.keras")
    second = copy_fixture("k3_functional.keras", tmp_path, "b.keras")
    killed_in_place(first, "words")
    assert [t for _, t in journal.pending_for(first)] == [first]
    assert journal.pending_for(second) == []


def test_a_full_disk_leaves_no_partial_journal(tmp_path, monkeypatch):
    from embcli.edit import assign

    target = copy_fixture("k3_functional.keras", tmp_path)
    original = sha(target)

    def full(fd, data):
        os.write(fd, bytes(data)[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal, "_write_all", full)
    with open_model(target) as model:
        table = find_table(model, "words")
        with pytest.raises(journal.JournalWriteFailed) as caught:
            assign(model, table, np.arange(3), np.zeros((3, 8), np.float32), target, in_place=True)
    assert str(caught.value) == (
        f"cannot write the undo journal for {target} in {tmp_path}: "
        "No space left on device; nothing was changed"
    )
    assert sha(target) == original
    assert embcli_leftovers(tmp_path) == []


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
    assert zipfile.ZipFile(target).testzip() is None
