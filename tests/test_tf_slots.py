"""`--reset-optimizer-rows` on the checkpoint layouts TF and Keras write today, whose slots
are told by their names: tf_keras's new optimizers (`Adam/m/<variable>`, under
`optimizer/_variables/N`) and Keras 3's (`adam/<variable path>_momentum`) in a
`tf.train.Checkpoint` of the model alone or of the model and its optimizer. TensorFlow
reads the results back, and Keras 3 restores them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import FIXTURES

from embcli.cli import cli
from embcli.errors import MissingDependency
from embcli.formats.tensorflow import import_tensorflow
from embcli.model import find_table, list_tables, open_model

try:
    tf = import_tensorflow()
except MissingDependency:
    tf = None

pytestmark = [
    pytest.mark.tensorflow,
    pytest.mark.skipif(tf is None, reason="TensorFlow is not installed"),
]

OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
ROWS = [1, 2, 29]


def checkpoint_tensors(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


def variable_names(prefix):
    """Each checkpoint key's variable name, as the checkpoint's object graph records it."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(str(prefix)).get_tensor(OBJECT_GRAPH))
    return {a.checkpoint_key: a.full_name for node in graph.nodes for a in node.attributes}


def assert_only_rows_zeroed(before, after, keys, rows):
    assert set(before) == set(after)
    for key, old in before.items():
        expected = np.array(old)
        if key in keys:
            expected[rows] = 0
        if key == OBJECT_GRAPH:
            assert after[key] == old
        else:
            assert after[key].tobytes() == expected.tobytes(), key


def reset(runner, source, out, layer, rows):
    spec = ",".join(str(r) for r in rows)
    args = ["assign", str(source), "-l", layer, "--fill", "zeros", "--rows", spec]
    result = runner.invoke(cli, [*args, "--reset-optimizer-rows", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return result


def test_tf_keras_new_optimizer_slots_are_reset(runner, tmp_path):
    source = FIXTURES / "tfk_ckpt" / "ckpt"
    out = tmp_path / "reset"
    result = reset(runner, source, out, "word_emb", ROWS[:2])
    assert result.stderr == f"assigned 2 row(s) of word_emb and 2 optimizer slot(s); wrote {out}\n"
    with open_model(source) as model:
        slots = model.optimizer_slots(find_table(model, "word_emb"))
    assert [variable_names(source)[key] for key in slots] == [
        "Adam/m/word_emb/embeddings",
        "Adam/v/word_emb/embeddings",
    ]
    assert all(key.startswith("optimizer/_variables/") for key in slots)
    table = "layer_with_weights-0/embeddings/.ATTRIBUTES/VARIABLE_VALUE"
    assert_only_rows_zeroed(
        checkpoint_tensors(source), checkpoint_tensors(out), [table, *slots], ROWS[:2]
    )


@pytest.mark.keras
def test_tf_keras_model_in_a_tf_train_checkpoint(runner, tmp_path):
    keras = pytest.importorskip("tf_keras")
    ids = keras.Input((3,), dtype="int32")
    table = keras.layers.Embedding(30, 4, name="e")
    model = keras.Model(ids, keras.layers.Dense(1, name="d")(keras.layers.Flatten()(table(ids))))
    model.compile(keras.optimizers.Adam(), "mse")
    model.fit(np.array([[1, 2, 29], [2, 5, 7]]), np.ones((2, 1)), verbose=0)
    prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(str(tmp_path / "ck"))
    with open_model(prefix) as opened:
        tables = list_tables(opened, all_weights=True)
        assert [(t.name, t.class_name, t.weight) for t in tables] == [
            ("e", "Embedding", "model/layer_with_weights-0/embeddings/.ATTRIBUTES/VARIABLE_VALUE"),
            ("d", None, "model/layer_with_weights-1/kernel/.ATTRIBUTES/VARIABLE_VALUE"),
        ]
        slots = opened.optimizer_slots(tables[0])
    names = variable_names(prefix)
    assert [names[key] for key in slots] == ["Adam/m/e/embeddings", "Adam/v/e/embeddings"]
    before = checkpoint_tensors(prefix)
    assert all(np.any(before[slot][ROWS] != 0, axis=1).all() for slot in slots)
    out = tmp_path / "reset"
    reset(runner, prefix, out, "e", ROWS)
    assert_only_rows_zeroed(before, checkpoint_tensors(out), [tables[0].weight, *slots], ROWS)


KERAS3_MODEL = r"""
import json
import sys
import numpy as np
import keras
import tensorflow as tf

def build():
    keras.utils.set_random_seed(3)
    ids = keras.Input((5,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(30, 4, name="words")(ids))
    model = keras.Model(ids, keras.layers.Dense(2, name="head")(pooled))
    model.compile(keras.optimizers.Adam(), "mse")
    return model

def objects(model, layout):
    if layout == "model":
        return {"model": model}
    return {"model": model, "optimizer": model.optimizer}

def slots(model):
    return {v.path: np.asarray(v).tolist() for v in model.optimizer.variables if "words" in v.path}

command, layout, prefix = sys.argv[1:]
model = build()
if command == "write":
    rng = np.random.default_rng(0)
    model.fit(rng.integers(0, 30, (16, 5)), rng.normal(size=(16, 2)), verbose=0)
    tf.train.Checkpoint(**objects(model, layout)).write(prefix)
else:
    model.optimizer.build(model.trainable_variables)
    tf.train.Checkpoint(**objects(model, layout)).read(prefix).assert_existing_objects_matched()
    table = model.get_layer("words").embeddings
    print(json.dumps({"table": np.asarray(table).tolist(), "slots": slots(model)}))
"""


def keras3(command, layout, prefix):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", KERAS3_MODEL, command, layout, str(prefix)],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout) if command == "read" else None


@pytest.fixture(scope="module", params=["model", "model_and_optimizer"])
def keras3_checkpoint(request, tmp_path_factory):
    """A Keras 3 model trained with Adam, saved by `tf.train.Checkpoint`."""
    pytest.importorskip("keras", minversion="3")
    prefix = tmp_path_factory.mktemp(request.param) / "ckpt"
    keras3("write", request.param, prefix)
    return request.param, prefix


@pytest.mark.keras
def test_keras3_checkpoint_tables_are_named_by_their_variables(keras3_checkpoint):
    _, prefix = keras3_checkpoint
    with open_model(prefix) as model:
        tables = list_tables(model, all_weights=True)
        assert [(t.name, t.class_name, t.shape, t.is_embedding) for t in tables] == [
            ("words", "Embedding", (30, 4), True),
            ("head", None, (4, 2), False),
        ]
        words = find_table(model, None)
        slots = model.optimizer_slots(words)
    reader = tf.train.load_checkpoint(str(prefix))
    assert [reader.get_variable_to_shape_map()[key] for key in slots] == [[30, 4], [30, 4]]
    assert not any(t.weight in slots for t in tables)


@pytest.mark.keras
def test_keras3_checkpoint_slots_are_reset_and_keras_restores_them(
    runner, keras3_checkpoint, tmp_path
):
    layout, prefix = keras3_checkpoint
    with open_model(prefix) as model:
        words = find_table(model, "words")
        slots = model.optimizer_slots(words)
    out = tmp_path / "reset"
    reset(runner, prefix, out, "words", ROWS)
    before, after = checkpoint_tensors(prefix), checkpoint_tensors(out)
    assert_only_rows_zeroed(before, after, [words.weight, *slots], ROWS)
    assert not np.all(before[slots[0]][ROWS] == 0)

    restored = keras3("read", layout, out)
    np.testing.assert_array_equal(np.array(restored["table"], np.float32), after[words.weight])
    names = variable_names(out)
    assert sorted(names[key] for key in slots) == [
        "adam/words_embeddings_momentum",
        "adam/words_embeddings_velocity",
    ]
    for key in slots:
        np.testing.assert_array_equal(
            np.array(restored["slots"][names[key]], np.float32), after[key], err_msg=key
        )
