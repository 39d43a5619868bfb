"""Files written by Keras on the torch backend (fixtures/torch/, made by
fixtures/make_torch_fixtures.py; torch is not needed here): embcli reads them as the
manifest says, and an edited copy reloads in Keras on TensorFlow and predicts with the
new rows."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import FIXTURES
from keras_check import keras_check
from oracle import keras_tables

from embcli.cli import cli

TORCH = FIXTURES / "torch"
MANIFEST = json.loads((TORCH / "manifest.json").read_text())
NAMES = sorted(MANIFEST)
CASES = [(name, table["name"]) for name in NAMES for table in MANIFEST[name]["tables"]]


@pytest.fixture(scope="module")
def expected():
    with np.load(TORCH / "expected.npz") as archive:
        return {key: archive[key] for key in archive.files}


def manifest_table(name: str, table: str) -> dict:
    return next(t for t in MANIFEST[name]["tables"] if t["name"] == table)


def test_the_torch_files_are_what_tensorflow_would_write():
    """No torch-specific naming, dtype or metadata: the generator found the layout equal
    to the TensorFlow backend's for the same models, and metadata.json names no backend."""
    for name in NAMES:
        entry = MANIFEST[name]
        assert entry["backend"] == "torch" and "torch" in entry["writer"]
        assert entry["metadata"] == {"keras_version": entry["metadata"]["keras_version"]}
        if name.endswith(".keras"):
            assert entry["same_as_tensorflow"] is True


@pytest.mark.parametrize("name", NAMES)
def test_layers_json_matches_the_manifest(runner, name):
    result = runner.invoke(cli, ["layers", str(TORCH / name), "--json"])
    assert result.exit_code == 0, result.output
    got = sorted(
        (t["name"], t["class"], t["shape"], t["dtype"], t["weight"])
        for t in json.loads(result.output)
    )
    want = sorted(
        (t["name"], t["class"], t["shape"], t["dtype"], t["stored"])
        for t in MANIFEST[name]["tables"]
    )
    assert got == want


@pytest.mark.parametrize(("name", "table"), CASES)
def test_rows_match_the_manifest(runner, expected, name, table):
    entry = manifest_table(name, table)
    result = runner.invoke(cli, ["rows", str(TORCH / name), "-l", table, "0", "-1", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    values = expected[f"{MANIFEST[name]['expected']}:{table}"]
    assert rows[0]["vector"] == pytest.approx(entry["first_row"], rel=0, abs=0)
    np.testing.assert_array_equal(np.array(rows[1]["vector"], np.float32), values[-1])


@pytest.mark.parametrize(("name", "table"), CASES)
def test_export_matches_the_manifest_digest(runner, name, table, tmp_path):
    out = tmp_path / "table.npy"
    result = runner.invoke(cli, ["export", str(TORCH / name), "-l", table, "-o", str(out)])
    assert result.exit_code == 0, result.output
    values = np.load(out)
    entry = manifest_table(name, table)
    assert list(values.shape) == entry["shape"] and values.dtype == np.dtype(entry["dtype"])
    assert hashlib.sha256(values.astype("<f4").tobytes()).hexdigest() == entry["sha256"]


def edit(runner, source, table, rows, tmp_path, suffix):
    new = np.linspace(
        -1, 1, len(rows) * manifest_table(source, table)["shape"][1], dtype=np.float32
    )
    new = new.reshape(len(rows), -1)
    np.save(tmp_path / "new.npy", new)
    out = tmp_path / f"edited{suffix}"
    spec = ",".join(str(r) for r in rows)
    result = runner.invoke(
        cli,
        [
            "assign",
            str(TORCH / source),
            "-l",
            table,
            "--rows",
            spec,
            "--from",
            str(tmp_path / "new.npy"),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    return out, new


def test_an_edited_torch_archive_predicts_with_the_new_rows_in_tensorflow(
    runner, expected, tmp_path
):
    name = "torch_functional.keras"
    out, new = edit(runner, name, "tokens", [4, 19], tmp_path, ".keras")
    sample = np.asarray(MANIFEST[name]["sample"], dtype="int32")
    _, got = keras_check(out, "tokens", inputs={"ids": sample}, scratch=tmp_path)
    table = expected["torch_functional:tokens"].copy()
    table[[4, 19]] = new
    np.testing.assert_array_equal(got["table"], table)
    pooled = table[sample].mean(axis=1)
    want = pooled @ expected["torch_functional:kernel"] + expected["torch_functional:bias"]
    np.testing.assert_allclose(got["predictions"], want, rtol=1e-5, atol=1e-6)
    _, original = keras_check(TORCH / name, "tokens", inputs={"ids": sample}, scratch=tmp_path)
    np.testing.assert_allclose(
        original["predictions"], expected["torch_functional:output"], rtol=1e-5, atol=1e-6
    )


def test_edited_torch_weights_load_into_the_torch_architecture(runner, expected, tmp_path):
    out, new = edit(runner, "torch_functional.weights.h5", "tokens", [0], tmp_path, ".weights.h5")
    got = keras_tables(
        out, ["tokens"], architecture=TORCH / "torch_functional.keras", scratch=tmp_path
    )
    table = expected["torch_functional:tokens"].copy()
    table[0] = new[0]
    np.testing.assert_array_equal(got["tokens"], table)


def test_an_edited_torch_gpt2_backbone_runs_in_tensorflow(runner, expected, tmp_path):
    name = "torch_gpt2.keras"
    tokens = np.asarray(MANIFEST[name]["sample"], dtype="int32")
    inputs = {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}
    _, original = keras_check(TORCH / name, "token_embedding", inputs=inputs, scratch=tmp_path)
    np.testing.assert_allclose(
        original["predictions"], expected["torch_gpt2:output"], rtol=1e-4, atol=1e-5
    )
    out, new = edit(runner, name, "token_embedding", [9, 49], tmp_path, ".keras")
    _, got = keras_check(out, "token_embedding", inputs=inputs, scratch=tmp_path)
    table = expected["torch_gpt2:token_embedding"].copy()
    table[[9, 49]] = new
    np.testing.assert_array_equal(got["table"], table)
    assert not np.allclose(got["predictions"], original["predictions"])
    # the second sequence holds neither edited token, so only the first one changes
    np.testing.assert_allclose(
        got["predictions"][1], original["predictions"][1], rtol=1e-6, atol=1e-6
    )
