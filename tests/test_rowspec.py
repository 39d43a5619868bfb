import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from embcli.errors import BadRowSpec
from embcli.rowspec import ascii_integer, parse_rows

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        (["0"], [0]),
        (["-1"], [9]),
        (["2:5"], [2, 3, 4]),
        (["0:10:4"], [0, 4, 8]),
        (["1,3", "5"], [1, 3, 5]),
        ([":2"], [0, 1]),
        (["8:"], [8, 9]),
        (["::-4"], [9, 5, 1]),
        (["-2:"], [8, 9]),
        (["3:100"], list(range(3, 10))),
        ([" 4 , 5 "], [4, 5]),
    ],
)
def test_parse_rows(specs, expected):
    assert parse_rows(specs, 10).tolist() == expected


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["10"], "row 10 is out of range for a table of 10 rows"),
        (["-11"], "row -11 is out of range for a table of 10 rows"),
        (["a"], "not a row index or slice: 'a'"),
        (["1:2:0"], "slice step cannot be zero"),
        (["1:2:3:4"], "not a row index or slice"),
        ([","], "no rows given"),
    ],
)
def test_bad_specs(specs, message):
    with pytest.raises(BadRowSpec, match=message):
        parse_rows(specs, 10)


def test_unique_refuses_repeats():
    with pytest.raises(BadRowSpec, match="rows given more than once: 3"):
        parse_rows(["3,1:5"], 10, unique=True)


indices = st.integers(min_value=-50, max_value=50)
slices = st.tuples(
    st.none() | indices, st.none() | indices, st.none() | st.integers(1, 7) | st.integers(-7, -1)
)


def slice_text(parts) -> str:
    start, stop, step = ("" if p is None else str(p) for p in parts)
    return f"{start}:{stop}" + (f":{step}" if step else "")


@given(nrows=st.integers(1, 40), parts=st.lists(slices, min_size=1, max_size=4))
def test_slices_match_python(nrows, parts):
    expected = []
    for start, stop, step in parts:
        expected.extend(range(nrows)[slice(start, stop, step)])
    got = parse_rows([",".join(slice_text(p) for p in parts)], nrows)
    assert got.tolist() == expected


@given(nrows=st.integers(1, 40), picks=st.lists(indices, min_size=1, max_size=8))
def test_indices_match_python(nrows, picks):
    table = list(range(nrows))
    if all(-nrows <= i < nrows for i in picks):
        assert parse_rows([str(i) for i in picks], nrows).tolist() == [table[i] for i in picks]
    else:
        with pytest.raises(BadRowSpec):
            parse_rows([str(i) for i in picks], nrows)


@given(nrows=st.integers(1, 40), parts=st.lists(slices, min_size=1, max_size=3))
def test_result_is_int64_in_range(nrows, parts):
    got = parse_rows([slice_text(p) for p in parts], nrows)
    assert got.dtype == np.int64
    assert ((got >= 0) & (got < nrows)).all()


@pytest.mark.parametrize(
    "spec",
    ["\u0663", "1\u0663", "\u0661:\u0663", "\uff11", "\u09e9", "1:\u0663", "\U0001d7d9"],
)
def test_unicode_digits_are_not_row_numbers(spec):
    with pytest.raises(BadRowSpec, match="not a row index or slice"):
        parse_rows([spec], 10)


@pytest.mark.parametrize("spec", ["9" * 5000, "-" + "9" * 5000, "0:" + "9" * 5000, "1" * 19])
def test_long_row_numbers_are_refused_in_one_line(spec):
    with pytest.raises(BadRowSpec) as caught:
        parse_rows([spec], 10)
    message = str(caught.value)
    assert message.startswith("row numbers have at most 18 digits: ")
    assert len(message) < 120


def test_eighteen_digits_are_a_row_number():
    with pytest.raises(BadRowSpec, match="row 999999999999999999 is out of range"):
        parse_rows(["9" * 18], 10)
    assert parse_rows(["0:" + "9" * 18], 3).tolist() == [0, 1, 2]


def test_a_slice_of_a_huge_table_is_built_from_its_bounds():
    assert parse_rows(["-2:"], 10**15).tolist() == [10**15 - 2, 10**15 - 1]


@pytest.mark.parametrize("row", ["9" * 5000, "\u0663"])
def test_cli_refuses_bad_row_numbers_in_one_line(row):
    from click.testing import CliRunner

    from embcli.cli import cli

    model = str(FIXTURES / "k3_functional.keras")
    result = CliRunner().invoke(cli, ["rows", model, "-l", "words", row])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ")
    assert result.output.count("\n") == 1
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("text", "value"), [("3", 3), (" -12 ", -12), ("+7", 7), ("0", 0)])
def test_ascii_integer_reads_ascii_digits(text, value):
    assert ascii_integer(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("\u0663", "not a count: '\u0663'"),
        ("1.5", "not a count: '1.5'"),
        ("", "not a count: ''"),
        ("9" * 30, "a count has at most 18 digits"),
    ],
)
def test_ascii_integer_refuses_the_rest(text, message):
    with pytest.raises(BadRowSpec, match=re.escape(message)):
        ascii_integer(text, "count")
