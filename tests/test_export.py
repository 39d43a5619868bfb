"""`.npy` export at copy speed: where a table's stored bytes are its values, the header is
written and the bytes copied file to file. The copy is checked against Keras's own values
(fixtures/expected) and against the decoding path, byte for byte."""

import errno
import os
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import embcli.export as export
from embcli.cli import cli
from embcli.formats.base import ModelFile
from embcli.model import list_tables, open_model
from embcli.vectors import (
    TEXT_CHUNK_VALUES,
    write_projector_tsv,
    write_word2vec_binary,
    write_word2vec_text,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
H5_FIXTURES = [
    "k3_functional.keras",
    "k3_dtypes.keras",
    "k3_int8.keras",
    "k3_nested.keras",
    "k3_folder",
    "k3.weights.h5",
    "k3_sharded.weights.json",
    "k3_legacy.h5",
    "tfk_full.h5",
    "tfk.keras",
]


@pytest.fixture
def copies(monkeypatch):
    """Records each fast copy made: (offset, size)."""
    made = []
    original = export.copy_range

    def spy(source, target, offset, size):
        made.append((offset, size))
        original(source, target, offset, size)

    monkeypatch.setattr(export, "copy_range", spy)
    return made


def export_npy(model: Path, table: str, output: Path) -> bytes:
    with open_model(model) as opened:
        (found,) = [t for t in list_tables(opened, all_weights=True) if t.name == table]
        export.export_tables(opened, [found], output)
    return output.read_bytes()


def expected_tables(name: str) -> dict:
    """Keras's own values of each table, by its path of layer names."""
    import json

    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    return dict(np.load(FIXTURES / manifest[name]["expected"]))


def keras_values(expected: dict, qualified: str) -> list:
    if qualified in expected:
        return [expected[qualified]]
    leaf = qualified.rsplit("/", 1)[-1]
    return [v for k, v in expected.items() if k.rsplit("/", 1)[-1] == leaf]


def table_names(name: str) -> list[tuple[str, str]]:
    with open_model(FIXTURES / name) as opened:
        return [(t.name, t.qualified) for t in list_tables(opened)]


@pytest.mark.parametrize("name", H5_FIXTURES)
def test_npy_export_copies_plain_tables_and_matches_keras(tmp_path, copies, monkeypatch, name):
    expected = expected_tables(name)
    for table, qualified in table_names(name):
        copies.clear()
        fast = export_npy(FIXTURES / name, table, tmp_path / "fast.npy")
        loaded = np.load(tmp_path / "fast.npy", allow_pickle=False)
        candidates = keras_values(expected, qualified)
        assert candidates, table
        assert any(
            loaded.dtype == want.dtype and loaded.tobytes() == want.tobytes() for want in candidates
        ), table
        plain = loaded.dtype in (np.float32, np.float16) and "int8" not in name
        plain = plain and not (name == "k3_dtypes.keras" and table == "emb_bf16")
        if plain:
            assert copies == [(copies[0][0], loaded.nbytes)], table
        else:
            assert copies == [], table
        with monkeypatch.context() as patched:
            patched.setattr(ModelFile, "stored_bytes", lambda self, weight: None)
            for kind in ("Keras3File", "LegacyH5File"):
                module = "keras3" if kind == "Keras3File" else "legacy_h5"
                cls = getattr(__import__(f"embcli.formats.{module}", fromlist=[kind]), kind)
                patched.setattr(cls, "stored_bytes", lambda self, weight: None)
            slow = export_npy(FIXTURES / name, table, tmp_path / "slow.npy")
        assert slow == fast, table
        (tmp_path / "fast.npy").unlink()
        (tmp_path / "slow.npy").unlink()


def test_a_compressed_archive_is_exported_by_decoding(tmp_path, copies):
    compressed = tmp_path / "deflated.keras"
    with zipfile.ZipFile(FIXTURES / "k3_functional.keras") as source:
        with zipfile.ZipFile(compressed, "w", zipfile.ZIP_DEFLATED) as target:
            for info in source.infolist():
                target.writestr(info.filename, source.read(info))
    got = export_npy(compressed, "words", tmp_path / "a.npy")
    assert copies == []
    assert got == export_npy(FIXTURES / "k3_functional.keras", "words", tmp_path / "b.npy")
    assert len(copies) == 1
    want = expected_tables("k3_functional.keras")["words"]
    assert np.load(tmp_path / "a.npy").tobytes() == want.tobytes()


def test_a_big_endian_table_is_exported_by_decoding(tmp_path, copies):
    path = tmp_path / "big.weights.h5"
    shutil.copyfile(FIXTURES / "k3.weights.h5", path)
    with h5py.File(path, "r+") as handle:
        values = handle["layers/embedding/vars/0"][...]
        del handle["layers/embedding/vars/0"]
        handle.create_dataset("layers/embedding/vars/0", data=values.astype(">f4"))
    got = export_npy(path, "words", tmp_path / "a.npy")
    assert copies == []
    assert got == export_npy(FIXTURES / "k3.weights.h5", "words", tmp_path / "b.npy")


def test_a_chunked_table_is_exported_by_decoding(tmp_path, copies):
    path = tmp_path / "chunked.weights.h5"
    shutil.copyfile(FIXTURES / "k3.weights.h5", path)
    with h5py.File(path, "r+") as handle:
        values = handle["layers/embedding/vars/0"][...]
        del handle["layers/embedding/vars/0"]
        handle.create_dataset("layers/embedding/vars/0", data=values, chunks=(10, 8))
    got = export_npy(path, "words", tmp_path / "a.npy")
    assert copies == []
    assert got == export_npy(FIXTURES / "k3.weights.h5", "words", tmp_path / "b.npy")


def test_cli_npy_export_takes_the_fast_path(tmp_path, copies):
    output = tmp_path / "words.npy"
    result = CliRunner().invoke(
        cli, ["export", str(FIXTURES / "k3_functional.keras"), "-l", "words", "-o", str(output)]
    )
    assert result.exit_code == 0, result.output
    assert copies == [(copies[0][0], 50 * 8 * 4)]
    want = expected_tables("k3_functional.keras")["words"]
    assert np.load(output).tobytes() == want.tobytes()


def fail_with(code):
    def fail(*args):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize("broken", [(), ("_copy_file_range",), ("_copy_file_range", "_sendfile")])
def test_copy_range_falls_back_and_copies_the_same_bytes(tmp_path, monkeypatch, broken):
    data = os.urandom(3 * 1024 * 1024 + 17)
    source = tmp_path / "source"
    source.write_bytes(data)
    for name in broken:
        monkeypatch.setattr(export, name, fail_with(errno.EXDEV))
    monkeypatch.setattr(export, "COPY_BLOCK_BYTES", 1 << 20)
    with open(source, "rb") as src, open(tmp_path / "target", "wb") as dst:
        dst.write(b"HEAD")
        dst.flush()
        export.copy_range(src.fileno(), dst.fileno(), 100, len(data) - 200)
    assert (tmp_path / "target").read_bytes() == b"HEAD" + data[100:-100]


def test_copy_range_reports_a_short_file(tmp_path):
    source = tmp_path / "source"
    source.write_bytes(b"x" * 10)
    with open(source, "rb") as src, open(tmp_path / "target", "wb") as dst:
        with pytest.raises(export.MalformedFile, match="6 bytes short"):
            export.copy_range(src.fileno(), dst.fileno(), 4, 12)


def test_copy_range_passes_other_errors_on(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "_copy_file_range", fail_with(errno.EIO))
    with open(__file__, "rb") as src, open(tmp_path / "target", "wb") as dst:
        with pytest.raises(OSError, match="Input/output error"):
            export.copy_range(src.fileno(), dst.fileno(), 0, 10)


class RecordingHandle:
    """A text or binary handle that keeps what is written and the largest single write."""

    def __init__(self):
        self.parts = []
        self.largest = 0

    def write(self, data):
        data = data if isinstance(data, str) else bytes(data)
        self.parts.append(data)
        self.largest = max(self.largest, len(data))


def reference_text(block, separator, labels):
    """What the text writers wrote before they wrote in pieces: one string a block."""
    from embcli.output import number_text

    prefix = (lambda i: f"{i} ") if labels else (lambda i: "")
    return "".join(
        prefix(i) + separator.join(number_text(v) for v in row) + "\n"
        for i, row in enumerate(block)
    )


# At most TEXT_CHUNK_VALUES values (or rows) go into one write: float32 text of at most 15
# characters and a separator each, and in word2vec text a row label of 7 digits and a space.
PIECE_LIMIT = 24 * TEXT_CHUNK_VALUES


@pytest.mark.parametrize("shape", [(200_000, 1), (1, 200_000), (300, 700)])
def test_text_export_writes_small_pieces_whatever_the_shape(shape):
    block = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    tsv = RecordingHandle()
    write_projector_tsv(tsv, [(0, block)])
    assert "".join(tsv.parts) == reference_text(block, "\t", labels=False)
    text = RecordingHandle()
    write_word2vec_text(text, shape, None, [(0, block)])
    assert "".join(text.parts) == f"{shape[0]} {shape[1]}\n" + reference_text(block, " ", True)
    assert tsv.largest < PIECE_LIMIT and text.largest < PIECE_LIMIT
    binary = RecordingHandle()
    write_word2vec_binary(binary, shape, None, [(0, block)])
    want = f"{shape[0]} {shape[1]}\n".encode() + b"".join(
        f"{i} ".encode() + row.astype("<f4").tobytes() + b"\n" for i, row in enumerate(block)
    )
    assert b"".join(binary.parts) == want
    assert binary.largest <= max(16 * TEXT_CHUNK_VALUES, 4 * shape[1])


@pytest.mark.parametrize("name", ["k3_functional.keras", "k3.weights.h5"])
def test_a_model_replaced_after_opening_is_exported_from_the_file_opened(tmp_path, copies, name):
    model = tmp_path / name
    shutil.copyfile(FIXTURES / name, model)
    impostor = tmp_path / "impostor"
    impostor.write_bytes(b"\xff" * model.stat().st_size)
    with open_model(model) as opened:
        (table,) = [t for t in list_tables(opened) if t.name == "words"]
        os.replace(impostor, model)
        export.export_tables(opened, [table], tmp_path / "words.npy")
    assert copies == []
    want = expected_tables(name)["words"]
    assert np.load(tmp_path / "words.npy").tobytes() == want.tobytes()
