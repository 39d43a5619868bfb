"""The public Python API: `embcli.open`, `Model`, `embcli.assign`, and its errors, checked
against what Keras itself reported for each fixture (manifest.json) and against Keras
reloading what the API writes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, MANIFEST, ROOT, fixture_names
from oracle import keras_tables

import embcli
from embcli import errors
from embcli.cli import CLI_REMEDIES


def expected_tables(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / MANIFEST[name]["expected"]) as data:
        return dict(data)


NAMED = [n for n in fixture_names() if not n.startswith("k30.weights")]  # 3.0 records no names


@pytest.mark.parametrize("fixture", NAMED)
def test_open_lists_and_reads_what_keras_reports(fixture):
    entry = MANIFEST[fixture]
    expected = expected_tables(fixture)
    with embcli.open(str(FIXTURES / fixture)) as model:
        assert model.format != "?"
        assert len(model.tables) == len(entry["tables"])
        for table in entry["tables"]:
            key = "/".join(table["path"])
            found = model.tables[key] if len(table["path"]) > 1 else model.tables[table["name"]]
            assert found.class_name in (table["class"], None)
            assert list(found.shape) == table["shape"]
            assert found.dtype == table["dtype"]
            values = expected[key]
            np.testing.assert_array_equal(model.read(found.name, slice(None)), values)
            np.testing.assert_array_equal(model.read(found.name, -1), values[-1])
            np.testing.assert_array_equal(model.read(found.name, [-1, 0, -1]), values[[-1, 0, -1]])
            np.testing.assert_array_equal(model.read(found.name, "1:3"), values[1:3])
            streamed = np.concatenate(
                [block for _, block in model.iter_blocks(found.name, block_rows=7)]
            )
            np.testing.assert_array_equal(streamed, values)
            if table["vocabulary"] is not None:
                assert model.vocabulary(found.name) == table["vocabulary"]


def test_tables_is_a_mapping_of_every_name_layer_accepts():
    with embcli.open(FIXTURES / "k3_functional.keras") as model:
        assert list(model.tables) == ["words", "positions"]
        assert len(model.tables) == 2
        assert model.tables["layers/embedding/vars/0"] == model.tables["words"]
        assert "positions" in model.tables and "nothing" not in model.tables
        with pytest.raises(errors.AmbiguousTable):
            model.table()
        with pytest.raises(errors.NoSuchTable):
            model.tables["nothing"]


@pytest.mark.parametrize(
    "rows, error",
    [
        (50, errors.BadRowSpec),
        (-51, errors.BadRowSpec),
        ([0, 99], errors.BadRowSpec),
        (1.5, errors.BadArgument),
        (True, errors.BadArgument),
        ([[0, 1]], errors.BadArgument),
        (["a"], errors.BadArgument),
        ("x:y", errors.BadRowSpec),
    ],
)
def test_bad_rows_are_embcli_errors(rows, error):
    with embcli.open(FIXTURES / "k3_functional.keras") as model:
        with pytest.raises(error):
            model.read("words", rows)


def test_using_a_closed_model_says_so():
    model = embcli.open(FIXTURES / "k3_functional.keras")
    model.close()
    model.close()
    assert model.closed
    for use in (lambda: model.read("words", 0), lambda: model.tables, model.vocabulary):
        with pytest.raises(errors.ModelClosed, match="was closed"):
            use()


def test_bad_paths_are_embcli_errors(tmp_path):
    with pytest.raises(errors.UnsupportedFormat):
        embcli.open(tmp_path / "missing.keras")
    with pytest.raises(errors.BadArgument):
        embcli.open(42)


def test_assign_writes_what_keras_reloads(tmp_path):
    source = FIXTURES / "k3_functional.keras"
    values = np.arange(16, dtype=np.float32).reshape(2, 8) / 16
    output = tmp_path / "new.keras"
    result = embcli.assign(str(source), "words", rows=[1, -1], values=values, output=str(output))
    assert (result.rows, result.output, result.table.name) == (2, output, "words")
    reloaded = keras_tables(output, ["words", "positions"], scratch=tmp_path)
    original = expected_tables("k3_functional.keras")
    expected = original["words"].copy()
    expected[[1, -1]] = values
    np.testing.assert_array_equal(reloaded["words"], expected)
    np.testing.assert_array_equal(reloaded["positions"], original["positions"])


def test_assign_whole_table_from_a_file_and_in_place(tmp_path):
    model = tmp_path / "m.weights.h5"
    model.write_bytes((FIXTURES / "k3.weights.h5").read_bytes())
    values = np.ones((30, 4), dtype=np.float32)
    np.save(tmp_path / "v.npy", values)
    embcli.assign(model, "positions", values=tmp_path / "v.npy", in_place=True)
    with embcli.open(model) as opened:
        np.testing.assert_array_equal(opened.read("positions", slice(None)), values)
    embcli.assign(model, "positions", rows=0, fill="zeros", in_place=True)
    with embcli.open(model) as opened:
        assert not opened.read("positions", 0).any()


def error_cases(tmp_path: Path):
    source = FIXTURES / "k3_functional.keras"
    taken = tmp_path / "taken.keras"
    taken.write_bytes(b"")
    np.savez(tmp_path / "two.npz", a=np.zeros((1, 8)), b=np.zeros((1, 8)))
    yield (
        errors.NonFiniteValues,
        lambda: embcli.assign(
            source, "words", rows=0, values=np.full(8, np.inf), output=tmp_path / "a.keras"
        ),
    )
    yield errors.LossyCast, lambda: embcli.assign(
        FIXTURES / "k3_dtypes.keras", "emb_f16", rows=0, values=np.full(4, 1e6),
        output=tmp_path / "b.keras",
    )  # fmt: skip
    yield (
        errors.OutputExists,
        lambda: embcli.assign(source, "words", rows=0, fill="zeros", output=taken),
    )
    yield (
        errors.AmbiguousTable,
        lambda: embcli.assign(source, rows=0, fill="zeros", output=tmp_path / "c.keras"),
    )
    yield (
        errors.BadVectors,
        lambda: embcli.assign(
            source, "words", values=np.zeros((3, 8)), output=tmp_path / "d.keras"
        ),
    )
    yield (
        errors.BadVectors,
        lambda: embcli.assign(
            source, "words", rows=0, values=tmp_path / "two.npz", output=tmp_path / "e.keras"
        ),
    )
    yield (
        errors.NoVocabulary,
        lambda: embcli.assign(
            source, "words", by_token=tmp_path / "two.npz", output=tmp_path / "f.keras"
        ),
    )
    yield (
        errors.BadRowSpec,
        lambda: embcli.assign(
            source, "words", rows=[1, 1], fill="zeros", output=tmp_path / "g.keras"
        ),
    )
    yield errors.BadArgument, lambda: embcli.assign(source, "words", rows=0, fill="zeros")


def test_library_errors_name_no_flags_and_the_cli_adds_them(tmp_path):
    seen = set()
    for error, call in error_cases(tmp_path):
        with pytest.raises(error) as caught:
            call()
        message = str(caught.value)
        assert "--" not in message, message
        assert message.startswith(caught.value.message)
        if caught.value.remedy is not None:
            seen.add(caught.value.remedy)
            assert CLI_REMEDIES[caught.value.remedy] in caught.value.explain(CLI_REMEDIES)
    assert {"allow_nonfinite", "allow_lossy", "force", "choose_table", "vocab"} <= seen
    assert set(CLI_REMEDIES) == set(errors.API_REMEDIES)
    assert not list(tmp_path.glob("[a-g].keras"))


def test_errors_survive_pickling():
    import pickle

    error = errors.OutputExists("x exists", remedy="force")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.message, copy.remedy, str(copy)) == (
        errors.OutputExists,
        "x exists",
        "force",
        str(error),
    )


def test_import_is_cheap_and_names_are_public():
    code = (
        "import sys, embcli; heavy = [m for m in ('numpy', 'h5py') if m in sys.modules]; "
        "print(heavy, sorted(n for n in embcli.__all__ if not hasattr(embcli, n)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip() == "[] []"
    assert {"open", "assign", "resize", "EmbcliError", "Model"} <= set(dir(embcli))
    assert (ROOT / "embcli" / "py.typed").exists()
    with pytest.raises(AttributeError):
        embcli.nothing_here  # noqa: B018


def test_readme_python_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    code = code.replace('"fixtures/', f'"{FIXTURES}/')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "keras archive ['words', 'positions']",
        "Embedding (50, 8) float32",
        "None",
        "2 doubled.keras",
        "1 vector(s) hold NaN or Inf; pass allow_nonfinite=True to write them",
    ]
    reloaded = keras_tables(tmp_path / "doubled.keras", ["words"], scratch=tmp_path)
    original = expected_tables("k3_functional.keras")["words"]
    np.testing.assert_array_equal(reloaded["words"][[0, -1]], original[[0, -1]] * 2)
    np.testing.assert_array_equal(reloaded["words"][1:-1], original[1:-1])
