"""Writes of several files or a folder commit all at once; `-o` without force never
replaces anything, however late it appears; edits over a model keep its identity.

Kill tests stop the writer at a named step (`EMBCLI_TEST_PAUSE_AT`), check that it got
there, SIGKILL it, and then check that reads refuse the half-committed model and that
`recover` finishes the commit."""

import errno
import os
import shutil
import signal
import stat
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
    tree_digest,
    wait_until_paused,
)

from embcli import atomic, commit, journal
from embcli.model import find_table, open_model, read_rows


def copy_fixture(fixture: str, folder: Path, name: str | None = None) -> Path:
    target = folder / (name or Path(fixture).name)
    source = FIXTURES / fixture
    if source.is_dir():
        shutil.copytree(source, target)
    elif fixture.startswith("tfk_ckpt/"):
        shutil.copytree(source.parent, folder, dirs_exist_ok=True)
    else:
        shutil.copy(source, target)
    if fixture.endswith(".weights.json"):
        for shard in FIXTURES.glob(fixture.removesuffix(".weights.json") + "_*.weights.h5"):
            shutil.copy(shard, folder / shard.name)
    return target


def rows_of(path: Path, layer: str) -> np.ndarray:
    with open_model(path) as model:
        table = find_table(model, layer)
        return read_rows(model, table, np.arange(table.rows))


def zero_rows(layer: str, *where: object) -> list[object]:
    return ["-l", layer, "--fill", "zeros", "--rows", "0:10", *where]


def model_files(folder: Path, by_name: bool = False) -> dict[str, object]:
    """Each model file's digest; with `by_name`, only the names in it (TensorFlow does
    not write the same bytes twice)."""
    found: dict[str, object] = {}
    for path in sorted(folder.iterdir()):
        if path.name[0] == ".":
            continue
        if by_name:
            found[path.name] = sorted(str(p.relative_to(path)) for p in path.rglob("*"))
        else:
            found[path.name] = tree_digest(path)
    return found


# What a killed write leaves, and what `recover` makes of it. ------------------------

CASES = {
    "sharded -o new": ("k3_sharded.weights.json", "words", "new", False),
    "sharded -o --force": ("k3_sharded.weights.json", "words", "existing", False),
    "folder -o --force": ("k3_folder", "words", "existing", False),
    "keras -o --force": ("k3_functional.keras", "words", "existing", False),
    "checkpoint --in-place": ("tfk_ckpt/ckpt", "word_emb", "in-place", True),
    "savedmodel --in-place": ("tfk_savedmodel", "word_emb", "in-place", True),
}
STEPS = ["staged", "commit-recorded", "commit-half", "commit-renamed"]


def case_params():
    for name, (fixture, layer, mode, needs_tf) in CASES.items():
        for step in STEPS:
            marks = [pytest.mark.tensorflow] if needs_tf else []
            if needs_tf and step in ("commit-recorded", "commit-renamed"):
                continue
            yield pytest.param(fixture, layer, mode, step, id=f"{name}-{step}", marks=marks)


def prepare(fixture: str, mode: str, folder: Path) -> tuple[list[object], Path]:
    """The arguments of the write, and the model it writes."""
    folder.mkdir()
    source = copy_fixture(fixture, folder)
    if mode == "in-place":
        return [source, "--in-place"], source
    output = folder / (
        "out" + source.name[source.name.index(".") :] if "." in source.name else "out"
    )
    if mode == "existing":
        run("assign", source, *zero_rows_layer(fixture), "-o", output)
        return [source, "-o", output, "--force"], output
    return [source, "-o", output], output


def zero_rows_layer(fixture: str) -> list[object]:
    layer = next(layer for f, layer, _, _ in CASES.values() if f == fixture)
    return ["-l", layer, "--fill", "zeros", "--rows", "20:30"]


@pytest.mark.parametrize(("fixture", "layer", "mode", "step"), case_params())
def test_a_write_killed_at_any_step_leaves_old_or_new_and_recover_finishes_it(
    tmp_path, runner, fixture, layer, mode, step
):
    from embcli.cli import cli

    expected_args, expected_model = prepare(fixture, mode, tmp_path / "expected")
    done = run("assign", expected_args[0], *zero_rows(layer), *expected_args[1:])
    assert done.returncode == 0, done.stderr
    args, model = prepare(fixture, mode, tmp_path / "killed")
    folder = model.parent
    before = model_files(folder)
    ready = tmp_path / "ready"
    process = start("assign", args[0], *zero_rows(layer), *args[1:], pause=step, ready=ready)
    wait_until_paused(process, ready)
    kill(process)
    if step == "staged":
        assert model_files(folder) == before
        assert journal.pending_for(model) == []
    else:
        assert journal.pending_for(model), "a half-done commit must be visible to reads"
        result = runner.invoke(cli, ["layers", str(model)])
        assert result.exit_code == 1
        if os.path.lexists(model) or mode != "new":
            assert "was interrupted" in result.output, result.output
        else:
            absent = f"Error: {model}: no such file or folder\n"
            assert "was interrupted" in result.output or result.output == absent
        assert runner.invoke(cli, ["recover", str(model)]).exit_code == 0
        by_name = fixture.startswith("tfk_")
        assert model_files(folder, by_name) == model_files(expected_model.parent, by_name)
        np.testing.assert_array_equal(rows_of(model, layer), rows_of(expected_model, layer))
        assert embcli_leftovers(folder) == []
    again = run("assign", args[0], *zero_rows(layer), *args[1:])
    assert again.returncode == 0 or "exists" in again.stderr, again.stderr
    assert embcli_leftovers(folder) == []


def test_ctrl_c_during_a_commit_waits_for_the_commit_to_finish(tmp_path):
    source = copy_fixture("k3_sharded.weights.json", tmp_path)
    output = tmp_path / "out.weights.json"
    ready = tmp_path / "ready"
    process = start(
        "assign", source, *zero_rows("words"), "-o", output, pause="commit-half", ready=ready
    )
    wait_until_paused(process, ready)
    process.send_signal(signal.SIGINT)
    Path(f"{ready}.go").touch()
    process.communicate(timeout=120)
    assert not journal.pending_for(output)
    assert not rows_of(output, "words")[:10].any()
    assert embcli_leftovers(tmp_path) == []


def test_a_folder_swap_cut_between_its_two_renames_is_finished(tmp_path, monkeypatch):
    """Where an atomic exchange is not supported, a folder is swapped by two renames; a
    crash between them leaves no model at the path, and the record puts the new one."""
    from embcli.edit import assign

    source = copy_fixture("k3_folder", tmp_path)
    output = tmp_path / "out"
    shutil.copytree(source, output)

    def first_rename_only(step):
        os.replace(step.target, step.staged.parent / commit.PREVIOUS_NAME)
        raise RuntimeError("killed between the renames")

    monkeypatch.setattr(commit, "_replace_folder", first_rename_only)
    with open_model(source) as model:
        table = find_table(model, "words")
        with pytest.raises(RuntimeError):
            assign(model, table, np.arange(4), np.zeros((4, 8), np.float32), output, force=True)
    monkeypatch.undo()
    assert not output.exists()
    assert journal.pending_for(output)
    assert journal.recover_model(output) == ["out"]
    assert not rows_of(output, "words")[:4].any()
    assert embcli_leftovers(tmp_path) == []


# No clobbering. ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "output_name"),
    [
        ("k3_functional.keras", "out.keras"),
        ("k3_sharded.weights.json", "out.weights.json"),
        ("k3_folder", "out"),
    ],
)
def test_an_output_that_appears_during_the_write_is_never_replaced(tmp_path, fixture, output_name):
    source = copy_fixture(fixture, tmp_path)
    output = tmp_path / output_name
    ready = tmp_path / "ready"
    process = start(
        "assign", source, *zero_rows("words"), "-o", output, pause="staged", ready=ready
    )
    wait_until_paused(process, ready)
    output.write_bytes(b"someone else's file")
    Path(f"{ready}.go").touch()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert err == f"Error: {output} exists; use --force to replace it\n"
    assert output.read_bytes() == b"someone else's file"
    assert embcli_leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [output_name, "ready", "ready.go", source.name]
        + [p.name for p in FIXTURES.glob("k3_sharded_*.weights.h5") if "sharded" in fixture]
    )


def test_a_dangling_link_at_the_output_counts_as_existing(tmp_path, runner):
    from embcli.cli import cli

    source = copy_fixture("k3_functional.keras", tmp_path)
    output = tmp_path / "out.keras"
    output.symlink_to(tmp_path / "nowhere")
    result = runner.invoke(cli, ["assign", str(source), *zero_rows("words"), "-o", str(output)])
    assert result.exit_code == 1
    assert result.output == f"Error: {output} exists; use --force to replace it\n"
    assert output.is_symlink() and not (tmp_path / "nowhere").exists()


def test_files_written_together_are_committed_together(tmp_path):
    vectors = tmp_path / "vectors.tsv"
    labels = tmp_path / "metadata.tsv"
    vectors.write_text("old vectors\n")
    labels.write_text("old labels\n")

    def broken(temp: Path) -> None:
        temp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device", str(temp))

    with pytest.raises(atomic.WriteFailed) as caught:
        atomic.write_new_file(
            vectors, True, lambda t: t.write_text("new\n"), also=[(labels, broken)]
        )
    assert (
        str(caught.value) == f"cannot write {vectors}: No space left on device; nothing was changed"
    )
    assert vectors.read_text() == "old vectors\n" and labels.read_text() == "old labels\n"
    atomic.write_new_file(
        vectors,
        True,
        lambda t: t.write_text("new\n"),
        also=[(labels, lambda t: t.write_text("l\n"))],
    )
    assert vectors.read_text() == "new\n" and labels.read_text() == "l\n"
    assert embcli_leftovers(tmp_path) == []


# Messages and identity. -------------------------------------------------------------


def test_a_full_output_disk_is_blamed_on_the_output(tmp_path, runner, monkeypatch):
    from embcli.cli import cli

    source = copy_fixture("k3_functional.keras", tmp_path)
    output = tmp_path / "out.keras"

    def full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))

    monkeypatch.setattr(atomic.shutil, "copyfile", full)
    result = runner.invoke(cli, ["assign", str(source), *zero_rows("words"), "-o", str(output)])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: cannot write {output}: No space left on device; nothing was changed\n"
    )
    assert embcli_leftovers(tmp_path) == []


def compressed_copy(source: Path, target: Path) -> None:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info), zipfile.ZIP_DEFLATED)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_compressed_archive_rewritten_in_place_keeps_owner_group_and_mode(tmp_path, runner):
    from embcli.cli import cli

    target = tmp_path / "m.keras"
    compressed_copy(FIXTURES / "k3_functional.keras", target)
    os.chown(target, 1234, 2345)
    target.chmod(0o640)
    result = runner.invoke(cli, ["assign", str(target), *zero_rows("words"), "--in-place"])
    assert result.exit_code == 0, result.output
    status = target.stat()
    assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (1234, 2345, 0o640)
    assert not rows_of(target, "words")[:10].any()
    assert zipfile.ZipFile(target).testzip() is None


def test_a_rewrite_in_place_is_refused_when_the_file_is_not_writable(tmp_path, monkeypatch):
    from embcli.edit import assign

    target = tmp_path / "m.keras"
    compressed_copy(FIXTURES / "k3_functional.keras", target)
    target.chmod(0o444)
    before = sha(target)
    real_open = os.open

    def as_a_user(path, flags, *args, **kwargs):
        if Path(path) == target and flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    with open_model(target) as model:
        table = find_table(model, "words")
        monkeypatch.setattr(os, "open", as_a_user)
        with pytest.raises(atomic.NotWritable) as caught:
            assign(model, table, np.arange(2), np.zeros((2, 8), np.float32), target, in_place=True)
        monkeypatch.undo()
    assert str(caught.value) == f"{target} is not writable; it was left unchanged"
    assert sha(target) == before
    assert embcli_leftovers(tmp_path) == []


def test_an_in_place_patch_keeps_inode_owner_and_mode(tmp_path, runner):
    from embcli.cli import cli

    target = copy_fixture("k3.weights.h5", tmp_path)
    target.chmod(0o604)
    before = target.stat()
    result = runner.invoke(cli, ["assign", str(target), *zero_rows("words"), "--in-place"])
    assert result.exit_code == 0, result.output
    after = target.stat()
    assert (after.st_ino, after.st_uid, after.st_gid, after.st_mode) == (
        before.st_ino,
        before.st_uid,
        before.st_gid,
        before.st_mode,
    )


# Which commit records are trusted. ----------------------------------------------------


def planted_record(folder: Path, target: str) -> Path:
    """A commit record (and its staged file) as a killed writer would leave them."""
    temp = folder / ".embcli-tmp-1-planted"
    temp.mkdir()
    staged = temp / "staged"
    staged.write_bytes(b"new bytes")
    record = commit.record_path(folder, temp)
    body = {
        "magic": "EMBCLI-COMMIT-1",
        "temp": temp.name,
        "steps": [
            {"target": target, "staged": "staged", "replace": True, "inode": staged.stat().st_ino}
        ],
    }
    record.write_text(__import__("json").dumps(body))
    record.chmod(0o600)
    return record


def test_a_commit_record_is_finished_only_within_its_own_folder(tmp_path):
    (tmp_path / "inside").mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    planted_record(tmp_path / "inside", "../victim")
    assert commit.pending(tmp_path / "inside") == []
    assert commit.finish(tmp_path / "inside") == []
    assert victim.read_bytes() == b"precious"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant another user's file")
def test_a_commit_record_planted_by_another_user_is_never_trusted(tmp_path):
    target = tmp_path / "model.keras"
    target.write_bytes(b"root's model")
    record = planted_record(tmp_path, "model.keras")
    os.chown(record, 12345, 12345)
    assert commit.pending(tmp_path) == []
    assert journal.recover(tmp_path) == []
    assert target.read_bytes() == b"root's model"
    os.chown(record, 0, 0)
    assert [p.record for p in commit.pending(tmp_path)] == [record]
    assert journal.recover(tmp_path) == ["model.keras"]
    assert target.read_bytes() == b"new bytes"
    assert embcli_leftovers(tmp_path) == []


def test_the_next_write_in_the_folder_finishes_a_killed_commit_first(tmp_path):
    (tmp_path / "source").mkdir()
    source = copy_fixture("k3_sharded.weights.json", tmp_path / "source")
    output = tmp_path / "out.weights.json"
    ready = tmp_path / "source" / "ready"
    process = start(
        "assign", source, *zero_rows("words"), "-o", output, pause="commit-half", ready=ready
    )
    wait_until_paused(process, ready)
    kill(process)
    assert journal.pending_for(output)
    other = tmp_path / "other.weights.json"
    done = run("assign", source, *zero_rows("words"), "-o", other)
    assert done.returncode == 0, done.stderr
    assert journal.pending_for(output) == []
    np.testing.assert_array_equal(rows_of(output, "words"), rows_of(other, "words"))
    assert embcli_leftovers(tmp_path) == []
