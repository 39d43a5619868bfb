"""Subclassed Keras models: a table's class comes from the config (a Functional layer list,
the snake_case group Keras files a listed layer under, or a sublayer the model's
`get_config` serializes by name), and a 2-D kernel of unknown class is never a table.

The model is built and saved by real Keras in a subprocess, which also reports what Keras
says each layer is and holds."""

import json
import subprocess
import sys

import numpy as np
import pytest

import embcli
from embcli.cli import cli
from embcli.model import list_tables

BUILD = r"""
import json, os, sys
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
import numpy as np

@keras.saving.register_keras_serializable(package="t")
class HashEmbedding(keras.layers.Embedding):
    pass

@keras.saving.register_keras_serializable(package="t")
class Sub(keras.Model):
    def __init__(self, vocab=20, dim=4, serialize=True, **kwargs):
        super().__init__(**kwargs)
        self.vocab, self.dim, self.serialize = vocab, dim, serialize
        self.tok = keras.layers.Embedding(vocab, dim, name="tok")
        self.hashed = HashEmbedding(7, dim, name="hashed")
        self.proj = keras.layers.Dense(dim, use_bias=False, name="proj")
        self.mix = keras.layers.Dense(dim, use_bias=False, name="mixer")

    def call(self, x):
        return self.mix(self.proj(self.tok(x) + self.hashed(x % 7)))

    def get_config(self):
        config = {**super().get_config(), "vocab": self.vocab, "dim": self.dim}
        config["serialize"] = self.serialize
        if self.serialize:
            config["hashed_layer"] = keras.saving.serialize_keras_object(self.hashed)
        return config

serialize = sys.argv[2] == "serialize"
model = Sub(name="sub", serialize=serialize)
model(np.zeros((1, 3), dtype="int32"))
model.save(sys.argv[1])
report = {}
for layer in model._flatten_layers(include_self=False):
    if type(layer).__name__.endswith("Embedding"):
        report[layer.name] = [type(layer).__name__, np.asarray(layer.embeddings).tolist()]
print(json.dumps(report))
"""


def build(path, serialize: bool) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(path), "serialize" if serialize else "plain"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("subclassed")
    made = {}
    for serialize in (True, False):
        path = folder / f"sub_{'serialized' if serialize else 'plain'}.keras"
        made[serialize] = (path, build(path, serialize))
    return made


@pytest.mark.keras
def test_a_serialized_embedding_subclass_is_a_table_with_its_class(saved):
    path, keras_says = saved[True]
    with embcli.open(path) as model:
        tables = {t.name: t for t in list_tables(model.artifact)}
        assert {name: t.class_name for name, t in tables.items()} == {
            name: entry[0] for name, entry in keras_says.items()
        }
        for name, (_, values) in keras_says.items():
            read = model.artifact.read(tables[name].weight, slice(None))
            np.testing.assert_array_equal(read, np.asarray(values, dtype=np.float32))


@pytest.mark.keras
def test_dense_kernels_of_a_subclassed_model_are_not_tables(saved, runner):
    for path, _ in saved.values():
        result = runner.invoke(cli, ["layers", "--json", str(path)])
        assert result.exit_code == 0, result.output
        names = {record["name"] for record in json.loads(result.output)}
        assert not names & {"proj", "mixer"}
        everything = runner.invoke(cli, ["layers", "--all", "--json", str(path)])
        every = {r["name"]: r["embedding"] for r in json.loads(everything.output)}
        assert every["proj"] is False and every["mixer"] is False


@pytest.mark.keras
def test_an_attribute_the_config_does_not_name_is_listed_only_with_all(saved, runner):
    path, keras_says = saved[False]
    result = runner.invoke(cli, ["layers", "--json", str(path)])
    names = {record["name"] for record in json.loads(result.output)}
    assert names == {"tok"}
    assert set(keras_says) == {"tok", "hashed"}
    everything = runner.invoke(cli, ["layers", "--all", "--json", str(path)])
    every = {r["name"]: r for r in json.loads(everything.output)}
    assert every["hashed"]["embedding"] is False and every["hashed"]["class"] is None
