"""Quantized tables (int8, int4 per channel, int4 grouped; Embedding and untied
ReversibleEmbedding) through the whole library: read as Keras computes them, assigned and
resized as Keras quantizes, and reloaded by Keras, which computes what embcli reads."""

import copy
import json
import zipfile

import numpy as np
import pytest
from conftest import FIXTURES
from keras_check import keras_check

import embcli
from embcli.cli import cli
from embcli.model import find_table, open_model
from embcli.quantized import iter_reverse_rows

QUANT = FIXTURES / "quant"
MANIFEST = json.loads((QUANT / "manifest.json").read_text())
EXPECTED = dict(np.load(QUANT / "expected.npz"))
CASES = sorted(name for name in MANIFEST if name.endswith(".keras"))


def entry_table(name):
    entry = MANIFEST[name]
    return entry["layer"], entry["tables"][0], entry["encoding"]


@pytest.mark.parametrize("name", CASES)
def test_rows_are_what_keras_computes(runner, name):
    layer, table, encoding = entry_table(name)
    result = runner.invoke(cli, ["rows", str(QUANT / name), "-l", layer, "0:", "--json"])
    assert result.exit_code == 0, result.output
    values = np.array([r["vector"] for r in json.loads(result.stdout)["rows"]], dtype=np.float32)
    np.testing.assert_array_equal(values, EXPECTED[table["expected"]])
    listed = json.loads(runner.invoke(cli, ["layers", str(QUANT / name), "--json"]).stdout)
    [found] = [t for t in listed if t["name"] == layer]
    assert (found["quantized"], found["shape"]) == (encoding, table["shape"])


@pytest.mark.keras
@pytest.mark.parametrize("name", CASES)
def test_assign_requantizes_as_keras_and_keras_reloads(tmp_path, name):
    layer, table, _ = entry_table(name)
    rows, dim = table["shape"]
    values = np.random.default_rng(3).uniform(-0.5, 0.5, size=(2, dim)).astype(np.float32)
    output = tmp_path / "a.keras"
    embcli.assign(QUANT / name, layer, rows=[1, -1], values=values, output=output)
    with embcli.open(output) as model:
        after = model.read(layer, slice(None))
    before = EXPECTED[table["expected"]]
    kept = [i for i in range(rows) if i not in (1, rows - 1)]
    np.testing.assert_array_equal(after[kept], before[kept])
    np.testing.assert_allclose(after[[1, -1]], values, atol=0.08)
    report, arrays = keras_check(output, layer, scratch=tmp_path)
    np.testing.assert_array_equal(arrays["table"], after)


UNTIED = [n for n in CASES if len(MANIFEST[n]["tables"]) > 1]


@pytest.mark.parametrize("name", UNTIED)
def test_resizing_a_quantized_untied_output_table_keeps_old_columns(tmp_path, monkeypatch, name):
    """The Keras side of this is in test_quantized_reverse.py."""
    layer, table, _ = entry_table(name)
    rows, dim = table["shape"]
    output = tmp_path / "r.keras"
    result = embcli.resize(QUANT / name, layer, add=3, output=output)
    assert set(result.resized) == {v["path"] for v in MANIFEST[name]["variables"]} - {
        v["path"] for v in MANIFEST[name]["variables"] if v["shape"] == [dim]
    }
    with open_model(output) as model:
        reverse = np.concatenate(
            [block for _, block in iter_reverse_rows(model, find_table(model, layer))]
        )
    assert reverse.shape == (rows + 3, dim)
    monkeypatch.setattr(embcli.quantized, "REVERSE_BAND_BYTES", 1)  # a stored row per read
    with open_model(output) as model:
        table_ = find_table(model, layer)
        small = [block for _, block in iter_reverse_rows(model, table_, block_bytes=dim * 4 * 2)]
    assert len(small) == (rows + 3 + 1) // 2
    np.testing.assert_array_equal(np.concatenate(small), reverse)
    np.testing.assert_array_equal(reverse[:rows], EXPECTED[MANIFEST[name]["tables"][1]["expected"]])


def with_weight_quantizer(source, target, layer):
    """A copy of a quantized archive whose layer config names a weight quantizer, which
    Keras's `quantize` would also have used, along its own axis, for the reverse table."""
    with zipfile.ZipFile(source) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    config = json.loads(members["config.json"])
    (entry,) = [e for e in config["config"]["layers"] if e["config"]["name"] == layer]
    settings = entry["config"]["quantization_config"]["config"]
    settings["weight_quantizer"] = copy.deepcopy(settings["activation_quantizer"])
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)


def test_an_output_table_quantized_by_a_named_quantizer_is_refused(tmp_path):
    source = tmp_path / "named.keras"
    with_weight_quantizer(QUANT / "int8_reversible_untied.keras", source, "tokens")
    with pytest.raises(embcli.errors.UnsupportedEdit, match="tokens: its output table"):
        embcli.resize(source, "tokens", add=3, output=tmp_path / "r.keras")
    assert not (tmp_path / "r.keras").exists()


@pytest.mark.keras
@pytest.mark.parametrize("name", [n for n in CASES if n not in UNTIED])
def test_resize_quantizes_new_rows_and_keras_reloads(tmp_path, name):
    layer, table, _ = entry_table(name)
    rows, dim = table["shape"]
    output = tmp_path / "r.keras"
    embcli.resize(QUANT / name, layer, add=3, output=output)
    with embcli.open(output) as model:
        after = model.read(layer, slice(None))
    before = EXPECTED[table["expected"]]
    assert after.shape == (rows + 3, dim)
    np.testing.assert_array_equal(after[:rows], before)
    np.testing.assert_allclose(after[rows:], np.repeat(before.mean(axis=0)[None], 3, 0), atol=0.05)
    report, arrays = keras_check(output, layer, scratch=tmp_path)
    assert report["input_dim"] == rows + 3
    np.testing.assert_array_equal(arrays["table"], after)


def test_an_output_table_scale_shared_by_every_token_is_refused(tmp_path):
    """No Keras layout has one (each token's column is quantized on its own); were a
    scale shared across tokens, new columns would change old ones, so embcli refuses."""
    from dataclasses import replace

    with open_model(QUANT / "int8_reversible_untied.keras") as model:
        table = find_table(model, "tokens")
        reverse = table.codec.reverse
        parts = dict(reverse.parts, scale=replace(reverse.parts["scale"], vocab_axis=None))
        shared = replace(table, codec=replace(table.codec, reverse=replace(reverse, parts=parts)))
        with pytest.raises(embcli.errors.UnsupportedEdit, match="one for every token"):
            embcli.quantized.encoded_reverse_columns(model, shared, np.zeros((1, 6)))
