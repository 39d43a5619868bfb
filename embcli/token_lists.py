"""Token lists as text, one token a line, in a form that reads back exactly.

Most tokens are written as they are. A token that a plain line cannot hold (the empty
token, a token with a line break) is written as a JSON string literal, `"a\\nb"`; so is
any token that itself looks like one, so that reading never mistakes a token for an
escape. Reading decodes every line that is a JSON string literal and takes every other
line as it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from embcli.errors import BadVocabulary

MAX_TOKEN_LIST_BYTES = 1 << 31


def _is_literal(line: str) -> bool:
    if len(line) < 2 or not (line.startswith('"') and line.endswith('"')):
        return False
    try:
        return isinstance(json.loads(line), str)
    except ValueError:
        return False


def encode_token(token: str) -> str:
    """The line that stands for `token`."""
    if token == "" or "\n" in token or "\r" in token or _is_literal(token):
        return json.dumps(token, ensure_ascii=False)
    return token


def decode_line(line: str) -> str:
    """The token a line stands for."""
    return json.loads(line) if _is_literal(line) else line


def token_list_text(tokens: Iterable[str]) -> str:
    """Tokens one a line, each line ended by a newline."""
    return "".join(encode_token(token) + "\n" for token in tokens)


def read_token_list(path: str | Path) -> list[str]:
    """The tokens of a file written by `token_list_text` (or any plain one-a-line list).

    A UTF-8 byte order mark is skipped; lines end at `\\n` or `\\r\\n`; a final newline
    ends the last line rather than starting an empty one.
    """
    from embcli.guarded import read_regular

    path = Path(path)
    data = read_regular(path, MAX_TOKEN_LIST_BYTES, error=BadVocabulary)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadVocabulary(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise BadVocabulary(f"{path}: holds no tokens")
    lines = text.split("\n")
    if "\r" in text:
        lines = [line.removesuffix("\r") for line in lines]
    return [decode_line(line) if line.startswith('"') else line for line in lines]
