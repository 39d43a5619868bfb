"""Audits of whole tables, read a bounded block at a time: stats, check, diff, neighbors.

Every audit streams a table through `embcli.model.iter_blocks`, so memory stays bounded by
the block size plus, where a module says so, a fixed budget of its own. Values are the ones
the model computes with: bfloat16 widened, int8 dequantized. Sums are taken in float64.

One module per job; the submodules' names differ from the functions they hold, so that
`embcli.audit.diff` is always the function:

- `common`: block size, progress, table selection, row bytes
- `duplicates`: rows bit-equal to an earlier row
- `statistics`: `stats`, `table_stats`
- `checks`: `check`, `table_problems`
- `consistency`: `vocabulary_problems`, and the hook for the config's `input_dim`
- `comparison`: `diff`, `diff_tables`, `match_tables`
- `similarity`: `neighbors`, `nearest`
"""

from embcli.audit.checks import CheckReport, check, table_problems
from embcli.audit.common import (
    AUDIT_BLOCK_BYTES,
    Problem,
    Progress,
    audited_tables,
    counted,
    report_progress,
    require_count,
    require_limit,
    row_bytes,
    short_number,
)
from embcli.audit.comparison import (
    TableDiff,
    TablePair,
    compare_blocks,
    compared_tables,
    diff,
    diff_pairs,
    diff_tables,
    match_tables,
)
from embcli.audit.consistency import declared_rows, repeated_tokens, vocabulary_problems
from embcli.audit.duplicates import (
    DUPLICATE_HASH_BYTES,
    DUPLICATE_MEMORY_BLOCKS,
    DuplicateFinder,
    count_duplicates,
    row_hashes,
    short_hashes,
)
from embcli.audit.similarity import (
    METRICS,
    Neighbor,
    UnusableQuery,
    exact_keys,
    nearest,
    neighbors,
    query_row,
    query_vector,
    query_vocabulary,
)
from embcli.audit.statistics import TableStats, stats, table_stats

__all__ = [
    "AUDIT_BLOCK_BYTES",
    "DUPLICATE_HASH_BYTES",
    "DUPLICATE_MEMORY_BLOCKS",
    "METRICS",
    "CheckReport",
    "DuplicateFinder",
    "Neighbor",
    "Problem",
    "Progress",
    "TableDiff",
    "TablePair",
    "TableStats",
    "UnusableQuery",
    "audited_tables",
    "check",
    "compare_blocks",
    "compared_tables",
    "counted",
    "count_duplicates",
    "declared_rows",
    "diff",
    "diff_pairs",
    "diff_tables",
    "exact_keys",
    "match_tables",
    "nearest",
    "neighbors",
    "query_row",
    "query_vector",
    "query_vocabulary",
    "repeated_tokens",
    "report_progress",
    "require_count",
    "require_limit",
    "row_bytes",
    "row_hashes",
    "short_hashes",
    "short_number",
    "stats",
    "table_problems",
    "table_stats",
    "vocabulary_problems",
]
