"""assign: only the given rows change, everything else stays bit-identical, and Keras
reloads every edited file with exactly the new rows."""

import json
import os
import shutil
import stat

import ml_dtypes
import numpy as np
import pytest
from conftest import FIXTURES, MANIFEST
from digest import artifact_digest, changed_keys
from oracle import keras_tables, old_keras_available

from embcli.cli import cli
from embcli.edit import quantize_rows
from embcli.model import find_table, open_model, read_rows

ROWS = [1, 3, -1]

# fixture, --layer, Keras layer name, Keras flavour, architecture for weights-only files
CASES = [
    ("k3_functional.keras", "words", "words", "keras", None),
    ("k3_functional.keras", "positions", "positions", "keras", None),
    ("k3_folder", "words", "words", "keras", None),
    ("k3.weights.h5", "words", "words", "keras", "k3_functional.keras"),
    ("k3_sharded.weights.json", "words", "words", "keras", "k3_functional.keras"),
    ("k3_legacy.h5", "leaf_emb", "leaf_emb", "keras", None),
    ("k3_nested.keras", "tower/emb", "emb", None, None),
    ("k3_nested.keras", "inner_table", "inner_table", "keras", None),
    ("k3_dtypes.keras", "emb_f16", "emb_f16", "keras", None),
    ("k3_dtypes.keras", "emb_bf16", "emb_bf16", "keras", None),
    ("k3_int8.keras", "words", "words", "keras", None),
    ("k3_custom.keras", "table_emb", "table_emb", None, None),
    ("k3_hub.keras", "rev", "rev", "keras", None),
    ("k3_lambda.keras", "words", "words", "keras", None),
    ("tfk_full.h5", "inner_emb", "inner_emb", "tf_keras", None),
    ("tfk_weights.h5", "word_emb", "word_emb", None, None),
    ("tfk.keras", "word_emb", "word_emb", "tf_keras", None),
    ("k30_functional.keras", "words", "words", "keras", None),
    ("k30_sequential.keras", "embedding_2", "embedding_2", "keras", None),
]


def output_name(fixture: str) -> str:
    if fixture.endswith(".weights.json"):
        return "edited.weights.json"
    if fixture.endswith(".weights.h5"):
        return "edited.weights.h5"
    if (FIXTURES / fixture).is_dir():
        return "edited_folder"
    return "edited" + os.path.splitext(fixture)[1]


def new_vectors(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(len(ROWS), shape[1])).astype(np.float32)


def expected_after(original: np.ndarray, table, values: np.ndarray) -> np.ndarray:
    rows = np.array(ROWS) % table.rows
    result = original.copy()
    if table.quantized == "int8":
        quantized, scale = quantize_rows(values)
        result[rows] = quantized.astype(np.float32) / scale[:, None]
    else:
        stored = values.astype(ml_dtypes.bfloat16 if table.dtype == "bfloat16" else table.dtype)
        result[rows] = stored.astype(original.dtype)
    return result


def weight_keys(table, digest: dict) -> set[str]:
    """Digest keys that belong to the table's own data (and its int8 scale)."""
    weights = {table.weight} | ({table.scale} if table.scale else set())
    return {k for k in digest if any(k.endswith(":" + w) or k == w for w in weights)}


@pytest.mark.parametrize(("fixture", "layer", "keras_name", "flavour", "architecture"), CASES)
def test_assign_changes_only_the_rows(
    tmp_path, runner, fixture, layer, keras_name, flavour, architecture
):
    source = FIXTURES / fixture
    output = tmp_path / output_name(fixture)
    with open_model(source) as model:
        table = find_table(model, layer)
        original = read_rows(model, table, np.arange(table.rows))
    values = new_vectors(table.shape)
    np.save(tmp_path / "vectors.npy", values)
    before = artifact_digest(source)

    result = runner.invoke(
        cli,
        [
            "assign",
            str(source),
            "-l",
            layer,
            "--from",
            str(tmp_path / "vectors.npy"),
            "--rows",
            ",".join(map(str, ROWS)),
            "-o",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    want = expected_after(original, table, values)

    with open_model(output) as edited:
        got = read_rows(edited, find_table(edited, layer), np.arange(table.rows))
    np.testing.assert_array_equal(got, want)

    after = artifact_digest(output)
    changed = changed_keys(before, after) - {"index"}
    assert changed and changed <= weight_keys(table, before), sorted(changed)
    assert artifact_digest(source) == before
    leftovers = {p.name for p in tmp_path.iterdir()} - {output.name, "vectors.npy"}
    assert all(name.startswith("edited_0000") for name in leftovers), leftovers

    if flavour is not None:
        arch = FIXTURES / architecture if architecture else None
        reloaded = keras_tables(output, [keras_name], flavour, arch, scratch=tmp_path)[keras_name]
        np.testing.assert_array_equal(reloaded.astype(want.dtype), want)


@pytest.mark.skipif(not old_keras_available(), reason="no Keras 3.0 interpreter on this machine")
def test_old_keras_reloads_its_edited_file(tmp_path, runner):
    source = FIXTURES / "k30_functional.keras"
    values = new_vectors((50, 8))
    np.save(tmp_path / "v.npy", values)
    output = tmp_path / "edited.keras"
    result = runner.invoke(
        cli,
        [
            "assign",
            str(source),
            "-l",
            "words",
            "--from",
            str(tmp_path / "v.npy"),
            "--rows",
            "1,3,-1",
            "-o",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    reloaded = keras_tables(output, ["words"], "old", scratch=tmp_path)["words"]
    np.testing.assert_array_equal(reloaded[[1, 3, 49]], values)


def test_int8_rows_are_quantized_as_keras_quantizes(tmp_path):
    """Keras's own quantizer, given the same floats, must produce our bytes."""
    import keras

    values = new_vectors((50, 8), seed=3)
    layer = keras.layers.Embedding(len(values), values.shape[1])
    layer.build()
    layer.embeddings.assign(values)
    layer.quantize("int8")
    quantized, scale = quantize_rows(values)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer._embeddings), quantized)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.embeddings_scale), scale)


def in_place_copy(tmp_path, fixture):
    source = FIXTURES / fixture
    target = tmp_path / fixture
    if source.is_dir():
        shutil.copytree(source, target)
    elif fixture.endswith(".weights.json"):
        for shard in source.parent.glob(source.name.replace(".weights.json", "") + "*"):
            shutil.copy(shard, tmp_path / shard.name)
    else:
        shutil.copy(source, target)
    return target


@pytest.mark.parametrize(
    "fixture",
    ["k3_functional.keras", "k3_folder", "k3_sharded.weights.json", "tfk_full.h5", "k3.weights.h5"],
)
def test_in_place(tmp_path, runner, fixture):
    target = in_place_copy(tmp_path, fixture)
    if target.is_file():
        target.chmod(0o640)
    layer = MANIFEST[fixture]["tables"][0]["name"]
    before = artifact_digest(target)
    listing = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(
        cli, ["assign", str(target), "-l", layer, "--fill", "zeros", "--rows", "0,2", "--in-place"]
    )
    assert result.exit_code == 0, result.output
    with open_model(target) as model:
        table = find_table(model, layer)
        assert not read_rows(model, table, np.array([0, 2])).any()
    changed = changed_keys(before, artifact_digest(target))
    assert len(changed) == 1 and table.weight in next(iter(changed))
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
    if target.is_file():
        assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_sharded_copy_renames_its_shards(tmp_path, runner):
    output = tmp_path / "copy.weights.json"
    result = runner.invoke(
        cli,
        [
            "assign",
            str(FIXTURES / "k3_sharded.weights.json"),
            "-l",
            "words",
            "--fill",
            "zeros",
            "--rows",
            "0",
            "-o",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    index = json.loads(output.read_text())
    original = json.loads((FIXTURES / "k3_sharded.weights.json").read_text())
    assert index["weight_map"].keys() == original["weight_map"].keys()
    shards = sorted(p.name for p in tmp_path.glob("copy_*.weights.h5"))
    assert shards == [f"copy_0000{i}.weights.h5" for i in range(4)]
    assert index["metadata"] == original["metadata"]


@pytest.mark.parametrize("fixture", ["k3_functional.keras", "tfk_full.h5", "k3_legacy.h5"])
def test_reset_optimizer_rows(tmp_path, runner, fixture):
    table_name = MANIFEST[fixture]["tables"][0]["name"]
    output = tmp_path / ("out" + os.path.splitext(fixture)[1])
    with open_model(FIXTURES / fixture) as model:
        table = find_table(model, table_name)
        slots = model.optimizer_slots(table)
        slot_before = {s: model.read(s, slice(None)) for s in slots}
    assert len(slots) == 2
    result = runner.invoke(
        cli,
        [
            "assign",
            str(FIXTURES / fixture),
            "-l",
            table_name,
            "--fill",
            "zeros",
            "--rows",
            "1,2",
            "--reset-optimizer-rows",
            "-o",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "and 2 optimizer slot(s)" in result.output
    with open_model(output) as edited:
        for slot, old in slot_before.items():
            new = edited.read(slot, slice(None))
            assert not new[[1, 2]].any()
            keep = np.setdiff1d(np.arange(len(old)), [1, 2])
            np.testing.assert_array_equal(new[keep], old[keep])


def test_slots_left_alone_by_default(tmp_path, runner):
    output = tmp_path / "out.keras"
    before = artifact_digest(FIXTURES / "k3_functional.keras")
    runner.invoke(
        cli,
        [
            "assign",
            str(FIXTURES / "k3_functional.keras"),
            "-l",
            "words",
            "--fill",
            "zeros",
            "--rows",
            "1",
            "-o",
            str(output),
        ],
    )
    changed = changed_keys(before, artifact_digest(output))
    assert changed == {"model.weights.h5:layers/embedding/vars/0"}


def test_whole_table_without_rows(tmp_path, runner):
    values = np.arange(30 * 4, dtype=np.float32).reshape(30, 4) / 100
    np.savetxt(tmp_path / "all.csv", values, delimiter=",", fmt="%.9g")
    output = tmp_path / "out.keras"
    result = runner.invoke(
        cli,
        [
            "assign",
            str(FIXTURES / "k3_functional.keras"),
            "-l",
            "positions",
            "--from",
            str(tmp_path / "all.csv"),
            "-o",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    with open_model(output) as model:
        table = find_table(model, "positions")
        np.testing.assert_array_equal(read_rows(model, table, np.arange(30)), values)


def test_npz_key(tmp_path, runner):
    np.savez(tmp_path / "v.npz", a=np.ones((1, 8), np.float32), b=np.full((1, 8), 2, np.float32))
    output = tmp_path / "out.keras"
    args = [
        "assign",
        str(FIXTURES / "k3_functional.keras"),
        "-l",
        "words",
        "--rows",
        "5",
        "--from",
        str(tmp_path / "v.npz"),
        "-o",
        str(output),
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert "holds 2 arrays; choose one with --key: a, b" in result.output
    assert runner.invoke(cli, args + ["--key", "b"]).exit_code == 0
    with open_model(output) as model:
        assert (read_rows(model, find_table(model, "words"), np.array([5])) == 2).all()
