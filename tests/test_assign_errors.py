"""assign refuses bad input with one `Error:` line, no output file and an untouched model."""

import ml_dtypes
import numpy as np
import pytest
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from embcli.cli import cli
from embcli.edit import assign, cast_values
from embcli.errors import LossyCast
from embcli.model import find_table, open_model, read_rows

FUNCTIONAL = FIXTURES / "k3_functional.keras"


def write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


CASES = [
    ("count.npy", np.zeros((3, 8), np.float32), ["--rows", "1,2"], "got 3 vector(s) for 2 row(s)"),
    (
        "width.npy",
        np.zeros((2, 5), np.float32),
        ["--rows", "1,2"],
        "width.npy: vectors have 5 values each; the table has dim 8",
    ),
    ("ok.npy", np.zeros((2, 8), np.float32), ["--rows", "1,1"], "rows given more than once: 1"),
    (
        "ok.npy",
        np.zeros((2, 8), np.float32),
        ["--rows", "1,50"],
        "row 50 is out of range for a table of 50 rows",
    ),
    (
        "nan.npy",
        np.full((1, 8), np.nan, np.float32),
        ["--rows", "1"],
        "1 vector(s) hold NaN or Inf; use --allow-nonfinite to write them",
    ),
    (
        "whole.npy",
        np.zeros((2, 8), np.float32),
        [],
        "whole.npy holds 2 vectors but words has 50 rows; give --rows to replace some of them",
    ),
    ("words.csv", "1,2,3,4,5,6,7,x\n", ["--rows", "1"], "words.csv, line 1: not a number: '1'"),
    (
        "ragged.csv",
        "1,2,3,4,5,6,7,8\n1,2\n",
        ["--rows", "1,2"],
        "ragged.csv, line 2: 2 values, expected 8",
    ),
    (
        "latin1.txt",
        "1 2 3 4 5 6 7 \xe9\n".encode("latin-1"),
        ["--rows", "1"],
        "latin1.txt: not UTF-8 text",
    ),
    (
        "pickle.npy",
        np.array([[1, "a", None, 2, 3, 4, 5, 6]], dtype=object),
        ["--rows", "1"],
        "holds object values; only plain numbers are accepted",
    ),
    ("strings.npy", np.array([["a"] * 8]), ["--rows", "1"], "only plain numbers are accepted"),
    ("empty.txt", "", ["--rows", "1"], "empty.txt: holds no vectors"),
]


@pytest.mark.parametrize(("name", "content", "extra", "message"), CASES)
def test_refused(tmp_path, runner, name, content, extra, message):
    source = write(tmp_path, name, content)
    before = FUNCTIONAL.read_bytes()
    output = tmp_path / "out.keras"
    result = runner.invoke(
        cli,
        [
            "assign",
            str(FUNCTIONAL),
            "-l",
            "words",
            "--from",
            str(source),
            *extra,
            "-o",
            str(output),
        ],
    )
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and message in result.output
    assert result.output.count("\n") == 1
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert FUNCTIONAL.read_bytes() == before


def test_existing_output_needs_force(tmp_path, runner):
    output = tmp_path / "out.keras"
    output.write_bytes(b"precious")
    args = [
        "assign",
        str(FUNCTIONAL),
        "-l",
        "words",
        "--fill",
        "zeros",
        "--rows",
        "0",
        "-o",
        str(output),
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert result.output == f"Error: {output} exists; use --force to replace it\n"
    assert output.read_bytes() == b"precious"
    assert runner.invoke(cli, args + ["--force"]).exit_code == 0
    with open_model(output) as model:
        assert not read_rows(model, find_table(model, "words"), np.array([0])).any()


def test_wrong_output_suffix(tmp_path, runner):
    result = runner.invoke(
        cli,
        [
            "assign",
            str(FIXTURES / "k3.weights.h5"),
            "-l",
            "words",
            "--fill",
            "zeros",
            "--rows",
            "0",
            "-o",
            str(tmp_path / "out.h5"),
        ],
    )
    assert result.exit_code == 1
    assert "must be named *.weights.h5" in result.output


def test_float16_overflow_is_lossy(tmp_path, runner):
    big = write(tmp_path, "big.npy", np.full((1, 4), 1e6, np.float32))
    output = tmp_path / "out.keras"
    args = [
        "assign",
        str(FIXTURES / "k3_dtypes.keras"),
        "-l",
        "emb_f16",
        "--from",
        str(big),
        "--rows",
        "0",
        "-o",
        str(output),
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert (
        "4 value(s) overflow float16 (largest magnitude 1e+06); use --allow-lossy" in result.output
    )
    assert runner.invoke(cli, args + ["--allow-lossy"]).exit_code == 0


def test_nonfinite_allowed_on_request(tmp_path, runner):
    values = write(
        tmp_path, "inf.npy", np.array([[np.inf, -np.inf, np.nan, 1, 2, 3, 4, 5]], np.float32)
    )
    output = tmp_path / "out.keras"
    result = runner.invoke(
        cli,
        [
            "assign",
            str(FUNCTIONAL),
            "-l",
            "words",
            "--from",
            str(values),
            "--rows",
            "4",
            "--allow-nonfinite",
            "-o",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    with open_model(output) as model:
        row = read_rows(model, find_table(model, "words"), np.array([4]))[0]
    assert np.isposinf(row[0]) and np.isneginf(row[1]) and np.isnan(row[2])


def test_casts_round_to_nearest():
    values = np.array([[0.1, 1 / 3, 65504.0, 1e-9]])
    np.testing.assert_array_equal(cast_values(values, np.float16), values.astype(np.float16))
    with pytest.raises(LossyCast):
        cast_values(np.array([[65520.0]]), np.float16)
    with pytest.raises(LossyCast):
        cast_values(np.array([[1.5]]), np.int8)
    with pytest.raises(LossyCast):
        cast_values(np.array([[3.5e38]]), ml_dtypes.bfloat16)


DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def keras_layout_weights(path, dtype_name: str, rows: int, dim: int, seed: int) -> np.ndarray:
    """A `.weights.h5` laid out as Keras 3 writes it, with one table of the given dtype."""
    import h5py

    values = np.random.default_rng(seed).normal(size=(rows, dim)).astype(DTYPES[dtype_name])
    with h5py.File(path, "w") as handle:
        group = handle.create_group("layers/embedding/vars")
        group.attrs["name"] = "table"
        if dtype_name == "bfloat16":
            dataset = group.create_dataset("0", data=values.view(np.dtype("V2")))
            dataset.attrs["dtype"] = "bfloat16"
        else:
            group.create_dataset("0", data=values)
        handle.create_group("optimizer/vars")
    return values


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    dtype_name=st.sampled_from(sorted(DTYPES)),
    rows=st.integers(1, 40),
    dim=st.integers(1, 9),
    data=st.data(),
)
def test_round_trip_is_exact(tmp_path_factory, dtype_name, rows, dim, data):
    folder = tmp_path_factory.mktemp("rt")
    source = folder / "m.weights.h5"
    original = keras_layout_weights(source, dtype_name, rows, dim, seed=rows * dim)
    picked = data.draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=rows, unique=True))
    dtype = DTYPES[dtype_name]
    values = data.draw(
        arrays(
            dtype,
            (len(picked), dim),
            elements=st.floats(-1000, 1000, width=16 if dtype_name == "float16" else 32).map(dtype),
        )
    )
    output = folder / "out.weights.h5"
    with open_model(source) as model:
        assign(model, find_table(model, "table"), np.array(picked), values, output)
    with open_model(output) as edited:
        table = find_table(edited, "table")
        got = edited.read(table.weight, slice(None))
    want = original.copy()
    want[picked] = values
    assert got.dtype == want.dtype
    assert got.tobytes() == want.tobytes()
