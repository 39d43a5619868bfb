"""Whole-tensor edits of TF checkpoints through the library (`plan_edit` with `NewWeight`),
as `resize` makes them: TensorFlow reads the new shapes and values back, every other tensor
is bit-identical, and tf_keras loads the result into a model built with the new size.
A SavedModel refuses every edit but new rows."""

import numpy as np
import pytest
from conftest import FIXTURES

from embcli import atomic
from embcli.edit import verify_file
from embcli.errors import BadArgument, MissingDependency, UnsupportedEdit
from embcli.formats.base import Edit, NewWeight
from embcli.formats.tensorflow import import_tensorflow
from embcli.formats.tensorflow import writer as tf_writer
from embcli.model import find_table, open_model

try:
    tf = import_tensorflow()
except MissingDependency:
    tf = None

pytestmark = [
    pytest.mark.tensorflow,
    pytest.mark.skipif(tf is None, reason="TensorFlow is not installed"),
]

SOURCE = FIXTURES / "tfk_ckpt" / "ckpt"
WORDS = "layer_with_weights-0/embeddings/.ATTRIBUTES/VARIABLE_VALUE"
WORD_SLOTS = [f"optimizer/_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE" for i in (1, 2)]
OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
OLD_ROWS, NEW_ROWS, DIM = 40, 47, 6


def checkpoint_tensors(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


def streamed(value, block_rows):
    """A NewWeight that yields `value` in blocks of `block_rows` rows."""

    def blocks():
        for start in range(0, len(value), block_rows):
            yield value[start : start + block_rows]

    return NewWeight(value.shape, value.dtype, blocks)


def grown(old, new_rows, fill):
    value = np.full((new_rows, old.shape[1]), fill, dtype=old.dtype)
    value[: min(len(old), new_rows)] = old[:new_rows]
    return value


def write(model, output, edit, in_place=False):
    plan = model.plan_edit(output, edit, in_place)
    atomic.execute(plan, verify_file)


def build_tfk(keras, word_rows):
    """The fixture's tf_keras model (fixtures/make_fixtures.py `build_tfk`), with
    `word_rows` rows in `word_emb`."""
    keras.backend.clear_session()
    layers = keras.layers
    tower = keras.Sequential(
        [
            keras.Input(shape=(4,), dtype="int32"),
            layers.Embedding(20, 4, name="inner_emb"),
            layers.GlobalAveragePooling1D(name="tower_pool"),
        ],
        name="tower",
    )
    words = keras.Input(shape=(5,), dtype="int32", name="word_ids")
    other = keras.Input(shape=(4,), dtype="int32", name="tower_ids")
    w = layers.GlobalAveragePooling1D(name="pool_words")(
        layers.Embedding(word_rows, 6, name="word_emb")(words)
    )
    x = layers.Concatenate(name="concat")([w, tower(other)])
    out = layers.Dense(2, name="head")(x)
    model = keras.Model([words, other], out, name="tfk_model")
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    return model


@pytest.fixture
def resized(tmp_path):
    """The fixture checkpoint with `word_emb` and its two Adam slots grown to 47 rows."""
    before = checkpoint_tensors(SOURCE)
    new = {WORDS: grown(before[WORDS], NEW_ROWS, 0.5)}
    new.update({slot: grown(before[slot], NEW_ROWS, 0.0) for slot in WORD_SLOTS})
    out = tmp_path / "new" / "weights"
    out.parent.mkdir()
    with open_model(SOURCE) as model:
        edit = Edit(weights={key: streamed(value, 10) for key, value in new.items()})
        write(model, out, edit)
    return before, new, out


def test_resized_tensors_have_the_new_shapes_and_the_rest_is_identical(resized):
    before, new, out = resized
    after = checkpoint_tensors(out)
    assert set(after) == set(before)
    for key, old in before.items():
        if key in new:
            assert after[key].shape == (NEW_ROWS, DIM)
            np.testing.assert_array_equal(after[key], new[key], err_msg=key)
            np.testing.assert_array_equal(after[key][:OLD_ROWS], old, err_msg=key)
        elif key == OBJECT_GRAPH:
            assert after[key] == old
        else:
            assert after[key].dtype == old.dtype and after[key].tobytes() == old.tobytes(), key
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "checkpoint",
        "weights.data-00000-of-00001",
        "weights.index",
    ]
    with open_model(out) as model:
        table = find_table(model, "word_emb")
        assert table.shape == (NEW_ROWS, DIM)
        assert model.optimizer_slots(table) == WORD_SLOTS


@pytest.mark.keras
def test_tf_keras_loads_the_resized_checkpoint_with_its_optimizer_state(resized):
    keras = pytest.importorskip("tf_keras")
    _, new, out = resized
    model = build_tfk(keras, NEW_ROWS)
    status = model.load_weights(str(out))
    table = model.get_layer("word_emb")
    np.testing.assert_array_equal(table.get_weights()[0], new[WORDS])
    model.optimizer.build(model.trainable_variables)
    status.assert_existing_objects_matched()
    for kind, slot in zip("mv", WORD_SLOTS, strict=True):
        [variable] = [
            v for v in model.optimizer.variables if v.name.endswith(f"{kind}/word_emb/embeddings:0")
        ]
        np.testing.assert_array_equal(variable.numpy(), new[slot])
    with pytest.raises(ValueError, match=r"shape \(47, 6\) when attempting to restore"):
        build_tfk(keras, OLD_ROWS).load_weights(str(out))


@pytest.mark.parametrize("batch_bytes", [512, tf_writer.WRITE_BATCH_BYTES])
def test_shrinking_in_place_in_batches(tmp_path, monkeypatch, batch_bytes):
    monkeypatch.setattr(tf_writer, "WRITE_BATCH_BYTES", batch_bytes)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for source in SOURCE.parent.iterdir():
        (folder / source.name).write_bytes(source.read_bytes())
    prefix = folder / "ckpt"
    before = checkpoint_tensors(prefix)
    smaller = before[WORDS][:25].copy()
    with open_model(prefix) as model:
        rows = (np.array([0, 3]), np.zeros((2, 4), np.float32))
        inner = "layer_with_weights-1/layer_with_weights-0/embeddings/.ATTRIBUTES/VARIABLE_VALUE"
        edit = Edit(rows={inner: rows}, weights={WORDS: streamed(smaller, 7)})
        write(model, prefix, edit, in_place=True)
    after = checkpoint_tensors(prefix)
    np.testing.assert_array_equal(after[WORDS], smaller)
    expected_inner = before[inner].copy()
    expected_inner[[0, 3]] = 0
    np.testing.assert_array_equal(after[inner], expected_inner)
    shards = sorted(p.name for p in folder.glob("ckpt.data-*"))
    assert all(s.endswith(f"-of-{len(shards):05d}") for s in shards)
    assert (len(shards) > 1) == (batch_bytes == 512)


def test_savedmodels_take_new_rows_only(tmp_path):
    value = np.zeros((41, 6), np.float32)
    with open_model(FIXTURES / "tfk_savedmodel") as model:
        table = find_table(model, "word_emb")
        for edit in (
            Edit(weights={table.weight: streamed(value, 41)}),
            Edit(config={"class_name": "Functional", "config": {}}),
            Edit(assets={"vocab.txt": b"a\n"}),
        ):
            with pytest.raises(UnsupportedEdit, match="SavedModel's graph fixes its shapes"):
                model.plan_edit(tmp_path / "out", edit, False)
        rows = {table.weight: (np.array([1]), np.ones((1, 6), np.float32))}
        write(model, tmp_path / "out", Edit(rows=rows))
    after = checkpoint_tensors(tmp_path / "out" / "variables" / "variables")
    np.testing.assert_array_equal(after[table.weight][1], np.ones(6))


def test_checkpoint_edits_that_cannot_be_made_are_refused(tmp_path):
    out = tmp_path / "out"
    with open_model(SOURCE) as model:
        with pytest.raises(UnsupportedEdit, match="no config, assets or side files"):
            model.plan_edit(out, Edit(config={"config": {}}), False)
        new = streamed(np.zeros((3, 2), np.float32), 3)
        with pytest.raises(UnsupportedEdit, match="cannot add one"):
            model.plan_edit(out, Edit(weights={"brand/new": new}), False)
        with pytest.raises(BadArgument, match="float16"):
            half = streamed(np.zeros((41, 6), np.float16), 41)
            model.plan_edit(out, Edit(weights={WORDS: half}), False)
        both = Edit(
            rows={WORDS: (np.array([0]), np.zeros((1, 6), np.float32))},
            weights={WORDS: streamed(np.zeros((41, 6), np.float32), 41)},
        )
        with pytest.raises(BadArgument, match="not both"):
            model.plan_edit(out, both, False)

        def short_blocks():
            yield np.zeros((5, 6), np.float32)

        short = NewWeight((41, 6), np.dtype(np.float32), short_blocks)
        plan = model.plan_edit(out, Edit(weights={WORDS: short}), False)
        with pytest.raises(BadArgument, match="5 of 41 rows"):
            atomic.execute(plan, verify_file)
    assert not out.exists()
    assert not list(tmp_path.iterdir())
