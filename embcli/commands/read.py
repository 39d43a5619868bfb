"""Commands that read: layers, rows, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from embcli.commands.options import (
    check_vocab_options,
    layer_option,
    model_argument,
    output_mode,
    output_options,
    raw_option,
    reject_unknown_options,
    vocab_options,
)

LAYER_COLUMNS = ("name", "class", "rows", "dim", "dtype", "weight")
VOCAB_COLUMNS = ("vocab", "vocab_source")
SPARE_ROWS_COLUMN = "spare_rows"
OUTPUT_BIAS_COLUMN = "output_bias"


def table_record(table) -> dict:
    return {
        "name": table.name,
        "class": table.class_name,
        "shape": list(table.shape),
        "rows": table.rows,
        "dim": table.dim,
        "dtype": table.dtype,
        "weight": table.weight,
        "quantized": table.quantized,
        "qualified": table.qualified,
        "embedding": table.is_embedding,
        "stacked": table.stacked.record() if table.stacked is not None else None,
    }


def stacked_label(stacked: dict) -> str:
    """`table of items, genres`: what a stacked variable is, for the aligned listing."""
    holds = ", ".join(stacked["holds"])
    return f"{stacked['role']} of {holds}" if holds else stacked["role"]


def bias_record(biases: list) -> dict | list[dict] | None:
    """`output_bias` in `layers --json`: the bias that follows the table's rows
    (`{"weight", "shape", "dtype"}`), null for none, a list in a model with several."""
    if not biases:
        return None
    return biases[0].record() if len(biases) == 1 else [b.record() for b in biases]


def warn(message: str) -> None:
    from embcli.output import terminal_text

    click.echo(f"warning: {terminal_text(message)}", err=True)


def token_text(token: str | None) -> str | None:
    """A token as shown in an aligned table: the empty token visibly, control characters
    escaped."""
    if token is None:
        return None
    if token == "":
        return '""'
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


@click.command()
@model_argument
@click.option(
    "--all", "all_weights", is_flag=True, help="List every 2-D weight, not only embeddings."
)
@vocab_options
@output_options
def layers(
    model: str,
    all_weights: bool,
    vocab_path: str | None,
    vocab_column: str | None,
    as_json: bool,
    as_csv: bool,
) -> None:
    """List the embedding tables of MODEL: every layer whose class ends in Embedding.
    A table whose vocabulary is known (from a lookup layer feeding it, or --vocab, which
    applies to every embedding table) shows its size and source; one with an output bias
    that edits move with its rows (a keras-hub MaskedLMHead's) shows that weight.

    \b
    Example:
        embcli layers model.keras
        embcli layers model.h5 --all --json
        embcli layers model.keras --vocab words.txt
    """
    from embcli.model import list_tables, open_model, output_biases
    from embcli.output import aligned, to_csv, to_json
    from embcli.vocab import find_vocabulary, load_vocabulary_file

    mode = output_mode(as_json, as_csv)
    check_vocab_options(vocab_path, vocab_column)
    given = load_vocabulary_file(vocab_path, vocab_column) if vocab_path is not None else None
    with open_model(model) as opened:
        tables = list_tables(opened, all_weights=all_weights)
        vocabularies = [
            (given if t.is_embedding else None) if given is not None else find_vocabulary(opened, t)
            for t in tables
        ]
        biases = [output_biases(opened, t) for t in tables]
    records = []
    for table, vocabulary, bias in zip(tables, vocabularies, biases, strict=True):
        record = table_record(table)
        record["vocab"] = len(vocabulary) if vocabulary is not None else None
        record["vocab_source"] = vocabulary.source if vocabulary is not None else None
        record[SPARE_ROWS_COLUMN] = vocabulary.spare_rows(table) if vocabulary is not None else None
        record[OUTPUT_BIAS_COLUMN] = bias_record(bias)
        records.append(record)
        problem = vocabulary.size_problem(table) if vocabulary is not None else None
        if problem:
            warn(problem)
    if mode == "json":
        click.echo(to_json(records))
        return
    columns = list(LAYER_COLUMNS)
    if any(r["quantized"] for r in records):
        columns.insert(5, "quantized")
    if any(r["stacked"] for r in records):
        columns.insert(len(columns) - 1, "stacked")
        for record in records:
            stacked = record["stacked"]
            record["stacked"] = stacked_label(stacked) if stacked else None
    if any(v is not None for v in vocabularies):
        columns.extend(VOCAB_COLUMNS)
    if any(r[SPARE_ROWS_COLUMN] for r in records):
        columns.append(SPARE_ROWS_COLUMN)
    rows = [[r[c] for c in columns] for r in records]
    if any(biases):
        columns.append(OUTPUT_BIAS_COLUMN)
        for row, bias in zip(rows, biases, strict=True):
            row.append(", ".join(b.weight for b in bias) or None)
    if mode == "csv":
        click.echo(to_csv(rows, columns), color=True)
    elif rows:
        click.echo(aligned(rows, columns))
    else:
        click.echo("no embedding tables (try --all)", err=True)


@click.command(context_settings={"ignore_unknown_options": True})
@model_argument
@click.argument("row", nargs=-1)
@layer_option
@click.option(
    "--token",
    "tokens",
    multiple=True,
    metavar="WORD",
    help="Also print the row of WORD in the table's vocabulary; repeatable.",
)
@click.option("--lowercase", is_flag=True, help="Lowercase each --token WORD before looking it up.")
@vocab_options
@raw_option
@output_options
def rows(
    model: str,
    row: tuple[str, ...],
    layer: str | None,
    tokens: tuple[str, ...],
    lowercase: bool,
    vocab_path: str | None,
    vocab_column: str | None,
    raw: bool,
    as_json: bool,
    as_csv: bool,
) -> None:
    """Print rows of a table. ROW is an index (12), a negative index (-1) or a slice
    (10:20, 0:100:10); several may be given, also comma-separated. --token selects rows by
    word; where the table's vocabulary is known, each row shows its token.

    \b
    Example:
        embcli rows model.keras 0 5 10:20
        embcli rows model.keras -l words -1 --json
        embcli rows model.keras -l words --token cat --token café
    """
    import numpy as np

    from embcli.model import find_table, open_model, read_rows
    from embcli.output import aligned, to_csv, to_json, vector_text
    from embcli.rowspec import parse_rows
    from embcli.vocab import Vocabulary, require_vocabulary, table_vocabulary, token_rows

    mode = output_mode(as_json, as_csv)
    reject_unknown_options(row)
    check_vocab_options(vocab_path, vocab_column)
    if not row and not tokens:
        raise click.UsageError("give at least one ROW (an index or a slice) or --token WORD")
    with open_model(model) as opened:
        table = find_table(opened, layer)
        vocabulary: Vocabulary | None
        if tokens:
            vocabulary = require_vocabulary(opened, table, vocab_path, vocab_column)
        else:
            vocabulary = table_vocabulary(opened, table, vocab_path, vocab_column)
        if vocabulary is not None:
            problem = vocabulary.size_problem(table)
            if problem:
                warn(problem)
        indices = parse_rows(row, table.rows) if row else np.zeros(0, dtype=np.int64)
        if tokens and vocabulary is not None:
            indices = np.concatenate([indices, token_rows(vocabulary, table, tokens, lowercase)])
        values = read_rows(opened, table, indices, raw=raw)
    words = [vocabulary.token_at(int(i)) for i in indices] if vocabulary is not None else None
    if mode == "json":
        records = []
        for at, (i, v) in enumerate(zip(indices, values, strict=True)):
            record: dict[str, Any] = {"index": int(i)}
            if words is not None:
                record["token"] = words[at]
            record["vector"] = v
            records.append(record)
        click.echo(to_json({"layer": table.name, "rows": records}))
    elif mode == "csv":
        headers = (
            ["index"]
            + (["token"] if words is not None else [])
            + [f"v{j}" for j in range(table.dim)]
        )
        lines = [
            [int(i), *([words[at]] if words is not None else []), *v]
            for at, (i, v) in enumerate(zip(indices, values, strict=True))
        ]
        click.echo(to_csv(lines, headers), color=True)
    elif words is not None:
        click.echo(
            aligned(
                [
                    [int(i), token_text(words[at]), vector_text(v)]
                    for at, (i, v) in enumerate(zip(indices, values, strict=True))
                ],
                ["row", "token", "vector"],
            )
        )
    else:
        click.echo(
            aligned(
                [[int(i), vector_text(v)] for i, v in zip(indices, values, strict=True)],
                ["row", "vector"],
            )
        )


@click.command()
@model_argument
@layer_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write: .npy, .npz (every table), .tsv (projector), .txt (word2vec "
    "text) or .bin (word2vec binary).",
)
@click.option(
    "--projector",
    "projector_dir",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write a TensorBoard projector log folder instead (every embedding table, or "
    "--layer's): view it with `tensorboard --logdir DIR`.",
)
@click.option("--force", is_flag=True, help="Replace OUTPUT (or DIR) if it exists.")
@vocab_options
@raw_option
def export(
    model: str,
    layer: str | None,
    output: Path | None,
    projector_dir: Path | None,
    force: bool,
    vocab_path: str | None,
    vocab_column: str | None,
    raw: bool,
) -> None:
    """Write a table to a file; the format follows the file's extension. Where the table's
    vocabulary is known, word2vec files name each row by its token, and a .tsv gets the
    projector's metadata.tsv (one token a line) beside it.

    \b
    Example:
        embcli export model.keras -o table.npy
        embcli export model.keras -o all.npz
        embcli export model.keras -l words -o vectors.tsv
        embcli export model.keras -l words --vocab words.txt -o words.bin
        embcli export model.keras --projector logs/projector
    """
    from embcli.export import export_tables
    from embcli.model import find_table, open_model, readable_tables
    from embcli.vectors import TOKEN_FORMATS, export_format, metadata_path
    from embcli.vocab import table_vocabulary

    check_vocab_options(vocab_path, vocab_column)
    if (output is None) == (projector_dir is None):
        raise click.UsageError("give exactly one of -o/--output FILE and --projector DIR")
    if projector_dir is not None:
        export_projector_folder(model, layer, projector_dir, force, vocab_path, vocab_column, raw)
        return
    assert output is not None
    fmt = export_format(output)
    tokens = None
    with open_model(model) as opened:
        if fmt == "npz" and layer is None:
            tables = readable_tables(opened)
        else:
            tables = [find_table(opened, layer)]
        if fmt in TOKEN_FORMATS:
            vocabulary = table_vocabulary(opened, tables[0], vocab_path, vocab_column)
            if vocabulary is not None:
                tokens = row_tokens(vocabulary, tables[0])
        elif vocab_path is not None:
            raise click.UsageError(
                f"--vocab has no use with {output.suffix} files; use .txt, .bin or .tsv"
            )
        export_tables(opened, tables, output, force=force, raw=raw, tokens=tokens)
    shown = ", ".join(t.name for t in tables)
    labels = f" and its tokens to {metadata_path(output)}" if fmt == "tsv" and tokens else ""
    click.echo(f"wrote {shown} to {output}{labels}", err=True)


def export_projector_folder(
    model: str,
    layer: str | None,
    folder: Path,
    force: bool,
    vocab_path: str | None,
    vocab_column: str | None,
    raw: bool,
) -> None:
    from embcli.model import find_table, open_model, readable_tables
    from embcli.projector import export_projector
    from embcli.vocab import table_vocabulary

    with open_model(model) as opened:
        tables = [find_table(opened, layer)] if layer is not None else readable_tables(opened)
        if not tables:
            raise click.ClickException(
                "the model holds no embedding table; choose one with --layer"
            )
        tokens = {}
        for table in tables:
            vocabulary = table_vocabulary(opened, table, vocab_path, vocab_column)
            if vocabulary is not None:
                tokens[table.name] = row_tokens(vocabulary, table)
        entries = export_projector(opened, tables, folder, force=force, raw=raw, tokens=tokens)
    shown = ", ".join(entry.tensor_name for entry in entries)
    click.echo(f"wrote {shown} to the projector folder {folder}", err=True)


def row_tokens(vocabulary, table) -> list[str]:
    """One token per row of `table`; rows past the vocabulary's end keep their number."""
    problem = vocabulary.size_problem(table)
    if problem:
        warn(problem + "; rows without a token are named by their number")
    tokens = vocabulary.tokens[: table.rows]
    return tokens + [str(i) for i in range(len(tokens), table.rows)]


COMMANDS = [layers, rows, export]
