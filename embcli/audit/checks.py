"""`check`: the problems that the stats of each table show against the caller's limits."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from embcli.audit.common import (
    AUDIT_BLOCK_BYTES,
    Problem,
    Progress,
    counted,
    require_count,
    require_limit,
    short_number,
)
from embcli.audit.consistency import vocabulary_problems
from embcli.audit.statistics import TableStats, table_stats
from embcli.formats.base import ModelFile, Table


@dataclass
class CheckReport:
    """The tables checked, their stats, and the problems found."""

    tables: list[TableStats]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def rows(self) -> int:
        return sum(s.table.rows for s in self.tables)

    def record(self) -> dict:
        return {
            "ok": self.ok,
            "tables": len(self.tables),
            "rows": self.rows,
            "problems": [p.record() for p in self.problems],
        }


def _checked_limits(
    max_norm: float | None, max_zero_rows: int | None
) -> tuple[float | None, int | None]:
    if max_norm is not None:
        max_norm = require_limit("max_norm", max_norm)
    if max_zero_rows is not None:
        max_zero_rows = require_count("max_zero_rows", max_zero_rows)
    return max_norm, max_zero_rows


def table_problems(
    found: TableStats,
    *,
    max_norm: float | None = None,
    max_zero_rows: int | None = None,
    no_duplicates: bool = False,
) -> list[Problem]:
    """What is wrong with one table, given its stats and the user's limits.

    Args:
        found: the table's stats, computed with the same `max_norm`.
        max_norm: a problem when some finite row's L2 norm is above this.
        max_zero_rows: a problem when more rows than this are all zero.
        no_duplicates: a problem when some row is bit-equal to an earlier one.

    Raises:
        BadArgument: a limit is NaN or negative.
    """
    max_norm, max_zero_rows = _checked_limits(max_norm, max_zero_rows)
    name = found.table.name
    problems = []
    if found.nonfinite_rows:
        count = found.nonfinite_rows
        problems.append(
            Problem(
                name,
                "nonfinite",
                count,
                f"{name}: {counted(count, 'row holds', 'rows hold')} NaN or Inf",
            )
        )
    if max_norm is not None and found.over_norm:
        count = found.over_norm
        problems.append(
            Problem(
                name,
                "max_norm",
                count,
                f"{name}: {counted(count, 'row has', 'rows have')} an L2 norm above "
                f"{short_number(max_norm)} (largest {short_number(found.norm_max or 0.0)})",
            )
        )
    if max_zero_rows is not None and found.zero_rows > max_zero_rows:
        count = found.zero_rows
        problems.append(
            Problem(
                name,
                "max_zero_rows",
                count,
                f"{name}: {counted(count, 'all-zero row', 'all-zero rows')}, "
                f"more than the {max_zero_rows} allowed",
            )
        )
    if no_duplicates and found.duplicate_rows:
        count = found.duplicate_rows
        problems.append(
            Problem(
                name,
                "duplicates",
                count,
                f"{name}: {counted(count, 'row duplicates', 'rows duplicate')} an earlier row",
            )
        )
    return problems


def check(
    model: ModelFile,
    tables: Iterable[Table],
    *,
    max_norm: float | None = None,
    max_zero_rows: int | None = None,
    no_duplicates: bool = False,
    vocab_consistent: bool = False,
    block_bytes: int = AUDIT_BLOCK_BYTES,
    progress: Progress = None,
) -> CheckReport:
    """Check tables for NaN/Inf rows and for the limits given (see `table_problems`).

    Args:
        vocab_consistent: also check each table against its vocabulary, where the model
            has one (see `embcli.audit.consistency.vocabulary_problems`).
        block_bytes: the size of the blocks read, as for `iter_blocks`.
        progress: called with the number of rows after each block.
    """
    max_norm, max_zero_rows = _checked_limits(max_norm, max_zero_rows)
    found = [
        table_stats(model, t, max_norm=max_norm, block_bytes=block_bytes, progress=progress)
        for t in tables
    ]
    problems = []
    for result in found:
        problems += table_problems(
            result, max_norm=max_norm, max_zero_rows=max_zero_rows, no_duplicates=no_duplicates
        )
        if vocab_consistent:
            problems += vocabulary_problems(model, result.table)
    return CheckReport(found, problems)
