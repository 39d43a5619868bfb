"""The `Vocabulary` type: which token each row of a table stands for, and the rows of
given tokens. Where a vocabulary comes from is `embcli.vocab`'s job."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from embcli.errors import UnknownToken
from embcli.formats.base import Table

if TYPE_CHECKING:
    from embcli.tokenizer_assets import VocabularyAsset
    from embcli.tokenizers import TokenizerVocabulary

TOKENIZER_SOURCE = "tokenizer:"


class Vocabulary:
    """The tokens of a table, in row order.

    Attributes:
        tokens: one token per row, as text (IntegerLookup ids as decimal strings).
        source: where it came from: `config:<layer>`, `asset:<path>` or `file:<path>`.
        specials: how many leading rows hold the mask and OOV tokens.
        layer: the name of the lookup layer it came from, if any.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        source: str,
        specials: int = 0,
        layer: str | None = None,
        tokenizer: TokenizerVocabulary | None = None,
        asset: VocabularyAsset | None = None,
    ) -> None:
        self.tokens = list(tokens)
        self.source = source
        self.specials = specials
        self.layer = layer
        self.tokenizer = tokenizer
        self.asset = asset

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self.tokens)} tokens from {self.source})"

    @cached_property
    def _rows(self) -> dict[str, list[int]]:
        rows: dict[str, list[int]] = {}
        for row, token in enumerate(self.tokens):
            rows.setdefault(token, []).append(row)
        return rows

    def rows_of(self, token: str) -> list[int]:
        """Every row that holds `token` (several for repeated OOV tokens); [] if none."""
        return self._rows.get(token, [])

    def row_of(self, token: str) -> int:
        """The row of `token`: the first row that holds it, or for a tokenizer's
        vocabulary the id the tokenizer gives it (a repeated token's last row). Raises
        UnknownToken if no row does."""
        rows = self._rows.get(token)
        if not rows:
            raise UnknownToken(f"{token!r} is not in the vocabulary ({self.source})")
        if self.tokenizer is not None:
            return self.tokenizer.ids.get(token, rows[-1])
        return rows[0]

    def token_at(self, row: int) -> str | None:
        return self.tokens[row] if 0 <= row < len(self.tokens) else None

    def spare_rows(self, table: Table) -> int:
        """Rows of `table` past the vocabulary's last token (padding, such as a table
        rounded up to a multiple of 64); 0 when the vocabulary fills the table."""
        return max(0, table.rows - len(self.tokens))

    def size_problem(self, table: Table) -> str | None:
        """A warning when the vocabulary and the table disagree on the number of rows."""
        if len(self.tokens) == table.rows:
            return None
        return (
            f"{table.name}: the vocabulary ({self.source}) has {len(self.tokens)} "
            f"tokens but the table has {table.rows} rows"
        )


def token_rows(
    vocabulary: Vocabulary, table: Table, tokens: Sequence[str], lowercase: bool = False
) -> np.ndarray:
    """The row of each token in `table`, in order; `UnknownToken` for a token that the
    vocabulary lacks or that lies beyond the table's rows."""
    found = []
    for word in tokens:
        index = vocabulary.row_of(word.lower() if lowercase else word)
        if index >= table.rows:
            raise UnknownToken(
                f"{word!r} is row {index} of the vocabulary, beyond the "
                f"{table.rows} rows of {table.name}"
            )
        found.append(index)
    return np.asarray(found, dtype=np.int64)
