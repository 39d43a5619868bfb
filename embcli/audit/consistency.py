"""Whether a table agrees with the other things in the model that state its size: its
vocabulary (one token a row, none repeated) and the row count its config declares.
"""

from __future__ import annotations

from embcli.audit.common import Problem, counted
from embcli.formats.base import ModelFile, Table
from embcli.resize_config import LAYER_SIZE_KEYS, SIZE_KEY_BY_CLASS
from embcli.vocab import Vocabulary, find_vocabulary

SHOWN_TOKENS = 5


def declared_rows(model: ModelFile, table: Table) -> int | None:
    """The row count the model's config declares for the table, or None where the config
    lists no layer for it or states no count: `input_dim` (`Embedding`,
    `ReversibleEmbedding`), `sequence_length` (`PositionEmbedding`) or `vocabulary_size`.

    A declared count that differs from the table's rows means Keras will refuse to load
    the weights into the model the config builds.
    """
    entry = model.layer_config(table)
    if entry is None:
        return None
    keys = [SIZE_KEY_BY_CLASS[table.class_name]] if table.class_name in SIZE_KEY_BY_CLASS else []
    for key in keys + list(LAYER_SIZE_KEYS):
        value = entry.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def vocabulary_problems(
    model: ModelFile, table: Table, vocabulary: Vocabulary | None = None
) -> list[Problem]:
    """Where the table, its vocabulary and its declared size disagree.

    Args:
        vocabulary: the table's tokens; by default the model's own (`find_vocabulary`).
            With none known, only the declared size is checked.

    Returns:
        `vocab_size` when the vocabulary holds another number of tokens than the table
        has rows; `vocab_duplicates` when a token of the vocabulary proper repeats an
        earlier row's token (the mask and OOV rows may repeat among themselves);
        `input_dim` when the declared size differs from the table's rows.
    """
    name = table.name
    if vocabulary is None:
        vocabulary = find_vocabulary(model, table)
    problems = []
    if vocabulary is not None:
        size = vocabulary.size_problem(table)
        if size is not None:
            problems.append(Problem(name, "vocab_size", abs(len(vocabulary) - table.rows), size))
        repeated = repeated_tokens(vocabulary)
        if repeated:
            count = sum(len(rows) for rows in repeated.values())
            shown = ", ".join(
                f"{token!r} ({'row' if len(rows) == 1 else 'rows'} {', '.join(map(str, rows))})"
                for token, rows in list(repeated.items())[:SHOWN_TOKENS]
            )
            more = (
                f" and {len(repeated) - SHOWN_TOKENS} more" if len(repeated) > SHOWN_TOKENS else ""
            )
            problems.append(
                Problem(
                    name,
                    "vocab_duplicates",
                    count,
                    f"{name}: {counted(count, 'token repeats', 'tokens repeat')} an earlier "
                    f"token of the vocabulary ({vocabulary.source}): {shown}{more}",
                )
            )
    declared = declared_rows(model, table)
    if declared is not None and declared != table.rows:
        problems.append(
            Problem(
                name,
                "input_dim",
                abs(declared - table.rows),
                f"{name}: the config declares {declared} rows but the table has {table.rows}",
            )
        )
    return problems


def repeated_tokens(vocabulary: Vocabulary) -> dict[str, list[int]]:
    """Each token of the vocabulary proper that an earlier row already holds, with the
    rows that repeat it, in row order."""
    first_row: dict[str, int] = {}
    repeated: dict[str, list[int]] = {}
    for row, token in enumerate(vocabulary.tokens):
        if token in first_row and row >= vocabulary.specials:
            repeated.setdefault(token, []).append(row)
        first_row.setdefault(token, row)
    return repeated
