"""Shell completion: Click's own for commands and options, and `-l/--layer` completing the
table names of the MODEL given earlier on the line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.shell_completion import ShellComplete
from conftest import FIXTURES, ROOT

from embcli.cli import cli

NESTED = FIXTURES / "k3_legacy.h5"
EMBEDDING_NAMES = [
    "emb",
    "model_weights/emb/emb/embeddings",
    "tower/emb",
    "model_weights/tower/tower/emb/embeddings",
    "inner_table",
    "subnet/inner_table",
    "model_weights/subnet/inner_table/embeddings",
    "leaf_emb",
    "subnet/leaf/leaf_emb",
    "model_weights/subnet/leaf/leaf_emb/embeddings",
]


def completions(args: list[str], incomplete: str) -> list[str]:
    complete = ShellComplete(cli, {}, "embcli", "_EMBCLI_COMPLETE")
    return [item.value for item in complete.get_completions(args, incomplete)]


@pytest.mark.parametrize("command", ["rows", "export", "neighbors", "assign", "resize", "vocab"])
@pytest.mark.parametrize("option", ["-l", "--layer"])
def test_layer_completes_the_models_tables(command, option):
    assert completions([command, str(NESTED), option], "") == EMBEDDING_NAMES


def test_layer_completion_narrows_to_the_prefix():
    assert completions(["rows", str(NESTED), "-l"], "to") == ["tower/emb"]
    assert completions(["rows", str(NESTED), "-l"], "subnet/") == [
        "subnet/inner_table",
        "subnet/leaf/leaf_emb",
    ]


def test_other_two_d_weights_complete_when_no_table_matches():
    assert completions(["rows", str(NESTED), "-l"], "he") == ["head"]
    assert completions(["rows", str(NESTED), "-l"], "model_weights/he") == [
        "model_weights/head/head/kernel"
    ]


def test_after_other_options_the_model_is_still_found():
    assert completions(["rows", str(NESTED), "--json", "0", "-l"], "le") == ["leaf_emb"]


@pytest.mark.parametrize(
    "model",
    [
        "",
        "missing.keras",
        str(FIXTURES / "README.md"),
        str(FIXTURES),
        "http://127.0.0.1:9/never-fetched.keras",
    ],
)
def test_layer_completion_never_raises(model):
    args = ["rows", model, "-l"] if model else ["rows", "-l"]
    assert completions(args, "") == []


def test_a_fifo_is_not_opened_for_completion(tmp_path):
    fifo = tmp_path / "pipe.keras"
    os.mkfifo(fifo)
    assert completions(["rows", str(fifo), "-l"], "") == []


def _complete_in_shell(shell: str, words: str, cword: int | str) -> str:
    """What Click answers a shell: bash and zsh give the words and the index of the one
    being completed, fish the words before it and the incomplete word itself."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "_EMBCLI_COMPLETE": f"{shell}_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
    }
    result = subprocess.run(
        [sys.executable, "-m", "embcli"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def test_bash_completion_through_the_environment():
    output = _complete_in_shell("bash", f"embcli rows {NESTED} -l to", 4)
    assert output == "plain,tower/emb\n"


def test_zsh_and_fish_completion_through_the_environment():
    assert _complete_in_shell("zsh", f"embcli export {NESTED} --layer lea", 4) == (
        "plain\nleaf_emb\n_\n"
    )
    assert _complete_in_shell("fish", f"embcli export {NESTED} --layer", "lea") == (
        "plain,leaf_emb\n"
    )


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_completion_script_is_clicks(shell):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_EMBCLI_COMPLETE": f"{shell}_source"}
    result = subprocess.run(
        [sys.executable, "-m", "embcli"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert "_EMBCLI_COMPLETE" in result.stdout
    assert f"{shell}_complete" in result.stdout


def test_commands_complete():
    assert "layers" in completions([], "la")
    assert completions([], "expo") == ["export"]
