"""SavedModel folders and TF checkpoints, read through TensorFlow's checkpoint reader and
written with its SaveV2 op. TensorFlow itself is the oracle: the edited copies are read back
with `tf.train.load_checkpoint`, served with `tf.saved_model.load` and fingerprinted."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import FIXTURES, MANIFEST

from embcli.cli import cli
from embcli.errors import MissingDependency
from embcli.formats import tensorflow as tf_format
from embcli.formats.tensorflow import writer as tf_writer
from embcli.model import find_table, list_tables, open_model, read_rows

try:
    tf = tf_format.import_tensorflow()
except MissingDependency:
    tf = None

needs_tf = pytest.mark.skipif(tf is None, reason="TensorFlow is not installed")
pytestmark = pytest.mark.tensorflow

TF_FIXTURES = ["tfk_savedmodel", "tfk_ckpt/ckpt", "k3_export"]
OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"


def expected_values(name):
    return dict(np.load(FIXTURES / MANIFEST[name]["expected"]))


def checkpoint_tensors(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


def assert_only_rows_changed(before, after, changed):
    """`changed` maps key -> (rows, values); every other tensor is identical."""
    assert set(before) == set(after)
    for key, old in before.items():
        expected = np.array(old)
        if key in changed:
            rows, values = changed[key]
            expected[rows] = values
        if key == OBJECT_GRAPH:
            assert after[key] == old
        else:
            np.testing.assert_array_equal(after[key], expected, err_msg=key)


def fingerprint_fields(data):
    from tensorflow.core.protobuf import fingerprint_pb2

    fingerprint = fingerprint_pb2.FingerprintDef()
    fingerprint.ParseFromString(data)
    return (
        fingerprint.saved_model_checksum,
        fingerprint.graph_def_program_hash,
        fingerprint.signature_def_hash,
        fingerprint.saved_object_graph_hash,
        fingerprint.checkpoint_hash,
    )


def assert_fingerprint_is_current(folder):
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    stored = tf.saved_model.experimental.read_fingerprint(str(folder))
    fresh = fingerprint_fields(fingerprinting.CreateFingerprintDef(str(folder)))
    assert (
        stored.saved_model_checksum,
        stored.graph_def_program_hash,
        stored.signature_def_hash,
        stored.saved_object_graph_hash,
        stored.checkpoint_hash,
    ) == fresh
    return stored


def invoke(runner, *args):
    result = runner.invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@needs_tf
@pytest.mark.parametrize("name", TF_FIXTURES)
def test_layers_match_the_manifest(runner, name):
    listed = json.loads(invoke(runner, "layers", FIXTURES / name, "--json").output)
    wanted = MANIFEST[name]["tables"]
    assert sorted((t["name"], t["shape"], t["dtype"]) for t in listed) == sorted(
        (t["name"], t["shape"], t["dtype"]) for t in wanted
    )
    classes = {t["name"]: t["class"] for t in listed}
    assert classes == {t["name"]: t["class"] for t in wanted}


@needs_tf
@pytest.mark.parametrize("name", TF_FIXTURES)
def test_rows_and_export_match_keras(runner, tmp_path, name):
    expected = expected_values(name)
    with open_model(FIXTURES / name) as model:
        for wanted in MANIFEST[name]["tables"]:
            table = find_table(model, wanted["name"])
            oracle = expected["/".join(wanted["path"])]
            np.testing.assert_array_equal(read_rows(model, table, np.arange(table.rows)), oracle)
            out = tmp_path / f"{wanted['name']}.npy"
            invoke(runner, "export", FIXTURES / name, "-l", wanted["name"], "-o", out)
            exported = np.load(out)
            assert exported.dtype == oracle.dtype
            np.testing.assert_array_equal(exported, oracle)
    result = invoke(
        runner, "rows", FIXTURES / name, "-l", MANIFEST[name]["tables"][0]["name"], "-1", "--json"
    )
    last = json.loads(result.output)["rows"][0]
    assert last["index"] == MANIFEST[name]["tables"][0]["shape"][0] - 1


@needs_tf
def test_names_come_from_keras_metadata_and_keys_are_accepted():
    with open_model(FIXTURES / "tfk_savedmodel") as model:
        inner = find_table(model, "inner_emb")
        assert (inner.qualified, inner.class_name) == ("tower/inner_emb", "Embedding")
        assert find_table(model, "tower/inner_emb") == inner
        assert find_table(model, inner.weight) == inner
        head = find_table(model, "head")
        assert (head.class_name, head.is_embedding) == ("Dense", False)
    with open_model(FIXTURES / "tfk_ckpt/ckpt") as model:
        key = "layer_with_weights-1/layer_with_weights-0/embeddings/.ATTRIBUTES/VARIABLE_VALUE"
        assert find_table(model, key).name == "inner_emb"
        assert (
            find_table(model, key.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")).name == "inner_emb"
        )


@needs_tf
@pytest.mark.parametrize(
    "path",
    ["tfk_ckpt", "tfk_ckpt/ckpt.index", "tfk_ckpt/checkpoint", "tfk_ckpt/ckpt.data-00000-of-00001"],
)
def test_a_checkpoint_is_named_by_any_of_its_files(path):
    with open_model(FIXTURES / path) as model:
        assert [t.name for t in list_tables(model)] == ["word_emb", "inner_emb"]


@needs_tf
def test_optimizer_slots_are_offered_not_listed(runner):
    listed = json.loads(
        invoke(runner, "layers", FIXTURES / "tfk_ckpt/ckpt", "--all", "--json").output
    )
    assert not [t for t in listed if t["weight"].startswith("optimizer/")]
    with open_model(FIXTURES / "tfk_ckpt/ckpt") as model:
        slots = model.optimizer_slots(find_table(model, "word_emb"))
    assert slots == [f"optimizer/_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE" for i in (1, 2)]
    reader = tf.train.load_checkpoint(str(FIXTURES / "tfk_ckpt/ckpt"))
    assert all(reader.get_variable_to_shape_map()[s] == [40, 6] for s in slots)


@pytest.fixture(scope="session")
def legacy_slot_checkpoint(tmp_path_factory):
    """A tf_keras checkpoint whose legacy Adam files its slots under `.OPTIMIZER_SLOT`."""
    if tf is None:
        pytest.skip("TensorFlow is not installed")
    keras = pytest.importorskip("tf_keras")
    model = keras.Sequential(
        [
            keras.Input((3,), dtype="int32"),
            keras.layers.Embedding(10, 4, name="e"),
            keras.layers.Flatten(),
            keras.layers.Dense(1, name="d"),
        ]
    )
    model.compile(keras.optimizers.legacy.Adam(), "mse")
    model.fit(np.array([[1, 2, 3], [4, 5, 6]]), np.ones((2, 1)), verbose=0)
    prefix = tmp_path_factory.mktemp("legacy") / "ckpt"
    model.save_weights(str(prefix))
    return prefix


@pytest.mark.keras
@needs_tf
def test_legacy_optimizer_slots(runner, legacy_slot_checkpoint, tmp_path):
    with open_model(legacy_slot_checkpoint) as model:
        assert [t.name for t in list_tables(model, all_weights=True)] == ["e", "d"]
        table = find_table(model, None)
        slots = model.optimizer_slots(table)
    assert slots == [
        f"layer_with_weights-0/embeddings/.OPTIMIZER_SLOT/optimizer/{s}/.ATTRIBUTES/VARIABLE_VALUE"
        for s in ("m", "v")
    ]
    out = tmp_path / "reset"
    invoke(
        runner,
        "assign",
        legacy_slot_checkpoint,
        "--fill",
        "zeros",
        "--rows",
        "1,2",
        "--reset-optimizer-rows",
        "-o",
        out,
    )
    before, after = checkpoint_tensors(legacy_slot_checkpoint), checkpoint_tensors(out)
    zeros = np.zeros((2, 4), np.float32)
    assert_only_rows_changed(before, after, {k: ([1, 2], zeros) for k in [table.weight, *slots]})


@needs_tf
def test_savedmodel_assign_serves_the_new_rows(runner, tmp_path):
    source = FIXTURES / "tfk_savedmodel"
    vectors = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    np.save(tmp_path / "v.npy", vectors)
    out = tmp_path / "edited"
    invoke(
        runner,
        "assign",
        source,
        "-l",
        "word_emb",
        "--from",
        tmp_path / "v.npy",
        "--rows",
        "0,7,39",
        "-o",
        out,
    )
    with open_model(source) as model:
        keys = {n: find_table(model, n).weight for n in ("word_emb", "inner_emb", "head")}
    before = checkpoint_tensors(source / "variables/variables")
    after = checkpoint_tensors(out / "variables/variables")
    assert_only_rows_changed(before, after, {keys["word_emb"]: ([0, 7, 39], vectors)})
    for name in ("saved_model.pb", "keras_metadata.pb"):
        assert (out / name).read_bytes() == (source / name).read_bytes()

    def forward(values, words, towers):
        pooled = np.concatenate(
            [values[keys["word_emb"]][words].mean(1), values[keys["inner_emb"]][towers].mean(1)],
            axis=1,
        )
        return (
            pooled @ values["layer_with_weights-2/kernel/.ATTRIBUTES/VARIABLE_VALUE"]
            + values["layer_with_weights-2/bias/.ATTRIBUTES/VARIABLE_VALUE"]
        )

    words = np.array([[0, 7, 39, 1, 2], [7, 7, 0, 39, 5]], np.int32)
    towers = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], np.int32)
    restored = tf.saved_model.load(str(out))
    served = restored.signatures["serving_default"](
        word_ids=tf.constant(words), tower_ids=tf.constant(towers)
    )
    got = next(iter(served.values())).numpy()
    np.testing.assert_allclose(got, forward(after, words, towers), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, forward(before, words, towers), rtol=1e-5, atol=1e-6)

    stored = assert_fingerprint_is_current(out)
    original = tf.saved_model.experimental.read_fingerprint(str(source))
    assert stored.checkpoint_hash != original.checkpoint_hash
    assert stored.saved_model_checksum == original.saved_model_checksum


@needs_tf
def test_export_keeps_both_copies_of_a_variable_in_step(runner, tmp_path):
    source = FIXTURES / "k3_export"
    out = tmp_path / "edited"
    vectors = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.save(tmp_path / "v.npy", vectors)
    with open_model(source) as model:
        table = find_table(model, "words")
    assert table.weight == "variables/0/.ATTRIBUTES/VARIABLE_VALUE"
    copy = "_all_variables/0/.ATTRIBUTES/VARIABLE_VALUE"
    assert copy in table.aliases
    invoke(
        runner,
        "assign",
        source,
        "-l",
        copy,
        "--from",
        tmp_path / "v.npy",
        "--rows",
        "3,4",
        "-o",
        out,
    )
    before = checkpoint_tensors(source / "variables/variables")
    after = checkpoint_tensors(out / "variables/variables")
    assert_only_rows_changed(before, after, {k: ([3, 4], vectors) for k in (table.weight, copy)})

    ids = np.array([[3, 4, 3, 4, 3]], np.int32)
    restored = tf.saved_model.load(str(out))
    served = restored.serve(tf.constant(ids)).numpy()
    kernel, bias = (
        after["variables/1/.ATTRIBUTES/VARIABLE_VALUE"],
        after["variables/2/.ATTRIBUTES/VARIABLE_VALUE"],
    )
    np.testing.assert_allclose(
        served[0], vectors[[0, 1, 0, 1, 0]].mean(0) @ kernel + bias, rtol=1e-5
    )
    assert_fingerprint_is_current(out)
    with open_model(out) as model:
        assert [t.name for t in list_tables(model)] == ["words"]


@pytest.mark.keras
@needs_tf
def test_checkpoint_assign_loads_in_tf_keras(runner, tmp_path):
    keras = pytest.importorskip("tf_keras")
    sys.path.insert(0, str(FIXTURES))
    try:
        from make_fixtures import build_tfk
    finally:
        sys.path.remove(str(FIXTURES))
    source = FIXTURES / "tfk_ckpt/ckpt"
    out = tmp_path / "new" / "weights"
    out.parent.mkdir()
    invoke(
        runner, "assign", source, "-l", "inner_emb", "--fill", "zeros", "--rows", "0,19", "-o", out
    )
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "checkpoint",
        "weights.data-00000-of-00001",
        "weights.index",
    ]
    assert tf.train.latest_checkpoint(str(out.parent)) == str(out)
    key = "layer_with_weights-1/layer_with_weights-0/embeddings/.ATTRIBUTES/VARIABLE_VALUE"
    before, after = checkpoint_tensors(source), checkpoint_tensors(out)
    assert_only_rows_changed(before, after, {key: ([0, 19], np.zeros((2, 4), np.float32))})

    model = build_tfk(keras, fit=False)
    model.load_weights(str(out)).expect_partial()
    np.testing.assert_array_equal(
        model.get_layer("tower").get_layer("inner_emb").get_weights()[0], after[key]
    )
    np.testing.assert_array_equal(
        model.get_layer("word_emb").get_weights()[0], expected_values("tfk_ckpt/ckpt")["word_emb"]
    )


@needs_tf
def test_in_place_checkpoint_and_savedmodel(runner, tmp_path):
    shutil.copytree(FIXTURES / "tfk_ckpt", tmp_path / "ckpt")
    shutil.copytree(FIXTURES / "tfk_savedmodel", tmp_path / "sm")
    prefix = tmp_path / "ckpt" / "ckpt"
    before = checkpoint_tensors(prefix)
    state = (prefix.parent / "checkpoint").read_bytes()
    invoke(
        runner, "assign", prefix, "-l", "word_emb", "--fill", "zeros", "--rows", "5", "--in-place"
    )
    key = "layer_with_weights-0/embeddings/.ATTRIBUTES/VARIABLE_VALUE"
    assert_only_rows_changed(before, checkpoint_tensors(prefix), {key: ([5], np.zeros((1, 6)))})
    assert (prefix.parent / "checkpoint").read_bytes() == state
    assert sorted(p.name for p in prefix.parent.iterdir()) == MANIFEST["tfk_ckpt/ckpt"]["files"]

    folder = tmp_path / "sm"
    before = checkpoint_tensors(folder / "variables/variables")
    invoke(
        runner, "assign", folder, "-l", "inner_emb", "--fill", "zeros", "--rows", "2", "--in-place"
    )
    assert_only_rows_changed(
        before,
        checkpoint_tensors(folder / "variables/variables"),
        {"variables/1/.ATTRIBUTES/VARIABLE_VALUE": ([2], np.zeros((1, 4)))},
    )
    assert_fingerprint_is_current(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "sm"]


@needs_tf
def test_large_checkpoints_are_written_in_bounded_batches(runner, tmp_path, monkeypatch):
    shutil.copytree(FIXTURES / "tfk_ckpt", tmp_path / "ckpt")
    prefix = tmp_path / "ckpt" / "ckpt"
    before = checkpoint_tensors(prefix)
    monkeypatch.setattr(tf_writer, "WRITE_BATCH_BYTES", 512)
    invoke(
        runner, "assign", prefix, "-l", "word_emb", "--fill", "zeros", "--rows", "0", "--in-place"
    )
    shards = sorted(p.name for p in prefix.parent.glob("ckpt.data-*"))
    assert len(shards) > 1 and all(s.endswith(f"-of-{len(shards):05d}") for s in shards)
    key = "layer_with_weights-0/embeddings/.ATTRIBUTES/VARIABLE_VALUE"
    zero = {key: ([0], np.zeros((1, 6)))}
    assert_only_rows_changed(before, checkpoint_tensors(prefix), zero)
    monkeypatch.undo()
    invoke(
        runner, "assign", prefix, "-l", "word_emb", "--fill", "zeros", "--rows", "1", "--in-place"
    )
    assert sorted(p.name for p in prefix.parent.glob("ckpt.data-*")) == ["ckpt.data-00000-of-00001"]
    assert_only_rows_changed(before, checkpoint_tensors(prefix), {key: ([0, 1], np.zeros((2, 6)))})


@needs_tf
def test_existing_outputs_are_refused_unless_forced(runner, tmp_path):
    out = tmp_path / "copy"
    args = [
        "assign",
        FIXTURES / "tfk_ckpt/ckpt",
        "-l",
        "word_emb",
        "--fill",
        "zeros",
        "--rows",
        "0",
        "-o",
        out,
    ]
    invoke(runner, *args)
    result = runner.invoke(cli, [str(a) for a in args])
    assert result.exit_code == 1
    assert "exists; use --force" in result.output
    invoke(runner, *args, "--force")


@needs_tf
def test_damaged_or_escaping_checkpoints_are_refused(runner, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "tfk_ckpt", folder)
    (folder / "checkpoint").write_text('model_checkpoint_path: "../../elsewhere/ckpt"\n')
    result = runner.invoke(cli, ["layers", str(folder)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "outside its folder" in result.output
    data = folder / "ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])
    result = runner.invoke(cli, ["rows", str(folder / "ckpt"), "-l", "word_emb", "0"])
    assert result.exit_code == 1 and result.output.startswith("Error: ")
    sm = tmp_path / "sm"
    shutil.copytree(FIXTURES / "tfk_savedmodel", sm)
    (sm / "assets").mkdir(exist_ok=True)
    (sm / "assets" / "link").symlink_to("/etc/passwd")
    result = runner.invoke(cli, ["layers", str(sm)])
    assert result.exit_code == 1 and "symbolic links are refused" in result.output


@pytest.fixture(scope="session")
def plain_checkpoint(tmp_path_factory):
    """A `tf.train.Checkpoint` of bare variables: bfloat16, float16, a string and a table
    whose variable name tells its layer."""
    if tf is None:
        pytest.skip("TensorFlow is not installed")
    rng = np.random.default_rng(1)
    module = tf.Module()
    module.embeddings = tf.Variable(
        rng.normal(size=(7, 3)).astype(np.float32), name="tok/embeddings"
    )
    checkpoint = tf.train.Checkpoint(
        wide=tf.Variable(tf.constant(rng.normal(size=(6, 3)), dtype=tf.bfloat16)),
        half=tf.Variable(rng.normal(size=(4, 2)).astype(np.float16)),
        words=tf.Variable(["a", "b"]),
        step=tf.Variable(3, dtype=tf.int64),
        model=module,
    )
    prefix = tmp_path_factory.mktemp("plain") / "ck"
    checkpoint.write(str(prefix))
    return prefix


@needs_tf
def test_bare_variables_are_named_by_key_and_keep_their_dtypes(runner, plain_checkpoint, tmp_path):
    with open_model(plain_checkpoint) as model:
        assert [
            (t.name, t.dtype, t.is_embedding) for t in list_tables(model, all_weights=True)
        ] == [
            ("half", "float16", False),
            ("wide", "bfloat16", False),
            ("tok", "float32", True),
        ]
    before = checkpoint_tensors(plain_checkpoint)
    values = np.array([[1.5, -2.25, 3.0]], np.float32)
    np.save(tmp_path / "v.npy", values)
    out = tmp_path / "edited"
    invoke(
        runner,
        "assign",
        plain_checkpoint,
        "-l",
        "wide",
        "--from",
        tmp_path / "v.npy",
        "--rows",
        "2",
        "-o",
        out,
    )
    after = checkpoint_tensors(out)
    key = "wide/.ATTRIBUTES/VARIABLE_VALUE"
    assert after[key].dtype == before[key].dtype
    assert_only_rows_changed(before, after, {key: ([2], values.astype(before[key].dtype))})
    assert list(after["words/.ATTRIBUTES/VARIABLE_VALUE"]) == [b"a", b"b"]
    assert not (tmp_path / "checkpoint").exists()


INT8_EXPORT = r"""
import sys
import numpy as np
import keras
ids = keras.Input((3,), dtype="int32")
table = keras.layers.Embedding(12, 4, name="words")
model = keras.Model(ids, keras.layers.GlobalAveragePooling1D()(table(ids)))
model.quantize("int8")
model.export(sys.argv[1], verbose=False)
np.save(sys.argv[1] + ".npy", np.asarray(table(np.arange(12))))
"""


@pytest.fixture(scope="session")
def int8_export(tmp_path_factory):
    """A Keras 3 `model.quantize("int8")` export, and the table as Keras computes it."""
    if tf is None:
        pytest.skip("TensorFlow is not installed")
    pytest.importorskip("keras", minversion="3")
    folder = tmp_path_factory.mktemp("int8") / "export"
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run(
        [sys.executable, "-W", "ignore", "-c", INT8_EXPORT, str(folder)],
        check=True,
        env=env,
        capture_output=True,
    )
    return folder, np.load(f"{folder}.npy")


@pytest.mark.keras
@needs_tf
def test_int8_export_is_dequantized_and_requantized(runner, int8_export, tmp_path):
    folder, computed = int8_export
    with open_model(folder) as model:
        table = find_table(model, "words")
        assert (table.dtype, table.quantized) == ("int8", "int8")
        np.testing.assert_allclose(read_rows(model, table, np.arange(12)), computed, rtol=1e-6)
    values = np.array([[0.5, -1.0, 0.25, 2.0]], np.float32)
    np.save(tmp_path / "v.npy", values)
    out = tmp_path / "edited"
    invoke(runner, "assign", folder, "--from", tmp_path / "v.npy", "--rows", "1", "-o", out)
    after = checkpoint_tensors(out / "variables/variables")
    keys = [k for k, v in after.items() if getattr(v, "shape", None) == (12, 4)]
    scales = [k for k, v in after.items() if getattr(v, "shape", None) == (12,)]
    assert len(keys) == len(scales) == 2
    for key in keys:
        np.testing.assert_array_equal(after[key][1], [32, -64, 16, 127])
    for key in scales:
        np.testing.assert_allclose(after[key][1], 63.5, rtol=1e-6)
    restored = tf.saved_model.load(str(out))
    served = restored.serve(tf.constant([[1, 1, 1]], tf.int32)).numpy()
    np.testing.assert_allclose(served[0], [32 / 63.5, -64 / 63.5, 16 / 63.5, 2.0], rtol=1e-6)
    assert_fingerprint_is_current(out)
