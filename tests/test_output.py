"""Strict output: JSON by RFC 8259 (NaN and ±Inf as null), CSV by RFC 4180, and text for
a terminal with every control character escaped."""

import csv
import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from embcli.cli import cli
from embcli.output import (
    BROKEN_PIPE_STATUS,
    aligned,
    csv_field,
    display_width,
    terminal_text,
    to_csv,
    to_json,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
WEIGHTS = FIXTURES / "k3.weights.h5"
HOSTILE_NAME = 'w\x1b[31mred\x9b2J\x7f\r\n\t,"x"'


def strict_json(text: str):
    """Parse as JavaScript's JSON.parse would: NaN, Infinity and -Infinity are errors."""

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline=""), strict=True))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_json_writes_nonfinite_values_as_null(dtype):
    values = np.array([[1.5, np.nan], [np.inf, -np.inf]], dtype=dtype)
    text = to_json({"rows": values, "mean": dtype(np.nan), "max": float("inf")})
    assert strict_json(text) == {"rows": [[1.5, None], [None, None]], "mean": None, "max": None}


def test_json_keeps_finite_floats_exact():
    values = np.array([0.1, 3.4028235e38, -1e-45, 65504], dtype=np.float32)
    assert np.array(strict_json(to_json(values)), dtype=np.float32).tobytes() == values.tobytes()


@given(
    st.lists(
        st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True),
        min_size=1,
        max_size=20,
    )
)
def test_json_float32_round_trip(values):
    array = np.array(values, dtype=np.float32)
    back = strict_json(to_json(array))
    for value, read in zip(array.tolist(), back, strict=True):
        if np.isfinite(value):
            assert np.float32(read).tobytes() == np.float32(value).tobytes()
        else:
            assert read is None


@given(st.text())
def test_json_carries_any_text_exactly(text):
    assert strict_json(to_json({"name": text})) == {"name": text}


def test_json_escapes_c1_controls_and_separators():
    text = to_json(["\x9b2J\x7f\u2028\x1b"])
    assert text == '[\n  "\\u009b2J\\u007f\\u2028\\u001b"\n]'


@pytest.mark.parametrize(
    ("field", "written"),
    [
        ("plain", "plain"),
        ("a\rb", '"a\rb"'),
        ("a\nb", '"a\nb"'),
        ("a,b", '"a,b"'),
        ('say "hi"', '"say ""hi"""'),
        ("", ""),
        (" spaced ", " spaced "),
    ],
)
def test_csv_field_quotes_as_rfc_4180_says(field, written):
    assert csv_field(field) == written


@given(
    st.lists(st.lists(st.text(), min_size=2, max_size=4), min_size=1, max_size=5).filter(
        lambda rows: len({len(r) for r in rows}) == 1
    )
)
def test_csv_round_trips_any_text(rows):
    """Rows of two to four fields; a lone empty field is quoted to survive too."""
    headers = [f"c{i}" for i in range(len(rows[0]))]
    assert read_csv(to_csv(rows, headers) + "\n") == [headers, *rows]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[31mred", "\\x1b[31mred"),
        ("\x9b2J", "\\x9b2J"),
        ("a\x7fb", "a\\x7fb"),
        ("\x00\x07\x08", "\\x00\\x07\\x08"),
        ("line\nnext\ttab\r", "line\\nnext\\ttab\\r"),
        ("\u2028", "\\u2028"),
        ("\udcff", "\\udcff"),
        ("caf\u00e9 \u4e2d \\x1b", "caf\u00e9 \u4e2d \\x1b"),
    ],
)
def test_terminal_text_escapes_controls(text, shown):
    assert terminal_text(text) == shown


@given(st.text())
def test_terminal_text_leaves_no_control_character(text):
    shown = terminal_text(text)
    assert not any(
        ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in shown
    )


def test_aligned_escapes_names_and_keeps_columns_aligned():
    table = aligned([["\x1b[2Jx", 1], ["\u4e2d", 10]], ["name", "n"])
    assert table == "name       n\n\\x1b[2Jx   1\n\u4e2d        10"


def test_display_width_counts_combining_marks_as_nothing():
    assert display_width("e\u0301") == 1
    assert display_width("\u4e2d\u6587") == 4


@pytest.fixture
def hostile_weights(tmp_path):
    path = tmp_path / "hostile.weights.h5"
    shutil.copyfile(WEIGHTS, path)
    with h5py.File(path, "r+") as handle:
        handle["layers/embedding/vars"].attrs["name"] = HOSTILE_NAME
    return path


def test_layers_table_escapes_a_hostile_name(hostile_weights):
    result = CliRunner().invoke(cli, ["layers", str(hostile_weights)])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "name                              class      rows  dim  dtype    weight\n"
        'w\\x1b[31mred\\x9b2J\\x7f\\r\\n\\t,"x"  Embedding    50    8  float32  layers/embedding/vars/0\n'
        "positions                         Embedding    30    4  float32  layers/embedding_1/vars/0\n"
    )


def test_layers_csv_and_json_carry_a_hostile_name_exactly(hostile_weights):
    # color=True: click.echo itself strips ANSI sequences from output that is not a terminal
    runner = CliRunner()
    as_csv = runner.invoke(cli, ["layers", str(hostile_weights), "--csv"], color=True)
    rows = read_csv(as_csv.stdout_bytes.decode())
    assert [r[0] for r in rows] == ["name", HOSTILE_NAME, "positions"]
    as_json = runner.invoke(cli, ["layers", str(hostile_weights), "--json"], color=True)
    text = as_json.stdout_bytes.decode()
    assert "\x1b" not in text and "\x9b" not in text and "\r" not in text
    assert [t["name"] for t in strict_json(text)] == [HOSTILE_NAME, "positions"]


@pytest.fixture
def nonfinite_weights(tmp_path):
    path = tmp_path / "nonfinite.weights.h5"
    values = np.array([[np.nan] * 8, [np.inf] * 4 + [-np.inf] * 4], dtype=np.float32)
    shutil.copyfile(WEIGHTS, path)
    with h5py.File(path, "r+") as handle:
        handle["layers/embedding/vars/0"][0:2] = values
    return path


def test_rows_json_is_strict_with_nonfinite_values(nonfinite_weights):
    result = CliRunner().invoke(
        cli, ["rows", str(nonfinite_weights), "-l", "words", "0:3", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = strict_json(result.output)["rows"]
    assert rows[0]["vector"] == [None] * 8
    assert rows[1]["vector"] == [None] * 8
    assert all(isinstance(v, float) for v in rows[2]["vector"])


def test_stats_json_is_strict_with_nonfinite_values(nonfinite_weights):
    result = CliRunner().invoke(cli, ["stats", str(nonfinite_weights), "-l", "words", "--json"])
    assert result.exit_code == 0, result.output
    (record,) = [r for r in strict_json(result.output) if r["name"] == "words"]
    assert record["nan_rows"] == 1 and record["inf_rows"] == 1


def test_silence_stdout_lets_a_closed_pipe_end_quietly():
    script = textwrap.dedent(
        """
        import sys
        from embcli.output import BROKEN_PIPE_STATUS, silence_stdout
        try:
            for _ in range(100000):
                print("x" * 100)
            sys.stdout.flush()
        except BrokenPipeError:
            silence_stdout()
            sys.exit(BROKEN_PIPE_STATUS)
        """
    )
    reader = subprocess.Popen(["true"], stdin=subprocess.PIPE)
    reader.wait()
    writer = subprocess.run(
        [sys.executable, "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=120,
    )
    reader.stdin.close()
    assert writer.stderr == b""
    assert writer.returncode == BROKEN_PIPE_STATUS


def test_csv_keeps_a_lone_empty_field():
    assert read_csv(to_csv([[""], ["a"]], ["token"]) + "\n") == [["token"], [""], ["a"]]


def test_float64_values_print_as_numbers():
    import numpy as np

    from embcli.output import number_text, vector_text

    assert number_text(np.float64(0.1)) == "0.1"
    assert vector_text(np.array([0.1, -2.5e-300], dtype=np.float64)) == "0.1 -2.5e-300"
    assert number_text(np.float32(0.1)) == "0.1"
