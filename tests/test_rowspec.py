import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from embcli.errors import BadRowSpec
from embcli.rowspec import parse_rows


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
