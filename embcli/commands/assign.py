"""The command that writes: assign."""

from __future__ import annotations

from pathlib import Path

import click

from embcli.commands.options import (
    check_vocab_options,
    layer_option,
    model_argument,
    terminal_progress,
    vocab_options,
)

# embcli.pretrained.FORMATS, named here so that the CLI starts without importing numpy.
VECTOR_FORMATS = ("glove", "word2vec", "word2vec-binary", "fasttext", "tsv")


PROGRESS_BYTES = 64 * 1024 * 1024


@click.command()
@model_argument
@layer_option
@click.option(
    "--from",
    "source",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Vectors: .npy, .npz (see --key), or .csv/.tsv/.txt numbers, one row "
    "each; with --by-token, vectors keyed by token.",
)
@click.option("--key", help="The array to use from an .npz file.")
@click.option(
    "--fill", type=click.Choice(["zeros"]), help="Fill the rows instead of reading vectors."
)
@click.option(
    "--rows",
    "row_specs",
    multiple=True,
    metavar="SPEC",
    help="Rows to replace, as for `rows`, comma-separated (3,7,10:20). "
    "Without it the vectors replace the whole table.",
)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where to write the copy.")
@click.option("--in-place", is_flag=True, help="Replace MODEL itself, atomically.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--allow-lossy", is_flag=True, help="Write values that overflow the table's dtype.")
@click.option("--allow-nonfinite", is_flag=True, help="Write NaN and Inf values.")
@click.option(
    "--reset-optimizer-rows",
    is_flag=True,
    help="Also zero these rows in the saved optimizer's slots for the table.",
)
@click.option(
    "--by-token",
    is_flag=True,
    help="FILE holds vectors keyed by token (GloVe, word2vec text or binary, fastText "
    ".vec, TSV); each row whose token appears in it gets that vector.",
)
@click.option(
    "--format",
    "vector_format",
    type=click.Choice(VECTOR_FORMATS),
    help="The format of the --by-token FILE, when its detection guesses wrong.",
)
@click.option(
    "--lowercase",
    is_flag=True,
    help="With --by-token, look each vocabulary token up in lower case.",
)
@vocab_options
def assign(
    model: str,
    layer: str | None,
    source: Path | None,
    key: str | None,
    fill: str | None,
    row_specs: tuple[str, ...],
    output: Path | None,
    in_place: bool,
    force: bool,
    allow_lossy: bool,
    allow_nonfinite: bool,
    reset_optimizer_rows: bool,
    by_token: bool,
    vector_format: str | None,
    lowercase: bool,
    vocab_path: str | None,
    vocab_column: str | None,
) -> None:
    """Write a copy of MODEL, in the same format, in which the given rows hold new vectors.
    Everything else is kept bit for bit. With --by-token, a coverage report goes to stderr.

    \b
    Example:
        embcli assign model.keras --from vecs.npy --rows 3,7 -o new.keras
        embcli assign model.keras -l words --fill zeros --rows 0 --in-place
        embcli assign model.keras -l words --by-token --from glove.6B.50d.txt -o new.keras
    """
    from embcli.api import assign as assign_rows

    if (source is None) == (fill is None):
        raise click.UsageError("give exactly one of --from FILE and --fill zeros")
    if (output is None) == (not in_place):
        raise click.UsageError("give exactly one of -o OUTPUT and --in-place")
    if key is not None and source is None:
        raise click.UsageError("--key goes with --from")
    check_by_token_options(
        by_token, source, key, row_specs, vector_format, lowercase, vocab_path, vocab_column
    )
    size = source.stat().st_size if by_token and source is not None and source.exists() else 0
    with terminal_progress(size, "reading vectors", size >= PROGRESS_BYTES) as progress:
        result = assign_rows(
            model,
            layer,
            rows=",".join(row_specs) if row_specs else None,
            values=None if by_token else source,
            fill=fill,
            key=key,
            by_token=source if by_token else None,
            vector_format=vector_format,
            lowercase=lowercase,
            vocab=vocab_path,
            vocab_column=vocab_column,
            output=output,
            in_place=in_place,
            force=force,
            allow_lossy=allow_lossy,
            allow_nonfinite=allow_nonfinite,
            reset_optimizer_rows=reset_optimizer_rows,
            notify=lambda line: click.echo(line, err=True),
            progress=progress,
        )
    slots = (
        f" and {len(result.optimizer_slots)} optimizer slot(s)" if result.optimizer_slots else ""
    )
    click.echo(
        f"assigned {result.rows} row(s) of {result.table.name}{slots}; wrote {result.output}",
        err=True,
    )


def check_by_token_options(
    by_token: bool,
    source: Path | None,
    key: str | None,
    row_specs: tuple[str, ...],
    vector_format: str | None,
    lowercase: bool,
    vocab_path: str | None,
    vocab_column: str | None,
) -> None:
    check_vocab_options(vocab_path, vocab_column)
    if not by_token:
        for given, name in (
            (vector_format, "--format"),
            (lowercase, "--lowercase"),
            (vocab_path, "--vocab"),
        ):
            if given:
                raise click.UsageError(f"{name} goes with --by-token")
        return
    if source is None:
        raise click.UsageError("--by-token needs --from FILE")
    if row_specs:
        raise click.UsageError("--by-token chooses the rows itself; leave out --rows")
    if key is not None:
        raise click.UsageError("--key has no use with --by-token")


@click.command()
@model_argument
def recover(model: str) -> None:
    """Roll back an in-place edit of MODEL that was killed half done, restoring the
    model exactly as it was. Commands that only read refuse such a model until then.

    \b
    Example:
        embcli recover model.keras
    """
    from embcli.api import recover as roll_back_edits

    restored = roll_back_edits(model)
    click.echo(f"restored {', '.join(restored)}" if restored else "nothing to recover", err=True)


COMMANDS = [assign, recover]
