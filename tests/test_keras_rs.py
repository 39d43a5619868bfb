"""keras-rs `DistributedEmbedding` (fixtures/rs/, see fixtures/make_rs_fixtures.py):
default-device tables read and edit like any Embedding, and Keras with keras-rs reloads
the edits; SparseCore stacks are listed as stacked and refused for row access."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES

from embcli.cli import cli
from embcli.formats.keras_rs import stack_name

RS = FIXTURES / "rs"
MANIFEST = json.loads((RS / "manifest.json").read_text())
DEFAULT = MANIFEST["rs_default.keras"]
STACKED = MANIFEST["rs_sparsecore_jax.keras"]
DEFAULT_FILES = DEFAULT["files"]
SPARSECORE = str(RS / "rs_sparsecore_jax.keras")
STACK_TABLE = "rs_emb/var:items_genres:table"
HAS_KERAS_RS = importlib.util.find_spec("keras_rs") is not None


@pytest.fixture(scope="module")
def expected():
    with np.load(RS / "expected.npz") as archive:
        return {key: archive[key] for key in archive.files}


def listed(runner, path, *extra) -> list[dict]:
    result = runner.invoke(cli, ["layers", str(path), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("name", DEFAULT_FILES)
def test_default_device_tables_are_listed_as_keras_reports_them(runner, name):
    tables = listed(runner, RS / name)
    stored = "stored" if name.endswith(".keras") else "stored_weights_h5"
    want = [
        (t["name"], t["class"], t["shape"], t["dtype"], t[stored], "/".join(t["path"]))
        for t in DEFAULT["tables"]
    ]
    got = [
        (t["name"], t["class"], t["shape"], t["dtype"], t["weight"], t["qualified"]) for t in tables
    ]
    assert got == want
    assert all(t["embedding"] and t["stacked"] is None for t in tables)


@pytest.mark.parametrize("name", DEFAULT_FILES)
@pytest.mark.parametrize("key", ["name", "qualified", "stored"])
def test_rows_by_every_name_match_keras(runner, expected, name, key):
    for table in DEFAULT["tables"]:
        layer = {
            "name": table["name"],
            "qualified": "/".join(table["path"]),
            "stored": table["stored"],
        }
        result = runner.invoke(cli, ["rows", str(RS / name), "0:", "-l", layer[key], "--json"])
        assert result.exit_code == 0, result.output
        rows = np.array([row["vector"] for row in json.loads(result.output)["rows"]], np.float32)
        np.testing.assert_array_equal(rows, expected[f"rs_default:{table['name']}"])


@pytest.mark.parametrize("name", DEFAULT_FILES)
def test_export_and_stats_cover_every_table(runner, expected, name, tmp_path):
    out = tmp_path / "all.npz"
    result = runner.invoke(cli, ["export", str(RS / name), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as archive:
        assert sorted(archive.files) == sorted(t["name"] for t in DEFAULT["tables"])
        for key in archive.files:
            np.testing.assert_array_equal(archive[key], expected[f"rs_default:{key}"])
    result = runner.invoke(cli, ["stats", str(RS / name), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert [s["name"] for s in stats] == [t["name"] for t in DEFAULT["tables"]]


_RELOAD = r"""
import json, sys
import numpy as np
import keras, keras_rs  # noqa: F401  (registers DistributedEmbedding)
path, architecture, sample, out = sys.argv[1:5]
if architecture:
    model = keras.saving.load_model(architecture)
    model.load_weights(path)
else:
    model = keras.saving.load_model(path)
sample = {k: np.asarray(v, dtype="int32") for k, v in json.loads(sample).items()}
layer = model.get_layer("rs_emb")
result = {f"table:{k}": np.asarray(v) for k, v in layer.get_embedding_tables().items()}
result.update({f"feature:{k}": np.asarray(v) for k, v in layer(sample).items()})
result["output"] = np.asarray(model(sample))
np.savez(out, **result)
"""


def keras_rs_reload(path: Path, architecture: Path | None, scratch: Path) -> dict[str, np.ndarray]:
    """What Keras with keras-rs computes after loading `path` (a subprocess)."""
    out = scratch / "reloaded.npz"
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    command = [
        sys.executable,
        "-c",
        _RELOAD,
        str(path),
        str(architecture or ""),
        json.dumps(DEFAULT["sample"]),
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as archive:
        return {key: archive[key] for key in archive.files}


@pytest.mark.keras
@pytest.mark.skipif(not HAS_KERAS_RS, reason="keras-rs is not installed")
@pytest.mark.parametrize("name", DEFAULT_FILES)
def test_assign_reloads_in_keras_rs_with_the_new_rows(runner, expected, name, tmp_path):
    """A shared table (`users`, features `user` and `friend`) edited once: both features
    look up the new rows; the other tables are untouched."""
    new = np.arange(8, dtype=np.float32).reshape(2, 4) / 8 - 0.5
    np.save(tmp_path / "new.npy", new)
    out = tmp_path / name
    result = runner.invoke(
        cli,
        [
            "assign",
            str(RS / name),
            "-l",
            "users",
            "--rows",
            "3,11",
            "--from",
            str(tmp_path / "new.npy"),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    architecture = None if name.endswith(".keras") else RS / "rs_default.keras"
    got = keras_rs_reload(out, architecture, tmp_path)
    users = expected["rs_default:users"].copy()
    users[[3, 11]] = new
    np.testing.assert_array_equal(got["table:users"], users)
    for other in ("items", "tags"):
        np.testing.assert_array_equal(got[f"table:{other}"], expected[f"rs_default:{other}"])
    sample = DEFAULT["sample"]
    np.testing.assert_array_equal(got["feature:user"], users[sample["user"]])
    np.testing.assert_array_equal(got["feature:friend"], users[sample["friend"]])
    assert not np.array_equal(got["output"], expected["rs_default:output"])


@pytest.mark.keras
@pytest.mark.skipif(not HAS_KERAS_RS, reason="keras-rs is not installed")
def test_the_unedited_fixture_reloads_as_the_manifest_says(expected, tmp_path):
    got = keras_rs_reload(RS / "rs_default.keras", None, tmp_path)
    np.testing.assert_allclose(got["output"], expected["rs_default:output"], rtol=1e-6)


# SparseCore stacks ---------------------------------------------------------------------


def test_a_sparsecore_stack_is_listed_as_stacked(runner, expected):
    tables = {t["name"]: t for t in listed(runner, SPARSECORE)}
    assert sorted(tables) == [STACK_TABLE, "users"]
    stack = tables[STACK_TABLE]
    (table_var,) = [v for v in STACKED["stacked"] if v["role"] == "table"]
    assert stack["class"] == "DistributedEmbedding"
    assert stack["shape"] == table_var["shape"]
    assert stack["weight"] == table_var["stored"]
    assert stack["stacked"] == {
        "layer": "rs_emb",
        "holds": [t["name"] for t in STACKED["stack"]["tables"]],
        "role": "table",
        "variable": table_var["variable"],
    }
    (users,) = STACKED["tables"]
    assert tables["users"]["weight"] == users["stored"] and tables["users"]["stacked"] is None


def test_all_lists_the_slots_but_not_the_iteration_counter(runner):
    stacked = [t for t in listed(runner, SPARSECORE, "--all") if t["stacked"]]
    want = [v for v in STACKED["stacked"] if v["role"] != "iteration"]
    assert [(t["weight"], t["stacked"]["role"], t["stacked"]["variable"]) for t in stacked] == [
        (v["stored"], v["role"], v["variable"]) for v in want
    ]


def test_the_aligned_listing_says_stacked(runner):
    result = runner.invoke(cli, ["layers", SPARSECORE])
    assert result.exit_code == 0
    header, stack_line, users_line = result.output.splitlines()
    assert "stacked" in header.split()
    assert "table of items, genres" in stack_line
    assert users_line.split()[0] == "users"


@pytest.mark.parametrize(
    "command",
    [
        ["rows", "0"],
        ["export", "-o", "{tmp}/out.npy"],
        ["export", "-o", "{tmp}/out.tsv"],
        ["stats"],
        ["assign", "--fill", "zeros", "--rows", "0", "-o", "{tmp}/out.keras"],
        ["resize", "--rows", "70", "-o", "{tmp}/out.keras"],
    ],
)
@pytest.mark.parametrize("layer", [STACK_TABLE, "layers/distributed_embedding/vars/1"])
def test_row_access_to_a_stack_is_refused(runner, tmp_path, command, layer):
    before = hashlib.sha256(Path(SPARSECORE).read_bytes()).hexdigest()
    args = [part.replace("{tmp}", str(tmp_path)) for part in command]
    result = runner.invoke(cli, [args[0], SPARSECORE, "-l", layer, *args[1:]])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ")
    assert "stacked SparseCore variable of DistributedEmbedding 'rs_emb'" in result.output
    assert "not one token" in result.output
    assert list(tmp_path.iterdir()) == []
    assert hashlib.sha256(Path(SPARSECORE).read_bytes()).hexdigest() == before


def test_whole_model_reads_skip_the_stack(runner, expected, tmp_path):
    out = tmp_path / "all.npz"
    result = runner.invoke(cli, ["export", SPARSECORE, "-o", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as archive:
        assert archive.files == ["users"]
        np.testing.assert_array_equal(archive["users"], expected["rs_sparsecore_jax:users"])
    result = runner.invoke(cli, ["stats", SPARSECORE, "--json"])
    assert result.exit_code == 0, result.output
    assert [s["name"] for s in json.loads(result.output)] == ["users"]


def test_the_default_device_table_beside_a_stack_is_editable(runner, expected, tmp_path):
    out = tmp_path / "edited.keras"
    result = runner.invoke(
        cli, ["assign", SPARSECORE, "-l", "users", "--fill", "zeros", "--rows", "1", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["rows", str(out), "-l", "rs_emb/users", "1", "--json"])
    assert json.loads(result.output)["rows"][0]["vector"] == [0.0] * 4


def test_the_stack_name_is_jax_tpu_embeddings():
    assert stack_name(["items", "genres"]) == STACKED["stack"]["name"]
    long = [f"table_number_{i}" for i in range(5)]
    joined = "_".join(long)
    assert (
        stack_name(long) == joined[:50] + "..." + hashlib.sha256(joined.encode()).hexdigest()[:12]
    )


def test_a_stack_in_a_weights_file_without_config_is_still_refused(runner, tmp_path):
    """Without config.json the group's class name alone says DistributedEmbedding: its own
    2-D variables are stacked of unknown role, never rows."""
    import zipfile

    weights = tmp_path / "sc.weights.h5"
    weights.write_bytes(zipfile.ZipFile(SPARSECORE).read("model.weights.h5"))
    stacked = [t for t in listed(runner, weights) if t["stacked"]]
    assert [(t["name"], t["stacked"]["role"], t["stacked"]["holds"]) for t in stacked] == [
        (f"rs_emb/stacked:{i}", "unknown", []) for i in range(3)
    ]
    result = runner.invoke(cli, ["rows", str(weights), "-l", "rs_emb/stacked:0", "0"])
    assert result.exit_code == 1 and "not one token" in result.output
