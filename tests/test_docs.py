"""Every command explains itself: help text with an example, and a README section."""

import pytest
from conftest import ROOT

from embcli.cli import all_commands, cli

COMMANDS = sorted(all_commands())


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example(runner, name):
    result = runner.invoke(cli, [name, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output
    assert f"embcli {name}" in result.output.split("Example:", 1)[1]
    for option in all_commands()[name].params:
        if option.param_type_name == "option":
            assert option.help, f"{name} {option.opts} has no help"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_in_the_readme(name):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"embcli {name}" in readme


def test_the_group_has_short_help_and_version(runner):
    assert runner.invoke(cli, ["-h"]).exit_code == 0
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("embcli, version ")
