"""Options shared by several commands, so they read and behave the same everywhere."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterator

import click

model_argument = click.argument(
    "model", type=click.Path(exists=False, dir_okay=True, file_okay=True, path_type=str)
)

layer_option = click.option(
    "-l",
    "--layer",
    "layer",
    metavar="NAME",
    help="Table to use: layer name, outer/inner path, or weight path. "
    "Optional when the model holds one table.",
)

raw_option = click.option(
    "--raw", is_flag=True, help="Give quantized tables' stored integers, not dequantized values."
)


def output_options(command: Callable) -> Callable:
    """--json and --csv, which exclude each other."""
    command = click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")(command)
    command = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(command)
    return command


def output_mode(as_json: bool, as_csv: bool) -> str:
    if as_json and as_csv:
        raise click.UsageError("--json and --csv cannot be used together")
    return "json" if as_json else "csv" if as_csv else "table"


def reject_unknown_options(arguments: tuple[str, ...]) -> None:
    """Commands that take negative row numbers (`-1`) accept unknown options as
    arguments; anything that is not a number or slice is still a usage error."""
    for argument in arguments:
        if argument.startswith("-") and not re.match(r"^-[\d:]", argument):
            raise click.NoSuchOption(argument)


def vocab_options(command: Callable) -> Callable:
    """--vocab FILE and --vocab-column NAME: a vocabulary given by the user."""
    command = click.option(
        "--vocab-column",
        metavar="NAME",
        help="Read --vocab as a TSV with a header row and take the tokens from column NAME.",
    )(command)
    command = click.option(
        "--vocab",
        "vocab_path",
        metavar="FILE",
        type=click.Path(dir_okay=False, path_type=str),
        help="The table's tokens, one a line in row order, instead of the model's own "
        "lookup layer.",
    )(command)
    return command


def check_vocab_options(vocab_path: str | None, vocab_column: str | None) -> None:
    if vocab_column is not None and vocab_path is None:
        raise click.UsageError("--vocab-column goes with --vocab FILE")


@contextlib.contextmanager
def terminal_progress(length: int, label: str, worth_it: bool) -> Iterator[Callable | None]:
    """A progress bar on stderr for long work, only when stderr is a terminal; yields its
    `update(n)`, or None when no bar is shown. Nothing is ever printed on stdout."""
    if not worth_it or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield bar.update
