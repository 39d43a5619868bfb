"""Codec detection against the quantized files Keras wrote (fixtures/quant/): given each
layer's config entry and its saved variables' infos, the right codec is picked, and it
decodes the stored arrays to exactly the values Keras reported."""

from __future__ import annotations

import io
import json
import zipfile

import h5py
import numpy as np
import pytest
from conftest import FIXTURES

from embcli.errors import UnsupportedEdit
from embcli.quantization import VariableInfo, detect_codecs

QUANT = FIXTURES / "quant"
MANIFEST = json.loads((QUANT / "manifest.json").read_text())
NAMES = sorted(MANIFEST)


@pytest.fixture(scope="module")
def expected():
    with np.load(QUANT / "expected.npz") as archive:
        return {key: archive[key] for key in archive.files}


def evidence(name: str) -> dict:
    """What a format module knows of the layer besides its variables: its config entry,
    or for a keras-hub backbone's sublayer, the backbone's policy map and the path."""
    with zipfile.ZipFile(QUANT / name) as archive:
        config = json.loads(archive.read("config.json"))
    entry = MANIFEST[name]
    if "layer_path" in entry:
        return {
            "class_name": entry["class"],
            "policy": config["config"]["dtype"],
            "layer_path": entry["layer_path"],
        }
    (found,) = [
        layer for layer in config["config"]["layers"] if layer["config"]["name"] == entry["layer"]
    ]
    return {"class_name": found["class_name"], "config": found["config"]}


def stored_arrays(name: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(QUANT / name) as archive:
        weights = archive.read("model.weights.h5")
    with h5py.File(io.BytesIO(weights), "r") as handle:
        return {v["path"]: handle[v["path"]][()] for v in MANIFEST[name]["variables"]}


def infos(name: str) -> list[VariableInfo]:
    return [
        VariableInfo(v["path"], tuple(v["shape"]), v["dtype"]) for v in MANIFEST[name]["variables"]
    ]


def test_every_encoding_has_a_fixture():
    assert {entry["encoding"] for entry in MANIFEST.values()} == {"int8", "int4", "int4-grouped"}
    assert any(entry["class"] == "ReversibleEmbedding" for entry in MANIFEST.values())
    assert any("layer_path" in entry for entry in MANIFEST.values())


def test_the_llama_token_embedding_is_int8_not_int4():
    """The keras-hub case the old guess got wrong: untied, policy only in the map."""
    name = "hub_llama_int8.keras"
    codecs = detect_codecs(infos(name), **evidence(name))
    assert codecs.name == "int8" and codecs.reverse is not None
    assert codecs.reverse.name == "int8"


@pytest.mark.parametrize("name", NAMES)
def test_detection_picks_the_codec_keras_used(name):
    entry = MANIFEST[name]
    codecs = detect_codecs(infos(name), **evidence(name))
    assert codecs.name == entry["encoding"]
    assert [table.weight for table in codecs.tables()] == [t["weight"] for t in entry["tables"]]
    assert [list(table.shape) for table in codecs.tables()] == [t["shape"] for t in entry["tables"]]
    if entry["encoding"] == "int4-grouped":
        assert codecs.embeddings.codec.block_size == entry["block_size"]


@pytest.mark.parametrize("name", NAMES)
def test_decoded_fixtures_equal_what_keras_reported(name, expected):
    codecs = detect_codecs(infos(name), **evidence(name))
    arrays = stored_arrays(name)
    for table, recorded in zip(codecs.tables(), MANIFEST[name]["tables"], strict=True):
        blocks = {role: arrays[part.variable.path] for role, part in table.parts.items()}
        decoded = table.decode(blocks)
        want = expected[recorded["expected"]]
        assert decoded.dtype == want.dtype
        np.testing.assert_array_equal(decoded.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("name", NAMES)
def test_without_config_only_unambiguous_layouts_are_accepted(name):
    """A weights-only file holds no policy: int8 and int4 per channel look alike there."""
    entry = MANIFEST[name]
    if entry["encoding"] == "int4-grouped":
        codecs = detect_codecs(infos(name), class_name=entry["class"])
        assert codecs.name == "int4-grouped"
        assert codecs.embeddings.codec.block_size is None
        return
    if entry["encoding"] == "int8" and entry["class"] == "Embedding":
        dims = tuple(entry["tables"][0]["shape"])
        assert detect_codecs(infos(name), dims=dims).name == "int8"
    with pytest.raises(UnsupportedEdit, match="its config would tell"):
        detect_codecs(infos(name), class_name=entry["class"])


def test_grouped_block_size_is_recovered_from_the_stored_group_index():
    name = "int4_grouped_embedding.keras"
    table = detect_codecs(infos(name)).embeddings
    g_idx = stored_arrays(name)[table.parts["g_idx"].variable.path]
    assert table.with_group_index(g_idx).codec.block_size == MANIFEST[name]["block_size"]


@pytest.mark.parametrize("name", NAMES)
def test_export_writes_what_keras_reported(runner, name, expected, tmp_path):
    """`export` dequantizes every encoding (int4 tables were once cut to integers), and
    `--raw` writes one stored integer per value, int4 codes unpacked."""
    from embcli.cli import cli

    layer = MANIFEST[name]["layer"]
    recorded = MANIFEST[name]["tables"][0]
    want = expected[recorded["expected"]]
    out = tmp_path / "table.npy"
    result = runner.invoke(cli, ["export", str(QUANT / name), "-l", layer, "-o", str(out)])
    assert result.exit_code == 0, result.output
    got = np.load(out)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    raw = tmp_path / "raw.npy"
    args = ["export", str(QUANT / name), "-l", layer, "--raw", "-o", str(raw)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    stored = np.load(raw)
    assert stored.dtype == np.int8 and stored.shape == want.shape
