"""Vector files in and out: `.npy`, `.npz`, projector `.tsv` (with `metadata.tsv`) and
word2vec text or binary for export; `.npy`, `.npz` and plain-number text for `assign --from`.
Token-keyed files for `assign --by-token` are read by `embcli.pretrained`."""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from embcli.errors import BadVectors, UnsupportedFormat
from embcli.guarded import ZIP_ERRORS, check_archive, check_directory_size, open_regular
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
TEXT_CHUNK_VALUES = 1 << 16
READ_BLOCK_BYTES = 16 * 1024 * 1024
BOM = "\ufeff"
NUMERIC_KINDS = "fiub"

Blocks = Callable[[], Iterator[tuple[int, np.ndarray]]]


def export_format(path: Path) -> str:
    try:
        return EXPORT_FORMATS[path.suffix.lower()]
    except KeyError:
        raise UnsupportedFormat(
            f"cannot tell the export format from {path.name!r}; use .npy, .npz, .tsv, .txt or .bin"
        ) from None


def write_npy_header(handle, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """The `.npy` header of a C-order array, version 1.0 unless the shape needs 2.0."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    if _needs_v2(shape):
        np.lib.format.write_array_header_2_0(handle, header)
    else:
        np.lib.format.write_array_header_1_0(handle, header)


def _needs_v2(shape: tuple[int, ...]) -> bool:
    return len(repr(shape)) > 60000


def write_npy(
    handle, shape: tuple[int, ...], dtype: np.dtype, blocks: Iterable[tuple[int, np.ndarray]]
) -> None:
    """Stream blocks of rows into an `.npy` file handle."""
    write_npy_header(handle, shape, dtype)
    for _, block in blocks:
        handle.write(np.ascontiguousarray(block, dtype=dtype).data.cast("B"))
        del block


def write_npz(path: Path, tables: Sequence[tuple[str, tuple[int, ...], np.dtype, Blocks]]) -> None:
    """One `.npy` member per table, keyed by name, each streamed."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, shape, dtype, blocks in tables:
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                write_npy(member, shape, dtype, blocks())


def write_projector_tsv(handle, blocks: Iterable[tuple[int, np.ndarray]]) -> None:
    """TensorBoard projector vectors: one row a line, values separated by tabs."""
    for start, block in blocks:
        _write_text_rows(handle, start, block, "\t", None)


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
        _write_text_rows(handle, start, block, " ", tokens)


def _write_text_rows(
    handle, start: int, block: np.ndarray, separator: str, tokens: Sequence[str] | None
) -> None:
    """Rows as text lines, written `TEXT_CHUNK_VALUES` values at a time at most, so that
    the text held at once stays small however many rows or columns the block has."""
    dim = block.shape[1] if block.ndim == 2 else 1
    block = block.reshape(len(block), dim)

    def label(index: int) -> str:
        return _w2v_token(tokens[index] if tokens is not None else str(index)) + " "

    if dim <= TEXT_CHUNK_VALUES:
        step = max(1, TEXT_CHUNK_VALUES // max(dim, 1))
        for at in range(0, len(block), step):
            lines = []
            for offset, row in enumerate(block[at : at + step]):
                prefix = label(start + at + offset) if separator == " " else ""
                lines.append(prefix + separator.join(number_text(v) for v in row) + "\n")
            handle.write("".join(lines))
        return
    for offset, row in enumerate(block):
        if separator == " ":
            handle.write(label(start + offset))
        for at in range(0, dim, TEXT_CHUNK_VALUES):
            piece = separator.join(number_text(v) for v in row[at : at + TEXT_CHUNK_VALUES])
            handle.write(piece if at == 0 else separator + piece)
        handle.write("\n")


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
        if block.shape[1] > TEXT_CHUNK_VALUES:
            for offset, row in enumerate(block):
                token = tokens[start + offset] if tokens is not None else str(start + offset)
                handle.write(_w2v_token(token).encode("utf-8") + b" ")
                handle.write(row.data.cast("B"))
                handle.write(b"\n")
            continue
        step = max(1, TEXT_CHUNK_VALUES // max(block.shape[1], 1))
        for at in range(0, len(block), step):
            records: list[bytes | memoryview] = []
            for offset, row in enumerate(block[at : at + step]):
                index = start + at + offset
                token = tokens[index] if tokens is not None else str(index)
                records.append(_w2v_token(token).encode("utf-8") + b" ")
                records.append(row.data.cast("B"))
                records.append(b"\n")
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


def load_vectors(
    path: Path, key: str | None = None, *, rows: int | None = None, dim: int | None = None
) -> np.ndarray:
    """A 2-D array of numbers from `.npy`, `.npz` or plain-number text. Never unpickles.

    Args:
        path: the vector file; it must be a regular file (never a FIFO or device).
        key: the array to take from an `.npz` holding several.
        rows: the number of vectors required, when known.
        dim: the vector length required, when known.

    `.npy` and `.npz` shapes are checked against `rows` and `dim`, and against the bytes
    the file or member holds, from their header before any data is read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".csv", ".tsv", ".txt"):
        raise BadVectors(f"{path.name}: use .npy, .npz, .csv, .tsv or .txt vectors")
    with open_regular(path, error=BadVectors) as handle:
        if suffix == ".npy":
            size = os.fstat(handle.fileno()).st_size
            array = _read_npy(handle, path.name, size, rows, dim)
        elif suffix == ".npz":
            array = _read_npz(handle, path.name, key, rows, dim)
        else:
            delimiter = "," if suffix == ".csv" else None
            array = _read_text(handle, path.name, delimiter, rows, dim)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise BadVectors(f"{path.name}: expected one vector per row, got shape {array.shape}")
    _check_shape(path.name, array.shape, rows, dim)
    return array


def _check_shape(what: str, shape: tuple[int, ...], rows: int | None, dim: int | None) -> None:
    """Refuse a shape that does not give `rows` vectors of length `dim`."""
    if len(shape) not in (1, 2):
        raise BadVectors(f"{what}: expected one vector per row, got shape {shape}")
    found_rows, found_dim = (1, shape[0]) if len(shape) == 1 else shape
    if dim is not None and found_dim != dim:
        raise BadVectors(f"{what}: vectors have {found_dim} values each; the table has dim {dim}")
    if rows is not None and found_rows != rows:
        raise BadVectors(f"{what} holds {found_rows} vectors; {rows} are needed")


def _read_npy(
    handle, what: str, size: int, rows: int | None = None, dim: int | None = None
) -> np.ndarray:
    """An array from an `.npy` stream of `size` bytes whose data must fill the rest of it.

    The header alone is checked (dtype, shape against `rows` and `dim`, and the data's
    size against `size`) before the data is read, straight into the array."""
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
    _check_shape(what, tuple(shape), rows, dim)
    count = math.prod(shape)
    if count * dtype.itemsize != size - handle.tell():
        raise BadVectors(f"{what}: the data does not match its declared shape {shape}")
    array = np.empty(count, dtype=dtype)
    target = array.data.cast("B")
    done = 0
    while done < len(target):
        got = handle.readinto(target[done : done + READ_BLOCK_BYTES])
        if not got:
            break
        done += got
    if done != len(target) or handle.read(1):
        raise BadVectors(f"{what}: the data does not match its declared shape {shape}")
    return array.reshape(shape, order="F" if fortran else "C")


def _read_npz(handle, name: str, key: str | None, rows: int | None, dim: int | None) -> np.ndarray:
    size = os.fstat(handle.fileno()).st_size
    check_directory_size(handle.fileno(), size)
    try:
        archive = zipfile.ZipFile(handle)
    except ZIP_ERRORS as exc:
        raise BadVectors(f"{name}: not a valid .npz file ({exc})") from None
    with archive:
        check_archive(archive, size)
        keys = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
        if key is None:
            if len(keys) != 1:
                raise BadVectors(
                    f"{name} holds {len(keys)} arrays",
                    remedy="npz_key",
                    detail=f": {', '.join(keys)}",
                )
            key = keys[0]
        if key not in keys:
            raise BadVectors(f"{name} has no array {key!r}; it has: {', '.join(keys)}")
        info = archive.getinfo(f"{key}.npy")
        try:
            with archive.open(info) as member:
                return _read_npy(member, f"{name}[{key}]", info.file_size, rows, dim)
        except ZIP_ERRORS as exc:
            raise BadVectors(f"{name}[{key}]: cannot be read ({exc})") from None


def _read_text(
    handle, name: str, delimiter: str | None, rows: int | None = None, dim: int | None = None
) -> np.ndarray:
    """Plain numbers, one vector a line; a leading UTF-8 byte order mark is skipped.

    Lines are gathered into float64 blocks as they are read; a line of the wrong length,
    or more lines than `rows`, is refused when it is met."""
    blocks: list[np.ndarray] = []
    pending: list[list[float]] = []
    count = 0
    width = None
    try:
        text = io.TextIOWrapper(handle, encoding="utf-8-sig")
        for number, line in enumerate(text, start=1):
            parts = line.replace("\t", " ").split(delimiter) if delimiter else line.split()
            parts = [p.strip() for p in parts if p.strip()]
            if not parts:
                continue
            try:
                row = [_parse_number(p) for p in parts]
            except ValueError:
                raise BadVectors(
                    f"{name}, line {number}: not a number: {parts[0][:40]!r}"
                ) from None
            if width is not None and len(row) != width:
                raise BadVectors(f"{name}, line {number}: {len(row)} values, expected {width}")
            if width is None:
                _check_shape(name, (len(row),), None, dim)
            width = len(row)
            count += 1
            if rows is not None and count > rows:
                raise BadVectors(f"{name} holds more than {rows} vectors; {rows} are needed")
            pending.append(row)
            if len(pending) * width >= TEXT_CHUNK_VALUES:
                blocks.append(np.array(pending, dtype=np.float64))
                pending = []
        text.detach()
    except UnicodeDecodeError as exc:
        raise BadVectors(f"{name}: not UTF-8 text ({exc.reason})") from None
    if pending:
        blocks.append(np.array(pending, dtype=np.float64))
    if not blocks:
        raise BadVectors(f"{name}: holds no vectors")
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def _parse_number(text: str) -> float:
    if "_" in text:
        raise ValueError(text)
    return float(text)
