"""Commands that read: layers, rows, export."""

from __future__ import annotations

from pathlib import Path

import click

from embcli.commands.options import (
    layer_option,
    reject_unknown_options,
    model_argument,
    output_mode,
    output_options,
    raw_option,
)

LAYER_COLUMNS = ("name", "class", "rows", "dim", "dtype", "weight")


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
    }


@click.command()
@model_argument
@click.option("--all", "all_weights", is_flag=True, help="List every 2-D weight, not only embeddings.")
@output_options
def layers(model: str, all_weights: bool, as_json: bool, as_csv: bool) -> None:
    """List the embedding tables of MODEL: every layer whose class ends in Embedding.

    \b
    Example:
        embcli layers model.keras
        embcli layers model.h5 --all --json
    """
    from embcli.model import list_tables, open_model
    from embcli.output import aligned, to_csv, to_json

    mode = output_mode(as_json, as_csv)
    with open_model(model) as opened:
        tables = list_tables(opened, all_weights=all_weights)
    records = [table_record(t) for t in tables]
    if mode == "json":
        click.echo(to_json(records))
        return
    columns = list(LAYER_COLUMNS)
    if any(r["quantized"] for r in records):
        columns.insert(5, "quantized")
    rows = [[r[c] for c in columns] for r in records]
    if mode == "csv":
        click.echo(to_csv(rows, columns))
    elif rows:
        click.echo(aligned(rows, columns))
    else:
        click.echo("no embedding tables (try --all)", err=True)


@click.command(context_settings={"ignore_unknown_options": True})
@model_argument
@click.argument("row", nargs=-1)
@layer_option
@raw_option
@output_options
def rows(model: str, row: tuple[str, ...], layer: str | None, raw: bool, as_json: bool,
         as_csv: bool) -> None:
    """Print rows of a table. ROW is an index (12), a negative index (-1) or a slice
    (10:20, 0:100:10); several may be given, also comma-separated.

    \b
    Example:
        embcli rows model.keras 0 5 10:20
        embcli rows model.keras -l words -1 --json
    """
    from embcli.model import find_table, open_model, read_rows
    from embcli.output import aligned, to_csv, to_json, vector_text
    from embcli.rowspec import parse_rows

    mode = output_mode(as_json, as_csv)
    reject_unknown_options(row)
    if not row:
        raise click.UsageError("give at least one ROW (an index or a slice)")
    with open_model(model) as opened:
        table = find_table(opened, layer)
        indices = parse_rows(row, table.rows)
        values = read_rows(opened, table, indices, raw=raw)
    if mode == "json":
        records = [{"index": int(i), "vector": v} for i, v in zip(indices, values)]
        click.echo(to_json({"layer": table.name, "rows": records}))
    elif mode == "csv":
        headers = ["index"] + [f"v{j}" for j in range(table.dim)]
        click.echo(to_csv([[int(i), *v] for i, v in zip(indices, values)], headers))
    else:
        click.echo(aligned([[int(i), vector_text(v)] for i, v in zip(indices, values)],
                           ["row", "vector"]))


@click.command()
@model_argument
@layer_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write: .npy, .npz (every table), .tsv (projector) or .txt (word2vec).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@raw_option
def export(model: str, layer: str | None, output: Path, force: bool, raw: bool) -> None:
    """Write a table to a file; the format follows the file's extension.

    \b
    Example:
        embcli export model.keras -o table.npy
        embcli export model.keras -o all.npz
        embcli export model.keras -l words -o vectors.tsv
    """
    from embcli.export import export_tables
    from embcli.model import find_table, list_tables, open_model
    from embcli.vectors import export_format

    fmt = export_format(output)
    with open_model(model) as opened:
        if fmt == "npz" and layer is None:
            tables = list_tables(opened)
        else:
            tables = [find_table(opened, layer)]
        export_tables(opened, tables, output, force=force, raw=raw)
    shown = ", ".join(t.name for t in tables)
    click.echo(f"wrote {shown} to {output}", err=True)


COMMANDS = [layers, rows, export]
