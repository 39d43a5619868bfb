"""Exact output and exit codes of the read commands, and the three error levels."""

import json

import numpy as np
import pytest
from conftest import FIXTURES

from embcli.cli import COMMAND_MODULES, all_commands, cli

FUNCTIONAL = str(FIXTURES / "k3_functional.keras")


def test_layers_table(runner):
    result = runner.invoke(cli, ["layers", FUNCTIONAL])
    assert result.exit_code == 0
    assert result.output == (
        "name       class      rows  dim  dtype    weight\n"
        "words      Embedding    50    8  float32  layers/embedding/vars/0\n"
        "positions  Embedding    30    4  float32  layers/embedding_1/vars/0\n"
    )


def test_layers_csv(runner):
    result = runner.invoke(cli, ["layers", FUNCTIONAL, "--csv"])
    assert result.output == (
        "name,class,rows,dim,dtype,weight\n"
        "words,Embedding,50,8,float32,layers/embedding/vars/0\n"
        "positions,Embedding,30,4,float32,layers/embedding_1/vars/0\n"
    )


def test_layers_json_keys(runner):
    listed = json.loads(runner.invoke(cli, ["layers", FUNCTIONAL, "--json"]).output)
    contract = {
        "name": "words",
        "class": "Embedding",
        "shape": [50, 8],
        "rows": 50,
        "dim": 8,
        "dtype": "float32",
        "weight": "layers/embedding/vars/0",
        "quantized": None,
        "qualified": "words",
        "embedding": True,
    }
    assert {key: listed[0].get(key) for key in contract} == contract


def test_layers_shows_quantized_column(runner):
    result = runner.invoke(cli, ["layers", str(FIXTURES / "k3_int8.keras")])
    assert result.output == (
        "name   class      rows  dim  dtype  quantized  weight\n"
        "words  Embedding    50    8  int8   int8       layers/embedding/vars/0\n"
    )


def test_rows_table_and_json(runner):
    want = np.load(FIXTURES / "expected" / "k3_functional_keras.npz")["positions"]
    result = runner.invoke(cli, ["rows", FUNCTIONAL, "-l", "positions", "0", "-1"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "row  vector"
    assert lines[1].split()[0] == "0" and lines[2].split()[0] == "29"
    assert np.array(lines[2].split()[1:], dtype=np.float32).tolist() == want[29].tolist()

    data = json.loads(
        runner.invoke(cli, ["rows", FUNCTIONAL, "-l", "positions", "28:", "--json"]).output
    )
    assert data["layer"] == "positions"
    assert [r["index"] for r in data["rows"]] == [28, 29]
    assert np.array(data["rows"][1]["vector"], dtype=np.float32).tolist() == want[29].tolist()


def test_rows_csv_is_exact(runner):
    want = np.load(FIXTURES / "expected" / "k3_functional_keras.npz")["words"]
    result = runner.invoke(cli, ["rows", FUNCTIONAL, "-l", "words", "3", "--csv"])
    header, line = result.output.splitlines()
    assert header == "index," + ",".join(f"v{i}" for i in range(8))
    assert np.array(line.split(",")[1:], dtype=np.float32).tolist() == want[3].tolist()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["rows", FUNCTIONAL, "0"],
            "Error: the model holds several tables; choose one with --layer: words, positions\n",
        ),
        (
            ["rows", FUNCTIONAL, "-l", "nope", "0"],
            "Error: no table named 'nope'; tables: words, positions\n",
        ),
        (
            ["rows", FUNCTIONAL, "-l", "words", "50"],
            "Error: row 50 is out of range for a table of 50 rows\n",
        ),
        (
            ["rows", FUNCTIONAL, "-l", "words", "x"],
            "Error: not a row index or slice: 'x' (use 12, -1, 10:20 or 0:100:10)\n",
        ),
        (
            ["layers", "/no/such/model.keras"],
            "Error: /no/such/model.keras: no such file or folder\n",
        ),
        (
            ["layers", str(FIXTURES / "README.md")],
            f"Error: {FIXTURES / 'README.md'}: not a Keras or TensorFlow model file\n",
        ),
        (["rows", str(FIXTURES / "k3_nested.keras"), "-l", "emb", "0"], None),
    ],
)
def test_user_errors_exit_1(runner, args, message):
    result = runner.invoke(cli, args)
    if message is None:
        assert result.exit_code == 0
        return
    assert result.exit_code == 1
    assert result.output == message
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["rows", FUNCTIONAL, "-l", "words", "0", "--json", "--csv"],
        ["rows", FUNCTIONAL, "-l", "words"],
        ["rows", FUNCTIONAL, "-l", "words", "0", "--jsn"],
        ["export", FUNCTIONAL],
        ["assign", FUNCTIONAL, "--fill", "zeros"],
        ["assign", FUNCTIONAL, "--fill", "zeros", "-o", "x.keras", "--in-place"],
        ["nope"],
    ],
)
def test_usage_errors_exit_2(runner, args):
    result = runner.invoke(cli, args)
    assert result.exit_code == 2
    assert "Error:" in result.output


def test_export_formats(tmp_path, runner):
    want = np.load(FIXTURES / "expected" / "k3_functional_keras.npz")
    for name in ("t.npy", "t.tsv", "t.txt", "all.npz"):
        result = runner.invoke(
            cli,
            ["export", FUNCTIONAL, "-l", "positions", "-o", str(tmp_path / name)]
            if name != "all.npz"
            else ["export", FUNCTIONAL, "-o", str(tmp_path / name)],
        )
        assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), want["positions"])
    with np.load(tmp_path / "all.npz") as archive:
        assert sorted(archive.keys()) == ["positions", "words"]
        np.testing.assert_array_equal(archive["words"], want["words"])
    tsv = np.loadtxt(tmp_path / "t.tsv", delimiter="\t", dtype=np.float32)
    np.testing.assert_array_equal(tsv, want["positions"])
    lines = (tmp_path / "t.txt").read_text().splitlines()
    assert lines[0] == "30 4"
    assert lines[1].split()[0] == "0"
    np.testing.assert_array_equal(
        np.array([line.split()[1:] for line in lines[1:]], dtype=np.float32), want["positions"]
    )


def test_export_refuses_existing_output(tmp_path, runner):
    target = tmp_path / "t.npy"
    target.write_bytes(b"keep")
    result = runner.invoke(cli, ["export", FUNCTIONAL, "-l", "words", "-o", str(target)])
    assert result.exit_code == 1
    assert result.output == f"Error: {target} exists; use --force to replace it\n"
    assert target.read_bytes() == b"keep"
    assert (
        runner.invoke(
            cli, ["export", FUNCTIONAL, "-l", "words", "-o", str(target), "--force"]
        ).exit_code
        == 0
    )
    assert np.load(target).shape == (50, 8)


def test_export_raw_int8(tmp_path, runner):
    want = np.load(FIXTURES / "expected" / "k3_int8_keras.npz")
    runner.invoke(cli, ["export", str(FIXTURES / "k3_int8.keras"), "-o", str(tmp_path / "d.npy")])
    runner.invoke(
        cli, ["export", str(FIXTURES / "k3_int8.keras"), "--raw", "-o", str(tmp_path / "r.npy")]
    )
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), want["words"])
    np.testing.assert_array_equal(np.load(tmp_path / "r.npy"), want["words:raw"])


def test_version(runner):
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("embcli, version ")


def test_every_command_has_help_and_an_example(runner):
    for name, command in all_commands().items():
        assert command.help and "Example:" in command.help, name
        result = runner.invoke(cli, [name, "-h"])
        assert result.exit_code == 0 and "Example:" in result.output, name


def test_every_command_module_is_named_in_the_lazy_map():
    from importlib import import_module

    defined = {}
    for module in set(COMMAND_MODULES.values()):
        for command in import_module(f"embcli.commands.{module}").COMMANDS:
            defined[command.name] = module
    assert defined == COMMAND_MODULES
