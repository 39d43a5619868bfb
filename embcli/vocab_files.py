"""Vocabulary files the user gives: one token a line, a TSV column, or a tokenizer's own
file (`vocab.json`, `tokenizer.json`, `tokenizer.model`, `*.spm`)."""

from __future__ import annotations

from pathlib import Path

from embcli.errors import BadVocabulary
from embcli.vocabulary import Vocabulary

MAX_VOCABULARY_FILE = 1 << 31


def load_vocabulary_file(path: str | Path, column: str | None = None) -> Vocabulary:
    """Tokens from a file: one per line, or with `column` a TSV with a header row.

    Only line breaks end a line (`\\n`, `\\r\\n`); blank lines at the end are dropped.
    A tokenizer's own file is read as its format says, told by its name and content:
    a JSON token -> id map (`vocab.json`), a Hugging Face `tokenizer.json` (or a keras-hub
    preset's, whose vocabulary is under `assets/` beside it), a SentencePiece model
    (`tokenizer.model`, `*.spm`).
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_VOCABULARY_FILE:
            raise BadVocabulary(f"{path}: larger than {MAX_VOCABULARY_FILE} bytes")
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadVocabulary(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadVocabulary(f"{path}: is a folder, not a vocabulary file") from None
    if column is None:
        from embcli.tokenizer_vocab import read_tokenizer_file

        tokenizer = read_tokenizer_file(path, data)
        if tokenizer is not None:
            return Vocabulary(tokenizer.tokens, f"file:{path}", tokenizer=tokenizer)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadVocabulary(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    if column is not None:
        lines = _tsv_column(path, lines, column)
    if not lines:
        raise BadVocabulary(f"{path}: holds no tokens")
    return Vocabulary(lines, f"file:{path}")


def _tsv_column(path: Path, lines: list[str], column: str) -> list[str]:
    if not lines:
        raise BadVocabulary(f"{path}: empty; expected a header row naming {column!r}")
    header = lines[0].split("\t")
    if column not in header:
        raise BadVocabulary(f"{path}: no column {column!r}; columns: {', '.join(header)}")
    at = header.index(column)
    tokens = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) <= at:
            raise BadVocabulary(f"{path}, line {number}: no {column!r} field")
        tokens.append(fields[at])
    return tokens
