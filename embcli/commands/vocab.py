"""Commands about a table's vocabulary: vocab (show, write, rename) and remap."""

from __future__ import annotations

from pathlib import Path

import click

from embcli.commands.options import (
    check_vocab_options,
    layer_option,
    model_argument,
    output_mode,
    output_options,
    vocab_options,
)
from embcli.commands.resize import new_row_options


def _renames(pairs: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for pair in pairs:
        old, equals, new = pair.partition("=")
        if not equals or not old or not new:
            raise click.BadParameter(f"{pair!r} is not OLD=NEW", param_hint="--rename")
        if old in found:
            raise click.BadParameter(f"{old!r} is renamed twice", param_hint="--rename")
        found[old] = new
    return found


@click.command()
@model_argument
@layer_option
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Write the tokens to FILE, one a line, as `remap --to` reads them; "
              "with --rename, where to write the edited model.")  # fmt: skip
@click.option("--rename", "renames", multiple=True, metavar="OLD=NEW",
              help="Rename a token where the model keeps its vocabulary; its row stays. "
              "Repeatable.")  # fmt: skip
@click.option("--in-place", is_flag=True, help="With --rename, replace MODEL itself.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@vocab_options
@output_options
def vocab(model: str, layer: str | None, output: Path | None, renames: tuple[str, ...],
          in_place: bool, force: bool, vocab_path: str | None, vocab_column: str | None,
          as_json: bool, as_csv: bool) -> None:  # fmt: skip
    """Print a table's vocabulary in row order, where it comes from, or write it to a
    file. Tokens that a line cannot hold (the empty token, line breaks) and tokens that
    look like a JSON string are written as JSON string literals, which read back exactly.

    \b
    Example:
        embcli vocab model.keras -l words
        embcli vocab model.keras -l words -o words.txt
        embcli vocab model.keras -l words --rename '[unused0]=<user>' -o new.keras
    """
    from embcli.atomic import write_new_file
    from embcli.commands.read import token_text
    from embcli.output import aligned, to_csv, to_json
    from embcli.token_lists import token_list_text

    mode = output_mode(as_json, as_csv)
    check_vocab_options(vocab_path, vocab_column)
    if renames:
        from embcli.remapping import rename_tokens

        if (output is None) == (not in_place):
            raise click.UsageError("give exactly one of -o OUTPUT and --in-place")
        if vocab_path is not None:
            raise click.UsageError("--rename changes the model's own vocabulary; leave out --vocab")
        changed = rename_tokens(model, layer, renames=_renames(renames), output=output,
                                in_place=in_place, force=force)  # fmt: skip
        for row, old, new in changed:
            click.echo(f"row {row}: {token_text(old)} -> {token_text(new)}", err=True)
        click.echo(f"renamed {len(changed)} token(s); wrote {output or model}", err=True)
        return
    if in_place:
        raise click.UsageError("--in-place goes with --rename")
    import embcli

    with embcli.open(model) as opened:
        table = opened.table(layer)
        found = opened.table_vocabulary(layer, path=vocab_path, column=vocab_column)
    if found is None:
        from embcli.errors import NoVocabulary

        raise NoVocabulary(f"no vocabulary is known for {table.name}", remedy="vocab")
    if output is not None:
        text = token_list_text(found.tokens)

        def write(temp: Path) -> None:
            temp.write_text(text, encoding="utf-8")

        write_new_file(output, force, write)
        click.echo(f"wrote {len(found)} tokens of {table.name} to {output}", err=True)
    elif mode == "json":
        click.echo(to_json({"layer": table.name, "source": found.source, "tokens": found.tokens}))
    elif mode == "csv":
        rows = [[i, t] for i, t in enumerate(found.tokens)]
        click.echo(to_csv(rows, ["index", "token"]), color=True)
    else:
        rows = [[i, token_text(t)] for i, t in enumerate(found.tokens)]
        click.echo(aligned(rows, ["index", "token"]))
        click.echo(f"{len(found)} tokens from {found.source}", err=True)


@click.command()
@model_argument
@layer_option
@click.option("--to", "new_vocabulary", required=True, type=click.Path(dir_okay=False,
              path_type=Path), metavar="NEW_VOCAB",
              help="The new vocabulary, one token a line in the new row order (as `vocab -o` "
              "writes it).")  # fmt: skip
@click.option(
    "--map-out",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Write old_index<TAB>new_index for each kept row to FILE.",
)
@new_row_options
@vocab_options
def remap(model: str, layer: str | None, new_vocabulary: Path, init: str, seed: int | None,
          by_token: Path | None, vector_format: str | None, head: str | None,
          map_out: Path | None, output: Path | None, in_place: bool, force: bool,
          allow_lossy: bool, as_json: bool, vocab_path: str | None,
          vocab_column: str | None) -> None:  # fmt: skip
    """Rebuild a table for a new vocabulary: a token in both keeps its vector bit for bit
    at its new row, a new token gets --init (or its --by-token vector), a token missing
    from NEW_VOCAB is dropped. Warm starts, pruning and reordering are remaps. The output
    table and bias, optimizer slots, sizes and vocabulary in the model follow.

    \b
    Example:
        embcli vocab model.keras -l words -o words.txt   # edit words.txt, then:
        embcli remap model.keras -l words --to words.txt -o remapped.keras
        embcli remap model.keras -l words --to corpus_vocab.txt --map-out map.tsv --in-place
    """
    from embcli.commands.read import token_text
    from embcli.output import to_json
    from embcli.remapping import remap as remap_table

    check_vocab_options(vocab_path, vocab_column)
    if (output is None) == (not in_place):
        raise click.UsageError("give exactly one of -o OUTPUT and --in-place")
    if vector_format is not None and by_token is None:
        raise click.UsageError("--format goes with --by-token")
    result = remap_table(
        model, layer, to=new_vocabulary, init=init, seed=seed, by_token=by_token,
        vector_format=vector_format, vocab=vocab_path, vocab_column=vocab_column, head=head,
        map_out=map_out, output=output, in_place=in_place, force=force,
        allow_lossy=allow_lossy, notify=lambda line: click.echo(line, err=True),
    )  # fmt: skip
    if as_json:
        click.echo(to_json(result.record()))
        return
    click.echo(
        f"remapped {result.layer} from {result.old_rows} to {result.new_rows} rows: kept "
        f"{len(result.kept)}, added {len(result.added)}, dropped {len(result.dropped)}; "
        f"wrote {result.output}",
        err=True,
    )
    for label, tokens in (("added", result.added), ("dropped", result.dropped)):
        if tokens:
            shown = ", ".join(str(token_text(t)) for t in tokens[:10])
            more = f" and {len(tokens) - 10} more" if len(tokens) > 10 else ""
            click.echo(f"{label}: {shown}{more}", err=True)


COMMANDS = [vocab, remap]
