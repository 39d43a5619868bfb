"""The `embcli` command: parse, call the library, print. Commands live in `commands/`."""

from __future__ import annotations

import click

from embcli import __version__

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


# The module of `embcli.commands` that defines each command. A command's module is
# imported when that command runs (help and completion import them all), so that a
# command does not wait for the others' options to be built.
COMMAND_MODULES = {
    "layers": "read",
    "rows": "read",
    "export": "read",
    "assign": "assign",
    "recover": "assign",
    "resize": "resize",
    "vocab": "vocab",
    "remap": "vocab",
    "stats": "audit",
    "check": "audit",
    "diff": "audit",
    "neighbors": "audit",
}


class EmbcliGroup(click.Group):
    """Turns library errors into `Error: ...` with exit status 1, never a traceback.
    Commands are loaded from their modules on first use (see `COMMAND_MODULES`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            from importlib import import_module

            for command in import_module(f"embcli.commands.{module}").COMMANDS:
                self.add_command(command)
        return self.commands.get(cmd_name)

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
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Report on stderr the bytes fetched and requests made for models at URLs.",
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Look inside, and change, the embedding tables of saved Keras and TensorFlow
    models, reading the files directly: no TensorFlow, no model code.

    \b
    Example:
        embcli layers model.keras
        embcli rows model.keras 0 5 10:20
        embcli assign model.keras --from vecs.npy --rows 3,7 -o new.keras
        embcli -v layers s3://bucket/model.keras
    """
    if verbose:
        from embcli.remote import reset_transfer_stats

        reset_transfer_stats()
        ctx.call_on_close(_report_transfers)


def _report_transfers() -> None:
    from embcli.remote import transfer_summary

    summary = transfer_summary()
    if summary is not None:
        click.echo(summary, err=True)


def all_commands() -> dict[str, click.Command]:
    """Every command of `cli`, by name, its module imported."""
    context = click.Context(cli)
    found = {name: cli.get_command(context, name) for name in cli.list_commands(context)}
    return {name: command for name, command in found.items() if command is not None}
