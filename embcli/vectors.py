"""Vector files in and out: `.npy`, `.npz`, projector `.tsv` (with `metadata.tsv`) and
word2vec text or binary for export; `.npy`, `.npz` and plain-number text for `assign --from`.
Token-keyed files for `assign --by-token` are read by `embcli.pretrained`."""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from embcli.errors import BadVectors, UnsupportedFormat
from embcli.guarded import ZIP_ERRORS, check_archive, check_directory_size
from embcli.output import number_text

EXPORT_FORMATS = {
    ".npy": "npy",
    ".npz": "npz",
    ".tsv": "tsv",
    ".txt": "word2vec",
    ".bin": "word2vec-binary",
}
TOKEN_FORMATS = ("tsv", "word2vec", "word2vec-binary")
METADATA_SUFFIX = "metadata"
VECTORS_STEM = "vectors"
EMPTY_TOKEN = "<empty>"
MAX_NPY_HEADER = 64 * 1024
NUMERIC_KINDS = "fiub"

Blocks = Callable[[], Iterator[tuple[int, np.ndarray]]]


def export_format(path: Path) -> str:
    try:
        return EXPORT_FORMATS[path.suffix.lower()]
    except KeyError:
        raise UnsupportedFormat(
            f"cannot tell the export format from {path.name!r}; use .npy, .npz, .tsv, .txt or .bin"
        ) from None


def _npy_header(handle, shape: tuple[int, ...], dtype: np.dtype) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(handle, header) if _needs_v2(
        shape
    ) else np.lib.format.write_array_header_1_0(handle, header)


def _needs_v2(shape: tuple[int, ...]) -> bool:
    return len(repr(shape)) > 60000


def write_npy(
    handle, shape: tuple[int, ...], dtype: np.dtype, blocks: Iterable[tuple[int, np.ndarray]]
) -> None:
    """Stream blocks of rows into an `.npy` file handle."""
    _npy_header(handle, shape, dtype)
    for _, block in blocks:
        handle.write(memoryview(np.ascontiguousarray(block, dtype=dtype)).cast("B"))
        del block


def write_npz(path: Path, tables: Sequence[tuple[str, tuple[int, ...], np.dtype, Blocks]]) -> None:
    """One `.npy` member per table, keyed by name, each streamed."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, shape, dtype, blocks in tables:
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                write_npy(member, shape, dtype, blocks())


def write_projector_tsv(handle, blocks: Iterable[tuple[int, np.ndarray]]) -> None:
    """TensorBoard projector vectors: one row a line, values separated by tabs."""
    for _, block in blocks:
        handle.write("".join("\t".join(number_text(v) for v in row) + "\n" for row in block))


def write_word2vec_text(
    handle,
    shape: tuple[int, int],
    tokens: Sequence[str] | None,
    blocks: Iterable[tuple[int, np.ndarray]],
) -> None:
    """word2vec text: a `rows dim` line, then `token v1 v2 ...` a row. Without a vocabulary
    the row index stands for the token."""
    handle.write(f"{shape[0]} {shape[1]}\n")
    for start, block in blocks:
        lines = []
        for offset, row in enumerate(block):
            index = start + offset
            token = tokens[index] if tokens is not None else str(index)
            lines.append(_w2v_token(token) + " " + " ".join(number_text(v) for v in row) + "\n")
        handle.write("".join(lines))


def write_word2vec_binary(
    handle,
    shape: tuple[int, int],
    tokens: Sequence[str] | None,
    blocks: Iterable[tuple[int, np.ndarray]],
) -> None:
    """word2vec binary, as word2vec.c writes it: a `rows dim` line, then per row the token,
    a space, `dim` little-endian float32 values and a newline."""
    handle.write(f"{shape[0]} {shape[1]}\n".encode())
    for start, block in blocks:
        block = np.ascontiguousarray(block, dtype="<f4")
        records = []
        for offset, row in enumerate(block):
            index = start + offset
            token = tokens[index] if tokens is not None else str(index)
            records.append(_w2v_token(token).encode("utf-8") + b" " + row.tobytes() + b"\n")
        handle.write(b"".join(records))


def _w2v_token(token: str) -> str:
    return token.replace(" ", "\u00a0").replace("\n", "\\n") or EMPTY_TOKEN


def metadata_path(vectors: Path) -> Path:
    """Where the projector's labels go beside `vectors`: `vectors.tsv` -> `metadata.tsv`,
    `words_vectors.tsv` -> `words_metadata.tsv`, `words.tsv` -> `words_metadata.tsv`."""
    stem = vectors.stem
    if stem.lower().endswith(VECTORS_STEM):
        stem = stem[: -len(VECTORS_STEM)] + METADATA_SUFFIX
    else:
        stem = f"{stem}_{METADATA_SUFFIX}"
    return vectors.with_name(stem + vectors.suffix)


def write_metadata_tsv(handle, tokens: Sequence[str]) -> None:
    """TensorBoard projector labels: one token a line, for a single-column metadata file."""
    for token in tokens:
        label = token.replace("\t", " ").replace("\r", " ").replace("\n", " ")
        handle.write((label or EMPTY_TOKEN) + "\n")


# Reading vectors for `assign --from` ---------------------------------------------------


def load_vectors(path: Path, key: str | None = None) -> np.ndarray:
    """A 2-D array of numbers from `.npy`, `.npz` or plain-number text. Never unpickles."""
    if not path.is_file():
        raise BadVectors(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        with open(path, "rb") as handle:
            array = _read_npy(handle, path.name, os.fstat(handle.fileno()).st_size)
    elif suffix == ".npz":
        array = _read_npz(path, key)
    elif suffix in (".csv", ".tsv", ".txt"):
        array = _read_text(path, "," if suffix == ".csv" else None)
    else:
        raise BadVectors(f"{path.name}: use .npy, .npz, .csv, .tsv or .txt vectors")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise BadVectors(f"{path.name}: expected one vector per row, got shape {array.shape}")
    return array


def _read_npy(handle, what: str, size: int) -> np.ndarray:
    """An array from an `.npy` stream of `size` bytes whose data must fill the rest of it."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                handle, max_header_size=MAX_NPY_HEADER
            )
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                handle, max_header_size=MAX_NPY_HEADER
            )
        else:
            raise BadVectors(f"{what}: unsupported .npy version {version}")
    except (ValueError, SyntaxError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadVectors(f"{what}: not a valid .npy file ({reason})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in NUMERIC_KINDS:
        raise BadVectors(f"{what}: holds {dtype} values; only plain numbers are accepted")
    count = math.prod(shape)
    if count * dtype.itemsize != size - handle.tell():
        raise BadVectors(f"{what}: the data does not match its declared shape {shape}")
    data = handle.read(count * dtype.itemsize + 1)
    if len(data) != count * dtype.itemsize:
        raise BadVectors(f"{what}: the data does not match its declared shape {shape}")
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C")


def _read_npz(path: Path, key: str | None) -> np.ndarray:
    with open(path, "rb") as handle:
        check_directory_size(handle.fileno(), os.fstat(handle.fileno()).st_size)
    try:
        archive = zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise BadVectors(f"{path.name}: not a valid .npz file ({exc})") from None
    with archive:
        check_archive(archive, path.stat().st_size)
        keys = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
        if key is None:
            if len(keys) != 1:
                raise BadVectors(
                    f"{path.name} holds {len(keys)} arrays",
                    remedy="npz_key",
                    detail=f": {', '.join(keys)}",
                )
            key = keys[0]
        if key not in keys:
            raise BadVectors(f"{path.name} has no array {key!r}; it has: {', '.join(keys)}")
        info = archive.getinfo(f"{key}.npy")
        try:
            with archive.open(info) as member:
                return _read_npy(member, f"{path.name}[{key}]", info.file_size)
        except ZIP_ERRORS as exc:
            raise BadVectors(f"{path.name}[{key}]: cannot be read ({exc})") from None


def _read_text(path: Path, delimiter: str | None) -> np.ndarray:
    rows = []
    width = None
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                parts = line.replace("\t", " ").split(delimiter) if delimiter else line.split()
                parts = [p.strip() for p in parts if p.strip()]
                if not parts:
                    continue
                try:
                    row = [_parse_number(p) for p in parts]
                except ValueError:
                    raise BadVectors(
                        f"{path.name}, line {number}: not a number: {parts[0][:40]!r}"
                    ) from None
                if width is not None and len(row) != width:
                    raise BadVectors(
                        f"{path.name}, line {number}: {len(row)} values, expected {width}"
                    )
                width = len(row)
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise BadVectors(f"{path.name}: not UTF-8 text ({exc.reason})") from None
    if not rows:
        raise BadVectors(f"{path.name}: holds no vectors")
    return np.array(rows, dtype=np.float64)


def _parse_number(text: str) -> float:
    if "_" in text:
        raise ValueError(text)
    return float(text)
