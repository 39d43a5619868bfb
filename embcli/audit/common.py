"""What the audits share: the block size, progress reports, table selection, row bytes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from embcli.formats.base import ModelFile, Table
from embcli.model import find_table, list_tables

AUDIT_BLOCK_BYTES = 8 * 1024 * 1024

Progress = Callable[[int], None] | None


def report_progress(progress: Progress, rows: int) -> None:
    """Tell `progress`, if any, that `rows` more rows were read."""
    if progress is not None:
        progress(rows)


def audited_tables(model: ModelFile, layer: str | None) -> list[Table]:
    """The table `layer` names, or without it every embedding table."""
    return [find_table(model, layer)] if layer is not None else list_tables(model)


def row_bytes(block: np.ndarray) -> np.ndarray:
    """Each row's bytes, as a `(rows, bytes_per_row)` uint8 array."""
    block = np.ascontiguousarray(block)
    return block.view(np.uint8).reshape(len(block), -1)


def short_number(value: float) -> str:
    """A float in at most 6 significant digits, for messages."""
    return f"{value:.6g}"
