"""Audit commands: stats, check, diff, neighbors."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import click

from embcli.commands.options import (
    check_vocab_options,
    layer_option,
    model_argument,
    reject_unknown_options,
    terminal_progress,
    vocab_options,
)

if TYPE_CHECKING:
    from embcli.audit import TableDiff
    from embcli.formats.base import Table

PROGRESS_VALUES = 10**7
METRIC_NAMES = ("cosine", "dot", "l2")
SHOWN_ROWS = 10
STATS_COLUMNS = (
    ("name", "name"),
    ("rows", "rows"),
    ("dim", "dim"),
    ("dtype", "dtype"),
    ("nan_rows", "nan"),
    ("inf_rows", "inf"),
    ("zero_rows", "zero"),
    ("duplicate_rows", "dup"),
    ("norm_min", "norm_min"),
    ("norm_mean", "norm_mean"),
    ("norm_max", "norm_max"),
    ("mean", "mean"),
    ("std", "std"),
)
_ROW_INDEX = re.compile(r"^[+-]?\d+$")


class Limit(click.FloatRange):
    """A float of at least 0 that is a number: NaN is refused, and Inf unless allowed."""

    def __init__(self, allow_inf: bool = True) -> None:
        super().__init__(min=0)
        self.allow_inf = allow_inf

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number.", param, ctx)
        if math.isinf(number) and not self.allow_inf:
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
only_layer_option = click.option(
    "-l",
    "--layer",
    "layer",
    metavar="NAME",
    help="Only this table: layer name, outer/inner path, or weight path (any 2-D weight). "
    "Default: every embedding table.",
)


@contextmanager
def progress(tables: list[Table], label: str) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr over the tables' rows, for long work on a terminal only."""
    values = sum(t.rows * t.dim for t in tables)
    rows = sum(t.rows for t in tables)
    with terminal_progress(rows, label, values > PROGRESS_VALUES) as update:
        yield update


def short(value: float | None) -> float | None:
    """A float rounded to 6 significant digits, for aligned text."""
    return None if value is None else float(f"{value:.6g}")


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


@click.command()
@model_argument
@only_layer_option
@json_option
def stats(model: str, layer: str | None, as_json: bool) -> None:
    """Count the rows of each embedding table that hold NaN or Inf, are all zero, or
    repeat an earlier row, and summarise row norms and values (as the model computes
    with them). -l picks one table, which may be any 2-D weight.

    \b
    Example:
        embcli stats model.keras
        embcli stats model.h5 -l words --json
    """
    from embcli.audit import audited_tables
    from embcli.audit import stats as table_stats
    from embcli.model import open_model
    from embcli.output import aligned, to_json

    with open_model(model) as opened:
        tables = audited_tables(opened, layer)
        with progress(tables, "stats") as update:
            found = table_stats(opened, tables, progress=update)
    records = [s.record() for s in found]
    if as_json:
        click.echo(to_json(records))
    elif records:
        rows = [
            [short(r[key]) if isinstance(r[key], float) else r[key] for key, _ in STATS_COLUMNS]
            for r in records
        ]
        click.echo(aligned(rows, [header for _, header in STATS_COLUMNS]))
    else:
        click.echo("no embedding tables (name a 2-D weight with --layer)", err=True)


@click.command()
@model_argument
@only_layer_option
@click.option(
    "--max-norm",
    type=Limit(),
    metavar="X",
    help="Fail when a row's L2 norm is above X.",
)
@click.option(
    "--max-zero-rows",
    type=click.IntRange(min=0),
    metavar="N",
    help="Fail when a table has more than N all-zero rows.",
)
@click.option("--no-duplicates", is_flag=True, help="Fail when a row repeats an earlier row.")
@click.option(
    "--vocab-consistent",
    is_flag=True,
    help="Fail when a table's vocabulary (the model's own) has another number of tokens "
    "than the table has rows, or repeats a token.",
)
@json_option
def check(
    model: str,
    layer: str | None,
    max_norm: float | None,
    max_zero_rows: int | None,
    no_duplicates: bool,
    vocab_consistent: bool,
    as_json: bool,
) -> None:
    """Check every embedding table (or the one -l names) for rows holding NaN or Inf,
    and for the limits given. Prints one line per problem and exits 1, or prints a
    summary and exits 0.

    \b
    Example:
        embcli check model.keras
        embcli check model.keras --max-norm 10 --max-zero-rows 1 --no-duplicates
        embcli check model.keras --vocab-consistent
    """
    from embcli.audit import audited_tables
    from embcli.audit import check as check_tables
    from embcli.model import open_model
    from embcli.output import to_json

    with open_model(model) as opened:
        tables = audited_tables(opened, layer)
        with progress(tables, "check") as update:
            report = check_tables(
                opened,
                tables,
                max_norm=max_norm,
                max_zero_rows=max_zero_rows,
                no_duplicates=no_duplicates,
                vocab_consistent=vocab_consistent,
                progress=update,
            )
    if as_json:
        click.echo(to_json(report.record()))
    elif report.ok:
        click.echo(
            f"ok: {plural(len(report.tables), 'table')}, {plural(report.rows, 'row')} checked"
        )
    else:
        for problem in report.problems:
            click.echo(problem.message)
    if not report.ok:
        click.get_current_context().exit(1)


def diff_line(result: TableDiff) -> str:
    """One line of `diff` text output for a table that differs."""
    name, a, b = result.name, result.a, result.b
    if b is None:
        return f"{name}: only in A"
    if a is None:
        return f"{name}: only in B"
    if result.status == "shape_changed":
        return f"{name}: shape {a.rows}x{a.dim} -> {b.rows}x{b.dim}"
    parts = []
    if result.status == "dtype_changed":
        parts.append(f"dtype {a.quantized or a.dtype} -> {b.quantized or b.dtype}")
    changed = result.changed_rows
    if changed or not parts:
        shown = ", ".join(str(i) for i in changed[:SHOWN_ROWS])
        more = f" and {len(changed) - SHOWN_ROWS} more" if len(changed) > SHOWN_ROWS else ""
        rows = f"{len(changed)} of {plural(a.rows, 'row')} changed"
        parts.append(f"{rows}: {shown}{more}" if changed else rows)
    if changed:
        cosine = result.min_cosine
        measures = f"max abs diff {short(result.max_abs_diff)}"
        measures += f", min cosine {short(cosine)}" if cosine is not None else ""
        parts.append(measures)
    return f"{name}: " + "; ".join(parts)


@click.command()
@click.argument("model_a", metavar="A", type=click.Path(path_type=str))
@click.argument("model_b", metavar="B", type=click.Path(path_type=str))
@only_layer_option
@click.option(
    "--atol",
    type=Limit(allow_inf=False),
    default=0.0,
    metavar="X",
    help="Count a value as changed only when it moved by more than X "
    "(default 0: any change of bits).",
)
@json_option
def diff(model_a: str, model_b: str, layer: str | None, atol: float, as_json: bool) -> None:
    """Compare the tables of models A and B (of any formats), matched by name: tables
    in one only, changed shapes and dtypes, and the rows whose values changed. Exits 0
    when they are the same, 1 when they differ, 2 on any error, as diff(1) does.

    \b
    Example:
        embcli diff old.keras new.keras
        embcli diff model.keras model.h5 -l words --atol 1e-6 --json
    """
    from embcli.errors import EmbcliError

    try:
        results = _diff(model_a, model_b, layer, atol)
    except EmbcliError as exc:
        from embcli.cli import CLI_REMEDIES

        _fail(exc.explain(CLI_REMEDIES))
    except OSError as exc:
        _fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
    except MemoryError:
        _fail("out of memory")
    if as_json:
        from embcli.output import to_json

        click.echo(to_json([r.record() for r in results]))
    else:
        differing = [r for r in results if r.differs]
        for result in differing:
            click.echo(diff_line(result))
        if differing:
            click.echo(f"{len(differing)} of {plural(len(results), 'table')} differ")
        else:
            rows = sum(r.a.rows for r in results if r.a is not None)
            click.echo(f"same: {plural(len(results), 'table')}, {plural(rows, 'row')} compared")
    if any(r.differs for r in results):
        click.get_current_context().exit(1)


def _diff(model_a: str, model_b: str, layer: str | None, atol: float) -> list[TableDiff]:
    from embcli.audit import compared_tables, diff_pairs, match_tables
    from embcli.model import open_model

    with open_model(model_a) as opened_a, open_model(model_b) as opened_b:
        pairs = match_tables(opened_a, opened_b, layer)
        with progress(compared_tables(pairs), "diff") as update:
            return diff_pairs(opened_a, opened_b, pairs, atol=atol, progress=update)


def _fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    click.get_current_context().exit(2)


@click.command(context_settings={"ignore_unknown_options": True})
@model_argument
@click.argument("row", required=False)
@layer_option
@click.option(
    "--token", metavar="WORD", help="Ask about the row of WORD in the table's vocabulary."
)
@vocab_options
@click.option(
    "-k",
    "k",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    metavar="K",
    help="How many neighbors to print.",
)
@click.option(
    "--metric",
    type=click.Choice(METRIC_NAMES),
    default="cosine",
    show_default=True,
    help="cosine similarity, dot product, or l2 distance (smaller is nearer).",
)
@json_option
def neighbors(
    model: str,
    row: str | None,
    layer: str | None,
    token: str | None,
    vocab_path: str | None,
    vocab_column: str | None,
    k: int,
    metric: str,
    as_json: bool,
) -> None:
    """Print the k rows nearest ROW (an index; -1 is the last row) or the row of --token
    WORD, best first, leaving that row out. Rows holding NaN or Inf are skipped.

    \b
    Example:
        embcli neighbors model.keras -l words 12
        embcli neighbors model.keras -l words --token cat -k 5 --metric l2 --json
    """
    from embcli.audit import neighbors as nearest_rows
    from embcli.audit import query_row, query_vocabulary
    from embcli.commands.read import token_text
    from embcli.model import find_table, open_model
    from embcli.output import aligned, to_json

    reject_unknown_options(tuple(a for a in (row,) if a is not None))
    check_vocab_options(vocab_path, vocab_column)
    if (row is None) == (token is None):
        raise click.UsageError("give either ROW or --token WORD")
    if row is not None and not _ROW_INDEX.match(row):
        raise click.UsageError(f"ROW is one row index, such as 12 or -1, not {row!r}")
    with open_model(model) as opened:
        table = find_table(opened, layer)
        vocabulary = query_vocabulary(opened, table, token, vocab_path, vocab_column)
        problem = vocabulary.size_problem(table) if vocabulary is not None else None
        if problem:
            click.echo(f"warning: {problem}", err=True)
        index = query_row(table, None if row is None else int(row), token, vocabulary)
        with progress([table], "neighbors") as update:
            found = nearest_rows(opened, table, index, k, metric, progress=update)
    words = vocabulary.token_at if vocabulary is not None else None
    if as_json:
        result = {"layer": table.name, "query": index}
        if words:
            result["token"] = words(index)
        result["metric"] = metric
        result["neighbors"] = [
            {**n.record(), **({"token": words(n.index)} if words else {})} for n in found
        ]
        click.echo(to_json(result))
        return
    if words:
        rows = [[n.index, token_text(words(n.index)), short(n.score)] for n in found]
        click.echo(aligned(rows, ["row", "token", metric]))
    else:
        click.echo(aligned([[n.index, short(n.score)] for n in found], ["row", metric]))


COMMANDS = [stats, check, diff, neighbors]
