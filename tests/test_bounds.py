"""Bounded inputs: special files are refused before they can block, JSON and archive
members are bounded before they are parsed, vector files are checked from their headers
before their data is read, and a byte order mark hides no data."""

import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import embcli.guarded.parsing as parsing
from embcli.errors import BadVectors, UnsafeFile, UnsupportedFormat
from embcli.guarded import open_regular, parse_json, read_regular, sniff
from embcli.pretrained import detect_format, read_token_vectors
from embcli.vectors import load_vectors

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
MODEL = FIXTURES / "k3_functional.keras"
COMMAND_TIMEOUT = 120


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run embcli in a subprocess, so that a hang fails the test instead of stopping it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "embcli", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


@pytest.fixture
def fifo(tmp_path):
    def make(name: str) -> Path:
        path = tmp_path / name
        os.mkfifo(path)
        return path

    return make


def test_open_regular_reads_a_regular_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"data")
    with open_regular(path) as handle:
        assert handle.read() == b"data"
    assert read_regular(path, 4) == b"data"


def test_open_regular_refuses_a_fifo_without_blocking(fifo):
    with pytest.raises(UnsafeFile, match="a FIFO, not a regular file"):
        open_regular(fifo("pipe"))


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda tmp: tmp, "a folder"),
        (lambda tmp: Path("/dev/null"), "a character device"),
    ],
)
def test_open_regular_refuses_other_special_files(tmp_path, make, kind):
    with pytest.raises(UnsafeFile, match=f"{kind}, not a regular file"):
        open_regular(make(tmp_path))


def test_open_regular_refuses_a_socket(tmp_path):
    path = tmp_path / "s"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        with pytest.raises(UnsafeFile, match="a socket, not a regular file"):
            open_regular(path)
    finally:
        server.close()


def test_open_regular_refuses_symlinks_only_when_asked(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(target)
    with open_regular(link) as handle:
        assert handle.read() == b"x"
    with pytest.raises(UnsafeFile, match="a symbolic link"):
        open_regular(link, follow_symlinks=False)


def test_open_regular_bounds_size_and_names_missing_files(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 11)
    with pytest.raises(UnsafeFile, match="larger than 10 bytes"):
        open_regular(path, max_bytes=10)
    with pytest.raises(BadVectors, match="no such file"):
        open_regular(tmp_path / "missing", error=BadVectors)


def test_sniff_refuses_a_fifo(fifo):
    with pytest.raises(UnsupportedFormat, match="a FIFO"):
        sniff(fifo("model.keras"))


@pytest.mark.parametrize(
    "args",
    [
        ["layers", "{fifo}"],
        ["rows", "{fifo}", "0"],
        ["assign", str(MODEL), "-l", "words", "--from", "{fifo}", "--rows", "0", "-o", "o.keras"],
        ["assign", str(MODEL), "-l", "words", "--from", "{fifo}", "-o", "o.keras"],
    ],
    ids=["layers", "rows", "assign-from-npy", "assign-from-npy-whole"],
)
def test_cli_refuses_a_fifo_without_hanging(tmp_path, fifo, args):
    path = fifo("pipe.npy" if "--from" in args else "pipe.keras")
    result = run_cli(*[a.replace("{fifo}", str(path)) for a in args], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"Error: {path}: a FIFO, not a regular file\n"
    assert not (tmp_path / "o.keras").exists()


def test_by_token_refuses_a_fifo_vector_file(fifo):
    with pytest.raises(BadVectors, match="a FIFO, not a regular file"):
        read_token_vectors(fifo("glove.txt"), ["a"])


def test_parse_json_bounds_size_before_parsing(monkeypatch):
    monkeypatch.setattr(parsing, "MAX_JSON_BYTES", 10)
    with pytest.raises(UnsafeFile, match="config.json is larger than 10 bytes"):
        parse_json(b'{"a": "bcdefgh"}', "config.json")


def test_parse_json_bounds_objects_and_arrays(monkeypatch):
    monkeypatch.setattr(parsing, "MAX_JSON_CONTAINERS", 10)
    assert parse_json("[" + ",".join(["{}"] * 9) + "]", "c") == [{}] * 9
    with pytest.raises(UnsafeFile, match="holds more than 10 JSON objects and arrays"):
        parse_json("[" + ",".join(["{}"] * 10) + "]", "c")


def test_parse_json_refuses_deep_nesting_cleanly():
    with pytest.raises(Exception) as caught:
        parse_json("[" * 500_000 + "]" * 500_000, "c")
    assert caught.type.__name__ in ("MalformedFile", "UnsafeFile")


def test_a_config_that_inflates_past_the_bound_is_refused(tmp_path):
    """The shape of the tester's 296 KB archive whose config.json inflates to 255 MB."""
    rng = np.random.default_rng(0)
    size = parsing.MAX_JSON_BYTES + 1024
    text = np.full(size, ord(" "), dtype=np.uint8)
    text[rng.integers(0, size, size // 300)] = ord("1")
    text[0], text[-1] = ord("["), ord("]")
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", text.tobytes())
        with zipfile.ZipFile(MODEL) as source:
            archive.writestr("model.weights.h5", source.read("model.weights.h5"))
    result = run_cli("layers", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: archive member 'config.json' is larger than {parsing.MAX_JSON_BYTES} bytes\n"
    )


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_header_only(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    import io

    buffer = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def test_npz_shape_is_checked_from_its_header_before_any_data(tmp_path, monkeypatch):
    """The shape of the tester's 2 MB .npz whose member inflates to gigabytes."""
    rows, dim = 1 << 16, 256
    header = npy_header_only((rows, dim))
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("v.npy", "w", force_zip64=True) as member:
            member.write(header)
            zeros = bytes(1 << 20)
            for _ in range(rows * dim * 4 >> 20):
                member.write(zeros)
    assert path.stat().st_size < 1 << 20
    reads = []
    original = zipfile.ZipExtFile.readinto
    monkeypatch.setattr(
        zipfile.ZipExtFile, "readinto", lambda self, b: reads.append(len(b)) or original(self, b)
    )
    with pytest.raises(
        BadVectors, match=r"bomb.npz\[v\]: vectors have 256 values each; the table has dim 8"
    ):
        load_vectors(path, dim=8)
    with pytest.raises(BadVectors, match=r"bomb.npz\[v\] holds 65536 vectors; 2 are needed"):
        load_vectors(path, rows=2, dim=256)
    assert reads == []


def test_npy_size_is_checked_against_the_file_before_reading(tmp_path):
    path = tmp_path / "short.npy"
    path.write_bytes(npy_header_only((1 << 30, 1 << 10)) + bytes(64))
    with pytest.raises(BadVectors, match="does not match its declared shape"):
        load_vectors(path)


def test_npy_and_npz_still_load(tmp_path):
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    (tmp_path / "v.npy").write_bytes(npy_bytes(values))
    np.savez_compressed(tmp_path / "v.npz", v=values)
    for name in ("v.npy", "v.npz"):
        loaded = load_vectors(tmp_path / name, rows=3, dim=4)
        assert loaded.dtype == np.float32
        np.testing.assert_array_equal(loaded, values)


@pytest.mark.parametrize(("suffix", "separator"), [(".csv", ","), (".tsv", "\t"), (".txt", " ")])
def test_a_byte_order_mark_is_skipped_in_number_files(tmp_path, suffix, separator):
    path = tmp_path / f"v{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + f"1{separator}2\n3{separator}4\n".encode())
    np.testing.assert_array_equal(load_vectors(path), [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("name", "text", "fmt"),
    [
        ("g.txt", "the 1 2\nof 3 4\n", "glove"),
        ("w.txt", "2 2\nthe 1 2\nof 3 4\n", "word2vec"),
        ("t.tsv", "the\t1\t2\nof\t3\t4\n", "tsv"),
    ],
)
def test_a_byte_order_mark_hides_no_token(tmp_path, name, text, fmt):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert detect_format(path) == fmt
    found = read_token_vectors(path, ["the", "of"])
    assert (found.format, found.records) == (fmt, 2)
    assert found.positions.tolist() == [0, 1]
    np.testing.assert_array_equal(found.vectors, [[1, 2], [3, 4]])


def test_hdf5_is_never_opened_on_a_fifo(fifo):
    from embcli.guarded import h5_root_names, open_h5

    path = fifo("w.h5")
    with pytest.raises(UnsafeFile, match="a FIFO"):
        open_h5(path, 0)
    with pytest.raises(UnsafeFile, match="a FIFO"):
        h5_root_names(path)


def test_a_shard_that_is_a_fifo_is_refused(tmp_path, fifo):
    import shutil

    for shard in FIXTURES.glob("k3_sharded*"):
        shutil.copyfile(shard, tmp_path / shard.name)
    (tmp_path / "k3_sharded_00001.weights.h5").unlink()
    os.mkfifo(tmp_path / "k3_sharded_00001.weights.h5")
    result = run_cli("layers", str(tmp_path / "k3_sharded.weights.json"), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1


def test_number_text_is_checked_line_by_line_against_the_table(tmp_path):
    path = tmp_path / "v.csv"
    path.write_text("1,2,3\n" + "not numbers at all\n")
    with pytest.raises(BadVectors, match="v.csv: vectors have 3 values each; the table has dim 2"):
        load_vectors(path, dim=2)
    path.write_text("1,2\n3,4\n5,6\nnot numbers at all\n")
    with pytest.raises(BadVectors, match="v.csv holds more than 2 vectors; 2 are needed"):
        load_vectors(path, rows=2, dim=2)


def test_number_text_in_many_blocks_reads_back_exactly(tmp_path):
    values = np.random.default_rng(1).standard_normal((70_000, 3))
    path = tmp_path / "v.txt"
    path.write_text("".join(" ".join(repr(v) for v in row) + "\n" for row in values.tolist()))
    loaded = load_vectors(path, rows=70_000, dim=3)
    assert loaded.dtype == np.float64
    assert loaded.tobytes() == values.tobytes()
    column = tmp_path / "c.txt"
    column.write_text("1\n2\n3\n")
    assert load_vectors(column).shape == (3, 1)
