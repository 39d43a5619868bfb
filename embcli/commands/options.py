"""Options shared by several commands, so they read and behave the same everywhere."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterator

import click
from click.shell_completion import CompletionItem

model_argument = click.argument(
    "model", type=click.Path(exists=False, dir_okay=True, file_okay=True, path_type=str)
)

MODEL_PARAMETERS = ("model", "model_a", "model_b")


def complete_layer_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion for `--layer`: the table names of the MODEL given earlier on the
    line: its embedding tables' names, paths and weights, or failing a match its other
    2-D weights. It opens a local model read-only and reads only what `layers` reads; a
    URL is not fetched, and anything that goes wrong completes nothing rather than
    raising."""
    from embcli.remote import is_url

    model = _model_on_line(ctx)
    if model is None or is_url(model):
        return []
    try:
        from embcli.model import list_tables, open_model

        with open_model(model) as opened:
            tables = list_tables(opened, all_weights=True)
    except Exception:  # completion must never fail the shell's prompt
        return []
    for candidates in ([t for t in tables if t.is_embedding], tables):
        names: list[str] = []
        for table in candidates:
            for name in (table.name, table.qualified, table.weight):
                if name.startswith(incomplete) and name not in names:
                    names.append(name)
        if names:
            return [CompletionItem(name) for name in names]
    return []


def _model_on_line(ctx: click.Context) -> str | None:
    """The MODEL typed before the option being completed. While that option still lacks
    its value, Click's parse leaves the earlier arguments unparsed in `ctx.args`."""
    for name in MODEL_PARAMETERS:
        value = ctx.params.get(name)
        if isinstance(value, str) and value:
            return value
    return next((arg for arg in ctx.args if arg and not arg.startswith("-")), None)


layer_option = click.option(
    "-l",
    "--layer",
    "layer",
    metavar="NAME",
    shell_complete=complete_layer_names,
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
