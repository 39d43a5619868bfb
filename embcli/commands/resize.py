"""The command that changes a table's size: resize."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from embcli.commands.assign import VECTOR_FORMATS
from embcli.commands.options import check_vocab_options, layer_option, model_argument, vocab_options

INIT_HELP = (
    "How new rows are filled: mean (of the old rows; the default), mean-cov (drawn around "
    "the mean with 1e-9 x their covariance, as Hugging Face does), zeros, or normal:STD."
)


def new_row_options(command: Callable) -> Callable:
    """The options of commands that write a copy with new rows: how new rows are filled
    (--init, --seed, --by-token, --format), a --head that follows, and where and how the
    copy is written (-o, --in-place, --force, --allow-lossy, --json)."""
    for option in reversed(_NEW_ROW_OPTIONS):
        command = option(command)
    return command


_NEW_ROW_OPTIONS = [
    click.option("--init", default="mean", show_default=True, metavar="METHOD", help=INIT_HELP),
    click.option("--seed", type=int, help="Seed for the random draws of mean-cov and normal."),
    click.option(
        "--by-token",
        "by_token",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="VECTORS",
        help="Vectors for new tokens from a GloVe/word2vec/fastText/TSV file; the rest by --init.",
    ),
    click.option(
        "--format",
        "vector_format",
        type=click.Choice(VECTOR_FORMATS),
        help="The format of the --by-token file, when its detection guesses wrong.",
    ),
    click.option(
        "--head",
        metavar="LAYER",
        help="A Dense layer over the vocabulary whose kernel columns and bias follow the rows.",
    ),
    click.option(
        "-o", "--output", type=click.Path(path_type=Path), help="Where to write the copy."
    ),
    click.option("--in-place", is_flag=True, help="Replace MODEL itself, atomically."),
    click.option("--force", is_flag=True, help="Replace OUTPUT if it exists."),
    click.option(
        "--allow-lossy", is_flag=True, help="Write values that overflow the table's dtype."
    ),
    click.option("--json", "as_json", is_flag=True, help="Print what changed as JSON."),
]


@click.command()
@model_argument
@layer_option
@click.option("--rows", "rows", type=click.IntRange(min=1), metavar="N", help="The new row count.")
@click.option("--add", type=click.IntRange(min=1), metavar="N", help="Add N rows at the end.")
@click.option(
    "--add-token",
    "add_token",
    multiple=True,
    metavar="WORD",
    help="Append WORD to the vocabulary with a row of its own; repeatable.",
)
@click.option(
    "--add-tokens",
    "add_tokens_file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Append the tokens of FILE (one a line), a row each.",
)
@click.option(
    "--pad-to-multiple",
    type=click.IntRange(min=1),
    metavar="M",
    help="Round the row count up to a multiple of M; padding rows have no token.",
)
@click.option(
    "--from",
    "source",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The new rows' vectors, one per new row (.npy, .npz, .csv/.tsv/.txt).",
)
@click.option("--key", help="The array to use from an .npz file.")
@new_row_options
@vocab_options
def resize(model: str, layer: str | None, rows: int | None, add: int | None,
           add_token: tuple[str, ...], add_tokens_file: Path | None, pad_to_multiple: int | None,
           init: str, seed: int | None, source: Path | None, key: str | None,
           by_token: Path | None, vector_format: str | None, head: str | None,
           output: Path | None, in_place: bool, force: bool, allow_lossy: bool, as_json: bool,
           vocab_path: str | None, vocab_column: str | None) -> None:  # fmt: skip
    """Write a copy of MODEL whose table has a new number of rows, with the whole model
    kept consistent: the layer's size in the config, an untied output table, a --head
    layer, optimizer slots (new rows zero) and the vocabulary change with it. Old rows
    stay bit for bit; shrinking drops rows (and their tokens) from the end.

    \b
    Example:
        embcli resize model.keras -l words --add 1000 -o bigger.keras
        embcli resize model.keras -l tok_emb --add-token '<user>' --add-token '<bot>' -o new.keras
        embcli resize model.keras -l words --rows 32000 --pad-to-multiple 64 --init zeros --in-place
    """
    from embcli.output import to_json
    from embcli.resizing import resize as resize_table
    from embcli.vocab import load_vocabulary_file

    check_vocab_options(vocab_path, vocab_column)
    tokens = list(add_token)
    if add_tokens_file is not None:
        tokens += load_vocabulary_file(add_tokens_file).tokens
    given = [rows is not None, add is not None, bool(tokens)]
    if sum(given) != 1:
        raise click.UsageError("give exactly one of --rows, --add and --add-token/--add-tokens")
    if (output is None) == (not in_place):
        raise click.UsageError("give exactly one of -o OUTPUT and --in-place")
    if source is not None and by_token is not None:
        raise click.UsageError("give --from or --by-token, not both")
    if key is not None and source is None:
        raise click.UsageError("--key goes with --from")
    if vector_format is not None and by_token is None:
        raise click.UsageError("--format goes with --by-token")
    result = resize_table(
        model, layer, rows=rows, add=add, add_tokens=tokens or None,
        pad_to_multiple=pad_to_multiple, init=init, seed=seed, values=source, key=key,
        by_token=by_token, vector_format=vector_format, vocab=vocab_path,
        vocab_column=vocab_column, head=head, output=output, in_place=in_place, force=force,
        allow_lossy=allow_lossy, notify=lambda line: click.echo(line, err=True),
    )  # fmt: skip
    if as_json:
        click.echo(to_json(result.record()))
        return
    click.echo(
        f"resized {result.layer} from {result.old_rows} to {result.new_rows} rows "
        f"(init {result.init}); wrote {result.output}",
        err=True,
    )
    if result.added_tokens:
        click.echo(f"added {len(result.added_tokens)} token(s)", err=True)
    for change in result.config:
        click.echo(f"config {change['path']}: {change['old']} -> {change['new']}", err=True)


COMMANDS = [resize]
