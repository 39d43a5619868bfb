"""Classes of the tables of TF checkpoints and Keras 3 exports, which record no class: a
table is an `Embedding` only where the artifact shows it, and never a Dense kernel, a bare
variable or a position table that merely shares the variable name `embeddings`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import FIXTURES, MANIFEST

from embcli.cli import cli
from embcli.errors import MissingDependency
from embcli.formats.tensorflow import import_tensorflow
from embcli.model import list_tables, open_model

try:
    tf = import_tensorflow()
except MissingDependency:
    tf = None

pytestmark = [
    pytest.mark.tensorflow,
    pytest.mark.skipif(tf is None, reason="TensorFlow is not installed"),
]


def classes(path, all_weights=True):
    with open_model(path) as model:
        return {t.name: t.class_name for t in list_tables(model, all_weights=all_weights)}


@pytest.mark.parametrize("name", ["tfk_ckpt/ckpt", "tfk_savedmodel", "k3_export"])
def test_fixture_tables_have_the_class_keras_reports(runner, name):
    result = runner.invoke(cli, ["layers", str(FIXTURES / name), "--json"])
    assert result.exit_code == 0, result.output
    listed = {t["name"]: t["class"] for t in json.loads(result.output)}
    assert listed == {t["name"]: t["class"] for t in MANIFEST[name]["tables"]}


@pytest.mark.parametrize("name", ["tfk_ckpt/ckpt", "k3_export"])
def test_dense_kernels_keep_no_class(name):
    assert classes(FIXTURES / name)["head"] is None


def test_the_layers_table_shows_the_class(runner):
    result = runner.invoke(cli, ["layers", str(FIXTURES / "k3_export")])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "name   class      rows  dim  dtype    weight\n"
        "words  Embedding    30    4  float32  variables/0/.ATTRIBUTES/VARIABLE_VALUE\n"
    )


@pytest.fixture(scope="module")
def tf_keras_lookalikes(tmp_path_factory):
    """A tf_keras checkpoint with an Embedding, a Dense layer named `embeddings` and a
    custom layer whose `embeddings` weight has a bias beside it."""
    keras = pytest.importorskip("tf_keras")

    class Lookup(keras.layers.Layer):
        def build(self, input_shape):
            self.embeddings = self.add_weight(name="embeddings", shape=(9, 3))
            self.bias = self.add_weight(name="bias", shape=(9, 3))

        def call(self, ids):
            return tf.gather(self.embeddings + self.bias, ids)

    ids = keras.Input((2,), dtype="int32")
    words = keras.layers.Embedding(11, 3, name="words")(ids)
    custom = Lookup(name="custom")(ids)
    pooled = keras.layers.Flatten()(keras.layers.Concatenate()([words, custom]))
    out = keras.layers.Dense(5, name="embeddings")(pooled)
    model = keras.Model(ids, out)
    prefix = tmp_path_factory.mktemp("lookalikes") / "ckpt"
    model.save_weights(str(prefix))
    return prefix


@pytest.mark.keras
def test_only_a_keras_embedding_layer_is_called_embedding(tf_keras_lookalikes):
    custom = "layer_with_weights-1/{}/.ATTRIBUTES/VARIABLE_VALUE"
    assert classes(tf_keras_lookalikes) == {
        "words": "Embedding",
        custom.format("embeddings"): None,
        custom.format("bias"): None,
        "embeddings": None,
    }


def test_a_bare_embeddings_variable_is_not_called_embedding(tmp_path):
    module = tf.Module()
    module.embeddings = tf.Variable(np.zeros((4, 2), np.float32), name="tok/embeddings")
    prefix = tf.train.Checkpoint(model=module).write(str(tmp_path / "ck"))
    assert classes(prefix) == {"tok": None}


K3_LOOKALIKES = r"""
import sys
import keras
import keras_hub
ids = keras.Input((6,), dtype="int32")
words = keras.layers.Embedding(20, 4, name="words")(ids)
position = keras_hub.layers.PositionEmbedding(6, name="position")(words)
pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Add()([words, position]))
out = keras.layers.Dense(4, name="embeddings")(pooled)
keras.Model(ids, out).export(sys.argv[1], verbose=False)
"""


@pytest.fixture(scope="module")
def k3_lookalikes(tmp_path_factory):
    """A Keras 3 export with an Embedding, a keras-hub PositionEmbedding (whose variable is
    also named `embeddings`) and a Dense layer named `embeddings`."""
    pytest.importorskip("keras", minversion="3")
    pytest.importorskip("keras_hub")
    folder = tmp_path_factory.mktemp("k3_lookalikes") / "export"
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run(
        [sys.executable, "-W", "ignore", "-c", K3_LOOKALIKES, str(folder)],
        check=True,
        env=env,
        capture_output=True,
    )
    return folder


@pytest.mark.keras
def test_only_a_gathered_embeddings_variable_of_an_export_is_an_embedding(k3_lookalikes):
    assert classes(k3_lookalikes) == {"words": "Embedding", "position": None, "embeddings": None}
