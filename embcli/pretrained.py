"""Streaming readers for token-keyed vector files: GloVe text, word2vec text and binary,
fastText `.vec`, and TSV (token, then values).

Files such as GloVe 840B run to gigabytes, so they are read in large binary blocks and
only the lines whose token is wanted are parsed: each line's token is split off and looked
up in a dict of UTF-8 bytes first. Memory stays bounded by the block size plus the vectors
that match.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embcli.errors import BadVectors
from embcli.guarded import open_regular
from embcli.vocab import Vocabulary

GLOVE = "glove"
WORD2VEC = "word2vec"
WORD2VEC_BINARY = "word2vec-binary"
FASTTEXT = "fasttext"
TSV = "tsv"
FORMATS = (GLOVE, WORD2VEC, WORD2VEC_BINARY, FASTTEXT, TSV)
HEADER_FORMATS = (WORD2VEC, WORD2VEC_BINARY, FASTTEXT)
BLOCK_BYTES = 1024 * 1024
SNIFF_BYTES = 1024 * 1024
SNIFF_LINES = 100
MAX_TOKEN_BYTES = 1024 * 1024
UNMATCHED_SAMPLE = 10
UTF8_BOM = b"\xef\xbb\xbf"
_HEADER = re.compile(rb"\s*(\d+)[ \t]+(\d+)\s*")


@dataclass
class TokenVectors:
    """What a scan of a vector file found for the tokens asked for.

    Attributes:
        format: the file's format, one of FORMATS.
        dim: the file's vector length.
        positions: for each vector found, the position of its token in the list asked for.
        vectors: the vectors found, `(len(positions), dim)`, float64 (float32 for binary).
        records: how many vectors the file holds (lines or binary records read).
        duplicates: records whose token was already found earlier in the file.
    """

    format: str
    dim: int
    positions: np.ndarray
    vectors: np.ndarray
    records: int
    duplicates: int = 0

    @property
    def skipped(self) -> int:
        """Records whose token was not asked for."""
        return self.records - len(self.positions) - self.duplicates


def detect_format(path: Path) -> str:
    """Tell the format from the first lines: a `count dim` header means word2vec (text or
    binary by what follows; fastText for `.vec`); tab-separated lines mean TSV; else GloVe."""
    head = _head(path)
    first, _, rest = head.partition(b"\n")
    header = _HEADER.fullmatch(first)
    if header:
        if path.suffix.lower() == ".bin":
            return WORD2VEC_BINARY
        dim = int(header.group(2))
        line = rest.split(b"\n", 1)[0]
        if _is_text_record(line, dim):
            return FASTTEXT if path.suffix.lower() == ".vec" else WORD2VEC
        return WORD2VEC_BINARY
    if b"\t" in first:
        return TSV
    return GLOVE


def _head(path: Path) -> bytes:
    """The file's first bytes, after a UTF-8 byte order mark if it starts with one."""
    with open_regular(path, error=BadVectors) as handle:
        head = handle.read(SNIFF_BYTES + len(UTF8_BOM))
    head = head[len(UTF8_BOM) :] if head.startswith(UTF8_BOM) else head[:SNIFF_BYTES]
    if not head.strip():
        raise BadVectors(f"{path.name}: the file is empty")
    return head


def _is_text_record(line: bytes, dim: int) -> bool:
    try:
        fields = line.decode("utf-8").split()
    except UnicodeDecodeError:
        return False
    if len(fields) < dim + 1:
        return False
    try:
        [float(v) for v in fields[-dim:]]
    except ValueError:
        return False
    return True


class _Counted:
    """A file handle that reports how many bytes each read returned."""

    def __init__(self, handle, progress: Callable[[int], None]) -> None:
        self._handle = handle
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._progress(len(data))
        return data


def read_token_vectors(
    path: str | Path,
    tokens: Sequence[str],
    *,
    fmt: str | None = None,
    dim: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> TokenVectors:
    """Find the vectors of `tokens` in a token-keyed vector file, reading it once.

    Args:
        path: the vector file.
        tokens: distinct tokens to look for; matching is exact, on UTF-8 bytes.
        fmt: one of FORMATS, or None to detect it.
        dim: the vector length required; a file with another one is an error.
        progress: called with the number of bytes read, as the file is read.

    The first vector given for a token wins. Raises BadVectors for unreadable files.
    """
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise BadVectors(f"unknown vector file format {fmt!r}; use one of {', '.join(FORMATS)}")
    head = _head(path)
    wanted: dict[bytes, int] = {}
    for position, token in enumerate(tokens):
        if token:
            wanted.setdefault(token.encode("utf-8"), position)
    separator = b"\t" if fmt == TSV else b" "
    file_dim, skip = _layout(path, head, fmt, separator)
    if dim is not None and file_dim != dim:
        raise BadVectors(
            f"{path.name} holds {file_dim}-dimensional vectors; the table has dim {dim}"
        )
    with open_regular(path, error=BadVectors) as handle:
        bom = len(UTF8_BOM) if handle.read(len(UTF8_BOM)) == UTF8_BOM else 0
        handle.seek(bom + skip)
        scan: _BinaryScan | _TextScan
        header = _HEADER.fullmatch(head.partition(b"\n")[0])
        if fmt == WORD2VEC_BINARY and header is not None:
            scan = _BinaryScan(path, wanted, file_dim, int(header.group(1)))
        else:
            scan = _TextScan(path, wanted, file_dim, separator)
        scan.run(_Counted(handle, progress) if progress else handle)
    positions = np.fromiter(scan.found.keys(), dtype=np.int64, count=len(scan.found))
    if scan.found:
        vectors = np.stack(list(scan.found.values()))
    else:
        vectors = np.zeros((0, file_dim), dtype=np.float64)
    return TokenVectors(fmt, file_dim, positions, vectors, scan.records, scan.duplicates)


def _layout(path: Path, head: bytes, fmt: str, separator: bytes) -> tuple[int, int]:
    """The file's dim and where its records begin."""
    first, newline, _ = head.partition(b"\n")
    if fmt in HEADER_FORMATS:
        header = _HEADER.fullmatch(first)
        if not header:
            raise BadVectors(f"{path.name}: no `count dim` header line, so not {fmt}")
        file_dim = int(header.group(2))
        if file_dim < 1:
            raise BadVectors(f"{path.name}: the header gives dim {file_dim}")
        return file_dim, len(first) + len(newline)
    lines = head.split(b"\n")
    if len(head) == SNIFF_BYTES and len(lines) > 1:
        lines.pop()
    lines = [line for line in lines[:SNIFF_LINES] if line.strip()]
    skip = 0
    if fmt == TSV and lines and not _tsv_numbers(lines[0]):
        skip = len(lines[0]) + 1
        lines = lines[1:]
    counts = Counter(len(line.rstrip().split(separator)) - 1 for line in lines)
    if not counts:
        raise BadVectors(f"{path.name}: holds no vectors")
    file_dim = counts.most_common(1)[0][0]
    if file_dim < 1:
        raise BadVectors(f"{path.name}: lines hold a token but no values; is it a {fmt} file?")
    return file_dim, skip


def _tsv_numbers(line: bytes) -> bool:
    try:
        [float(v) for v in line.rstrip(b"\r\n").split(b"\t")[1:]]
    except ValueError:
        return False
    return True


@dataclass
class _TextScan:
    """One pass over text records: `token<sep>v1<sep>v2 ...` a line."""

    path: Path
    wanted: dict[bytes, int]
    dim: int
    separator: bytes
    found: dict[int, np.ndarray] = field(default_factory=dict)
    records: int = 0
    duplicates: int = 0

    def __post_init__(self) -> None:
        # A wanted token with a separator inside is met under its first word; such lines
        # are checked in full.
        self.prefixes = {t.split(self.separator, 1)[0] for t in self.wanted if self.separator in t}

    def run(self, handle) -> None:
        pending = b""
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            while True:
                block = handle.read(BLOCK_BYTES)
                if not block:
                    break
                data = pending + block if pending else block
                pending = data[self._lines(data) :]
            if pending.strip():
                self._lines(pending + b"\n")

    def _lines(self, data: bytes) -> int:
        """Look at each whole line of `data`; returns where the unfinished last one starts."""
        find = data.find
        wanted = self.wanted
        prefixes = self.prefixes
        separator = self.separator
        at = 0
        records = 0
        while True:
            end = find(b"\n", at)
            if end < 0:
                break
            cut = find(separator, at, end)
            token = data[at:cut] if cut >= 0 else data[at:end]
            position = wanted.get(token)
            if position is not None or token in prefixes:
                self._record(data[at:end], position, data[cut + 1 : end] if cut >= 0 else b"")
            elif not token.strip() and cut < 0:
                records -= 1
            records += 1
            at = end + 1
        self.records += records
        return at

    def _record(self, line: bytes, position: int | None, rest: bytes) -> None:
        values = _numbers(rest) if position is not None else None
        if values is None or len(values) != self.dim:
            token, values = self._split_from_right(line)
            position = self.wanted.get(token)
            if position is None:
                return
            if values is None:
                shown = token.decode("utf-8", "replace")
                raise BadVectors(
                    f"{self.path.name}: the vector for {shown!r} is not {self.dim} numbers"
                )
        if position is None:
            return
        if position in self.found:
            self.duplicates += 1
        else:
            self.found[position] = values

    def _split_from_right(self, line: bytes) -> tuple[bytes, np.ndarray | None]:
        """The token as all but the last `dim` fields: tokens may hold the separator."""
        fields = line.rstrip().rsplit(self.separator, self.dim)
        if len(fields) != self.dim + 1:
            return line.partition(self.separator)[0], None
        values = _numbers(self.separator.join(fields[1:]))
        if values is None or len(values) != self.dim:
            return fields[0], None
        return fields[0], values


def _numbers(text: bytes) -> np.ndarray | None:
    try:
        return np.fromstring(text, dtype=np.float64, sep=" ")
    except (ValueError, DeprecationWarning):
        return None


@dataclass
class _BinaryScan:
    """One pass over word2vec binary records: `token ` then `dim` little-endian float32."""

    path: Path
    wanted: dict[bytes, int]
    dim: int
    count: int
    found: dict[int, np.ndarray] = field(default_factory=dict)
    records: int = 0
    duplicates: int = 0

    def run(self, handle) -> None:
        width = self.dim * 4
        buffer = b""
        at = 0
        wanted = self.wanted
        while self.records < self.count:
            space = buffer.find(b" ", at)
            if space < 0 or space + 1 + width > len(buffer):
                if len(buffer) - at > MAX_TOKEN_BYTES + width:
                    raise BadVectors(
                        f"{self.path.name}: record {self.records + 1} has no "
                        "token ending in a space; not word2vec binary"
                    )
                block = handle.read(BLOCK_BYTES)
                if not block:
                    raise BadVectors(
                        f"{self.path.name}: ends after {self.records} of the "
                        f"{self.count} vectors its header announces"
                    )
                buffer = buffer[at:] + block
                at = 0
                continue
            token = buffer[at:space].lstrip(b"\n")
            position = wanted.get(token)
            if position is not None:
                if position in self.found:
                    self.duplicates += 1
                else:
                    self.found[position] = np.frombuffer(buffer, "<f4", self.dim, space + 1).copy()
            at = space + 1 + width
            self.records += 1


# Matching a vocabulary ------------------------------------------------------------------


@dataclass
class Coverage:
    """How much of a vocabulary a vector file covered."""

    path: Path
    format: str
    dim: int
    matched: int
    total: int
    unmatched: list[str]
    skipped: int
    records: int
    duplicates: int = 0
    special_matched: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        share = f" ({100 * self.matched / self.total:.1f}%)" if self.total else ""
        lines = [
            f"matched {self.matched:,} of {self.total:,} vocabulary tokens{share} in "
            f"{self.path.name} ({self.format}, {self.dim}-d, {self.records:,} vectors)"
        ]
        if self.special_matched:
            lines.append("also matched special tokens: " + _quoted(self.special_matched))
        missing = self.total - self.matched
        if missing:
            more = f" (first {len(self.unmatched)})" if missing > len(self.unmatched) else ""
            lines.append(f"unmatched{more}: {_quoted(self.unmatched)}")
        lines.append(
            f"skipped {self.skipped:,} token(s) of {self.path.name} that the vocabulary lacks"
        )
        if self.duplicates:
            lines.append(
                f"ignored {self.duplicates:,} repeated token(s); the first vector "
                "given for a token was used"
            )
        return lines


def _quoted(tokens: Iterable[str]) -> str:
    return ", ".join(repr(t) for t in tokens)


def vocabulary_vectors(
    vocabulary: Vocabulary,
    rows: int,
    path: str | Path,
    *,
    fmt: str | None = None,
    dim: int | None = None,
    lowercase: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, Coverage]:
    """The rows of a table whose token has a vector in `path`, those vectors, and a
    coverage report.

    Args:
        vocabulary: the table's tokens in row order; rows past `rows` are ignored.
        rows: the table's row count.
        path: a token-keyed vector file (see `read_token_vectors`).
        fmt: the file's format, or None to detect it.
        dim: the table's dim; a file with another one is an error.
        lowercase: look each vocabulary token up in lower case.
        progress: called with the number of bytes of `path` read, as it is read.

    Every row whose token appears gets the vector, so repeated OOV tokens share one.
    """
    path = Path(path)
    by_key: dict[str, list[int]] = {}
    for row, token in enumerate(vocabulary.tokens[:rows]):
        by_key.setdefault(token.lower() if lowercase else token, []).append(row)
    keys = list(by_key)
    found = read_token_vectors(path, keys, fmt=fmt, dim=dim, progress=progress)
    specials = vocabulary.tokens[: vocabulary.specials]
    special_keys = {(t.lower() if lowercase else t) for t in specials}
    matched_keys = {keys[p] for p in found.positions.tolist()}
    regular = [k for k in keys if k not in special_keys and k]
    unmatched = [k for k in regular if k not in matched_keys]
    coverage = Coverage(
        path=path,
        format=found.format,
        dim=found.dim,
        matched=len(regular) - len(unmatched),
        total=len(regular),
        unmatched=unmatched[:UNMATCHED_SAMPLE],
        skipped=found.skipped,
        records=found.records,
        duplicates=found.duplicates,
        special_matched=[k for k in keys if k in special_keys and k in matched_keys],
    )
    table_rows: list[int] = []
    sources: list[int] = []
    for at, position in enumerate(found.positions.tolist()):
        for row in by_key[keys[position]]:
            table_rows.append(row)
            sources.append(at)
    order = np.argsort(np.asarray(table_rows, dtype=np.int64), kind="stable")
    indices = np.asarray(table_rows, dtype=np.int64)[order]
    values = (
        found.vectors[np.asarray(sources, dtype=np.int64)[order]]
        if len(order)
        else np.zeros((0, found.dim), dtype=np.float64)
    )
    return indices, values, coverage
