"""The command that writes: assign."""

from __future__ import annotations

from pathlib import Path

import click

from embcli.commands.options import layer_option, model_argument


@click.command()
@model_argument
@layer_option
@click.option("--from", "source", type=click.Path(dir_okay=False, path_type=Path),
              help="Vectors: .npy, .npz (see --key), or .csv/.tsv/.txt numbers, one row each.")
@click.option("--key", help="The array to use from an .npz file.")
@click.option("--fill", type=click.Choice(["zeros"]), help="Fill the rows instead of reading vectors.")
@click.option("--rows", "row_specs", multiple=True, metavar="SPEC",
              help="Rows to replace, as for `rows`, comma-separated (3,7,10:20). "
              "Without it the vectors replace the whole table.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where to write the copy.")
@click.option("--in-place", is_flag=True, help="Replace MODEL itself, atomically.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--allow-lossy", is_flag=True, help="Write values that overflow the table's dtype.")
@click.option("--allow-nonfinite", is_flag=True, help="Write NaN and Inf values.")
@click.option("--reset-optimizer-rows", is_flag=True,
              help="Also zero these rows in the saved optimizer's slots for the table.")
def assign(model: str, layer: str | None, source: Path | None, key: str | None,
           fill: str | None, row_specs: tuple[str, ...], output: Path | None, in_place: bool,
           force: bool, allow_lossy: bool, allow_nonfinite: bool,
           reset_optimizer_rows: bool) -> None:
    """Write a copy of MODEL, in the same format, in which the given rows hold new vectors.
    Everything else is kept bit for bit.

    \b
    Example:
        embcli assign model.keras --from vecs.npy --rows 3,7 -o new.keras
        embcli assign model.keras -l words --fill zeros --rows 0 --in-place
    """
    import numpy as np

    from embcli.edit import assign as assign_rows
    from embcli.model import find_table, open_model
    from embcli.rowspec import parse_rows
    from embcli.vectors import load_vectors

    if (source is None) == (fill is None):
        raise click.UsageError("give exactly one of --from FILE and --fill zeros")
    if (output is None) == (not in_place):
        raise click.UsageError("give exactly one of -o OUTPUT and --in-place")
    if key is not None and source is None:
        raise click.UsageError("--key goes with --from")
    with open_model(model) as opened:
        table = find_table(opened, layer)
        indices = (parse_rows(row_specs, table.rows, unique=True) if row_specs
                   else np.arange(table.rows, dtype=np.int64))
        if source is not None:
            values = load_vectors(source, key)
            if not row_specs and values.shape[0] != table.rows:
                raise click.ClickException(
                    f"{source.name} holds {values.shape[0]} vectors but {table.name} has "
                    f"{table.rows} rows; give --rows to replace some of them"
                )
        else:
            values = np.zeros((len(indices), table.dim), dtype=np.float32)
        target = Path(model) if in_place else output
        result = assign_rows(
            opened, table, indices, values, target, in_place=in_place, force=force,
            allow_lossy=allow_lossy, allow_nonfinite=allow_nonfinite,
            reset_optimizer_rows=reset_optimizer_rows,
        )
    slots = f" and {len(result.optimizer_slots)} optimizer slot(s)" if result.optimizer_slots else ""
    click.echo(f"assigned {result.rows} row(s) of {table.name}{slots}; wrote {target}", err=True)


COMMANDS = [assign]
