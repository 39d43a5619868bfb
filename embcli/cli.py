"""The `embcli` command: parse, call the library, print. Commands live in `commands/`."""

from __future__ import annotations

import click

from embcli import __version__
from embcli.commands import assign, audit, read, resize, vocab

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# How a user of the command line overrides or avoids each error that has a remedy.
CLI_REMEDIES = {
    "allow_nonfinite": "; use --allow-nonfinite to write them",
    "allow_lossy": "; use --allow-lossy to write them anyway",
    "force": "; use --force to replace it",
    "choose_table": "; choose one with --layer",
    "any_weight": "; use --all with `layers` to see its 2-D weights and pick one with --layer",
    "vocab": "; give one with --vocab FILE",
    "recover": "; run `embcli recover {subject}` to restore it",
    "npz_key": "; choose one with --key",
    "metric_l2": " (try --metric l2)",
    "raw": "; --raw gives its stored values",
    "rows": "; give --rows to replace some of them",
}


class EmbcliGroup(click.Group):
    """Turns library errors into `Error: ...` with exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        from embcli.errors import EmbcliError

        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            from embcli.output import BROKEN_PIPE_STATUS, silence_stdout

            silence_stdout()
            ctx.exit(BROKEN_PIPE_STATUS)
        except EmbcliError as exc:
            raise click.ClickException(_printable(exc.explain(CLI_REMEDIES))) from None
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise click.ClickException(_printable(f"{exc.strerror or exc}{where}")) from None
        except MemoryError:
            raise click.ClickException("out of memory") from None


def _printable(message: str) -> str:
    """An error message with control characters escaped, safe to show on a terminal."""
    from embcli.output import terminal_text

    return terminal_text(message)


@click.group(cls=EmbcliGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="embcli")
def cli() -> None:
    """Look inside, and change, the embedding tables of saved Keras and TensorFlow
    models, reading the files directly: no TensorFlow, no model code.

    \b
    Example:
        embcli layers model.keras
        embcli rows model.keras 0 5 10:20
        embcli assign model.keras --from vecs.npy --rows 3,7 -o new.keras
    """


for module in (read, assign, resize, vocab, audit):
    for command in module.COMMANDS:
        cli.add_command(command)
