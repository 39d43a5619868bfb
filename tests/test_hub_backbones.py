"""More keras-hub backbones than the fixtures hold, built tiny by keras-hub in a subprocess
and saved both as a preset and as a `.keras` archive: embcli lists exactly the layers
keras-hub has whose class ends in `Embedding` and that own a 2-D weight, with that class
and shape, and no feed-forward or attention kernel."""

import json
import subprocess
import sys

import pytest

import embcli
from embcli.model import list_tables

BACKBONES = {
    "MistralBackbone": dict(
        vocabulary_size=50,
        num_layers=1,
        num_query_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        num_key_value_heads=1,
        sliding_window=16,
    ),
    "QwenBackbone": dict(
        vocabulary_size=50,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
        tie_word_embeddings=False,
    ),
    "Phi3Backbone": dict(
        vocabulary_size=50,
        num_layers=1,
        hidden_dim=8,
        intermediate_dim=16,
        num_query_heads=2,
        num_key_value_heads=1,
        max_sequence_length=16,
        pretraining_sequence_length=16,
    ),
    "RWKV7Backbone": dict(
        hidden_size=8,
        head_size=4,
        num_layers=1,
        vocabulary_size=50,
        intermediate_dim=16,
        gate_lora=4,
        mv_lora=4,
        aaa_lora=4,
        decay_lora=4,
    ),
    "XLNetBackbone": dict(
        vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16
    ),
    "DistilBertBackbone": dict(
        vocabulary_size=50,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
    ),
    "DebertaV3Backbone": dict(
        vocabulary_size=50,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
        bucket_size=8,
    ),
    "AlbertBackbone": dict(
        vocabulary_size=50,
        num_layers=1,
        num_heads=2,
        embedding_dim=4,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
    ),
}

BUILD = r"""
import json, os, sys
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras_hub

name, arguments, folder = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
if not hasattr(keras_hub.models, name):
    print(json.dumps({"missing": keras_hub.__version__}))
    sys.exit(0)
backbone = getattr(keras_hub.models, name)(**arguments)
backbone.save_to_preset(os.path.join(folder, "preset"))
backbone.save(os.path.join(folder, "backbone.keras"))
tables = []
for layer in backbone._flatten_layers(include_self=False, recursive=True):
    matrices = [v for v in layer._trainable_variables + layer._non_trainable_variables
                if len(v.shape) == 2]
    if type(layer).__name__.endswith("Embedding") and matrices:
        tables.append([layer.name, type(layer).__name__, list(matrices[0].shape)])
print(json.dumps(sorted(tables)))
"""


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def built(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    done = subprocess.run(
        [sys.executable, "-c", BUILD, request.param, json.dumps(BACKBONES[request.param]), folder],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if isinstance(report, dict):
        pytest.skip(f"keras-hub {report['missing']} has no {request.param}")
    return folder, report


@pytest.mark.keras
@pytest.mark.tensorflow
@pytest.mark.parametrize("saved", ["preset", "backbone.keras"])
def test_tables_are_the_embedding_layers_keras_hub_has(built, saved):
    folder, keras_says = built
    assert keras_says, "every backbone has a token embedding"
    with embcli.open(folder / saved) as model:
        found = sorted([t.name, t.class_name, list(t.shape)] for t in list_tables(model.artifact))
    assert found == keras_says
