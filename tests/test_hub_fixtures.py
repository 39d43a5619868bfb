"""The keras-hub fixtures and their manifest agree with each other and with keras-hub.

The fast tests read the files with h5py and zipfile only; the `keras` tests load every
fixture again with keras-hub (in a subprocess) and compare with the manifest and
`expected/*.npz`.
"""

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

HUB = Path(__file__).resolve().parent.parent / "fixtures" / "hub"
MANIFEST = json.loads((HUB / "manifest.json").read_text(encoding="utf-8"))
NAMES = sorted(MANIFEST)
MAX_TOTAL_BYTES = 3_000_000
REQUIRED_BACKBONES = {
    "BertBackbone",
    "GPT2Backbone",
    "LlamaBackbone",
    "GemmaBackbone",
    "T5Backbone",
    "Llama3Backbone",
}


def weight_files(name: str) -> dict[str, bytes]:
    path = HUB / name
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.glob("*.h5"))}
    with zipfile.ZipFile(path) as archive:
        return {"model.weights.h5": archive.read("model.weights.h5")}


def as_computed(item: h5py.Dataset) -> tuple[np.ndarray, str]:
    """A dataset's values as Keras computes with them, and its stored dtype."""
    import ml_dtypes

    array = item[()]
    stored = item.attrs.get("dtype", array.dtype.name)
    if stored == "bfloat16":
        array = array.view(ml_dtypes.bfloat16).astype(np.float32)
    return array, stored


def two_d_datasets(name: str) -> list[str]:
    """The file and path of every 2-D dataset in the fixture's weight files."""
    found: list[str] = []
    for file_name, blob in weight_files(name).items():
        with h5py.File(io.BytesIO(blob), "r") as handle:

            def visit(path, item, file_name=file_name):
                if isinstance(item, h5py.Dataset) and item.ndim == 2:
                    found.append(f"{file_name}:{path}")

            handle.visititems(visit)
    return found


def read_stored(name: str, stored: dict) -> tuple[np.ndarray, str]:
    blob = weight_files(name)[stored["file"]]
    with h5py.File(io.BytesIO(blob), "r") as handle:
        return as_computed(handle[stored["dataset"]])


def test_the_fixtures_cover_the_brief():
    entries = MANIFEST.values()
    assert REQUIRED_BACKBONES <= {e["backbone_class"] for e in entries}
    assert {"BertMaskedLM", "GPT2CausalLM", "GemmaCausalLM"} <= {e["task_class"] for e in entries}
    assert {e["kind"] for e in entries} == {"hub_preset", "hub_preset_sharded", "keras_archive"}
    tied = [t["tied"] for e in entries for t in e["tables"] if t["class"] == "ReversibleEmbedding"]
    assert True in tied and False in tied
    kinds = {e["tokenizer"]["kind"] for e in entries if e["tokenizer"]}
    assert kinds == {"wordpiece", "bpe", "sentencepiece"}
    archives = [e for e in entries if e["kind"] == "keras_archive"]
    assert {e["task_class"] is None for e in archives} == {True, False}


def test_fixtures_are_small():
    total = sum(p.stat().st_size for p in HUB.rglob("*") if p.is_file())
    assert total < MAX_TOTAL_BYTES


@pytest.mark.parametrize("name", NAMES)
def test_listed_files_exist(name):
    entry = MANIFEST[name]
    path = HUB / name
    assert path.exists()
    for file in entry["files"]:
        assert (path / file).is_file()
    if path.is_dir():
        assert sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) == sorted(
            entry["files"]
        )
    assert (HUB / entry["expected"]).is_file()


@pytest.mark.parametrize("name", NAMES)
def test_expected_arrays_match_the_manifest(name):
    entry = MANIFEST[name]
    with np.load(HUB / entry["expected"]) as expected:
        arrays = dict(expected)
    keys = {"/".join(t["path"]) for t in entry["tables"]}
    keys |= {"/".join(t["path"]) + ":reverse" for t in entry["tables"] if t.get("tied") is False}
    if entry["output_bias"]:
        keys.add("output_bias")
    assert set(arrays) == keys
    for table in entry["tables"]:
        key = "/".join(table["path"])
        assert list(arrays[key].shape) == table["shape"]
        assert arrays[key].dtype == np.float32
        if table.get("tied") is False:
            assert list(arrays[key + ":reverse"].shape) == table["reverse_shape"]
            assert table["reverse_shape"] == table["shape"][::-1]
            assert table["reverse_weight"] in table["weights"]
    if entry["output_bias"]:
        assert list(arrays["output_bias"].shape) == entry["output_bias"]["shape"]
        assert entry["output_bias"]["shape"] == [entry["vocabulary_size"]]


@pytest.mark.parametrize("name", NAMES)
def test_every_table_is_stored_where_the_manifest_says(name):
    entry = MANIFEST[name]
    with np.load(HUB / entry["expected"]) as expected:
        for table in entry["tables"]:
            key = "/".join(table["path"])
            assert len(table["stored"]) == len(table["weights"])
            for weight, stored in zip(table["weights"], table["stored"], strict=True):
                array, dtype = read_stored(name, stored)
                want = expected[key + ":reverse" if weight == table.get("reverse_weight") else key]
                np.testing.assert_array_equal(array, want)
                assert dtype == table["dtype"]
        if entry["output_bias"]:
            array, _ = read_stored(name, entry["output_bias"]["stored"])
            np.testing.assert_array_equal(array, expected["output_bias"])
            assert np.abs(array).max() > 0


@pytest.mark.parametrize("name", NAMES)
def test_every_2d_weight_is_a_table_weight_or_listed_as_not_one(name):
    entry = MANIFEST[name]
    table_weights = [w for t in entry["tables"] for w in t["weights"]]
    assert len(two_d_datasets(name)) == len(table_weights) + len(entry["non_embedding_2d"])
    assert not set(table_weights) & {w["path"] for w in entry["non_embedding_2d"]}


@pytest.mark.parametrize("name", NAMES)
def test_vocabulary_size_is_the_token_table_and_tokenizer_size(name):
    entry = MANIFEST[name]
    token_tables = [t for t in entry["tables"] if t["class"] == "ReversibleEmbedding"]
    assert [t["shape"][0] for t in token_tables] == [entry["vocabulary_size"]]
    if entry["tokenizer"]:
        assert entry["tokenizer"]["vocabulary_size"] == entry["vocabulary_size"]
        assert len(entry["tokenizer"]["vocabulary"]) == entry["vocabulary_size"]
    if (HUB / name).is_dir():
        config = json.loads((HUB / name / "config.json").read_text(encoding="utf-8"))
        assert config["class_name"] == entry["backbone_class"]
        assert config["config"]["vocabulary_size"] == entry["vocabulary_size"]


@pytest.mark.parametrize(
    "name", [n for n in NAMES if (HUB / n).is_dir() and MANIFEST[n]["tokenizer"]]
)
def test_tokenizer_config_names_the_class(name):
    config = json.loads((HUB / name / "tokenizer.json").read_text(encoding="utf-8"))
    assert config["class_name"] == MANIFEST[name]["tokenizer"]["class"]
    for asset in MANIFEST[name]["tokenizer"]["assets"]:
        assert (HUB / name / asset).is_file()


def test_the_sharded_preset_has_several_shards():
    entry = MANIFEST["llama3_sharded"]
    index = json.loads((HUB / "llama3_sharded" / "model.weights.json").read_text())
    shards = set()
    for value in index["weight_map"].values():
        shards.update([value] if isinstance(value, str) else value)
    assert len(shards) > 1
    assert shards <= set(entry["files"])
    assert "model.weights.h5" not in entry["files"]


def test_the_masked_lm_task_keeps_its_head_apart():
    entry = MANIFEST["bert_masked_lm"]
    assert "task.weights.h5" in entry["files"]
    assert entry["output_bias"]["path"].endswith("output_bias")


_KERAS_CHECK = r"""
import json, sys
from pathlib import Path
import numpy as np
import keras, keras_hub
sys.path.insert(0, sys.argv[1])
import make_hub_fixtures as generator

hub = Path(sys.argv[1]) / "hub"
manifest = json.loads((hub / "manifest.json").read_text(encoding="utf-8"))
report = {}
for name, entry in manifest.items():
    path = hub / name
    if path.suffix == ".keras":
        model = keras.saving.load_model(path, compile=False)
    else:
        # from_preset computes in float32 unless told the stored policy
        policy = json.loads((path / "config.json").read_text())["config"].get("dtype")
        dtype = {"dtype": policy["config"]["name"]} if isinstance(policy, dict) else {}
        cls = getattr(keras_hub.models, entry["task_class"] or "Backbone")
        model = cls.from_preset(str(path), **dtype)
    backbone = model.backbone if entry["task_class"] else model
    description, values = generator.describe_model(keras, model, backbone)
    with np.load(hub / entry["expected"]) as expected:
        same = sorted(values) == sorted(expected.files) and all(
            np.array_equal(values[k], expected[k]) for k in values
        )
    report[name] = {"description": description, "values_equal": bool(same)}
json.dump(report, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    out = tmp_path_factory.mktemp("hub-oracle") / "report.json"
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_USE_LEGACY_KERAS", None)
    result = subprocess.run(
        [sys.executable, "-c", _KERAS_CHECK, str(HUB.parent), str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise AssertionError(f"keras-hub could not reload the fixtures:\n{result.stderr[-4000:]}")
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.mark.keras
@pytest.mark.tensorflow
@pytest.mark.parametrize("name", NAMES)
def test_keras_hub_reloads_what_the_manifest_says(reloaded, name):
    entry = MANIFEST[name]
    report = reloaded[name]
    assert report["values_equal"]
    for key, value in report["description"].items():
        assert without_stored(entry[key]) == value, key


def without_stored(value):
    """The manifest as keras-hub reports it: `stored` is found in the files afterwards."""
    if isinstance(value, dict):
        return {k: without_stored(v) for k, v in value.items() if k != "stored"}
    if isinstance(value, list):
        return [without_stored(v) for v in value]
    return value
