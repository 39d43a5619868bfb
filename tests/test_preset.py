"""keras-hub presets and archives read as keras-hub reports them (fixtures/hub/manifest.json):
every table with its class, shape, dtype and values; no other 2-D weight ever a table."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import embcli
from embcli.cli import cli
from embcli.formats.registry import detect
from embcli.model import list_tables

HUB = Path(__file__).resolve().parent.parent / "fixtures" / "hub"
MANIFEST = json.loads((HUB / "manifest.json").read_text(encoding="utf-8"))
NAMES = sorted(MANIFEST)
PRESETS = [name for name in NAMES if MANIFEST[name]["kind"].startswith("hub_preset")]


def expected(name: str) -> dict:
    return dict(np.load(HUB / MANIFEST[name]["expected"]))


def tables(model):
    return list_tables(model.artifact)


def weights(model):
    return list_tables(model.artifact, all_weights=True)


def by_qualified(model, entry):
    wanted = "/".join(entry["path"])
    found = [t for t in tables(model) if t.qualified == wanted]
    assert len(found) == 1, f"{wanted} not in {[t.qualified for t in tables(model)]}"
    return found[0]


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_folder_is_its_own_kind(name):
    assert detect(HUB / name).name == "keras-hub preset"


@pytest.mark.parametrize("name", NAMES)
def test_tables_are_exactly_what_keras_hub_reports(name):
    entries = MANIFEST[name]["tables"]
    with embcli.open(HUB / name) as model:
        assert sorted(t.qualified for t in tables(model)) == sorted(
            "/".join(e["path"]) for e in entries
        )
        for entry in entries:
            table = by_qualified(model, entry)
            assert table.name == entry["name"]
            assert table.class_name == entry["class"]
            assert table.shape == tuple(entry["shape"])
            assert table.dtype == entry["dtype"]


@pytest.mark.parametrize("name", NAMES)
def test_values_are_what_keras_hub_computes(name):
    arrays = expected(name)
    with embcli.open(HUB / name) as model:
        for entry in MANIFEST[name]["tables"]:
            key = "/".join(entry["path"])
            table = by_qualified(model, entry)
            values = model.artifact.read(table.weight, slice(None))
            np.testing.assert_array_equal(np.asarray(values, dtype=np.float32), arrays[key])


@pytest.mark.parametrize("name", NAMES)
def test_no_other_two_dimensional_weight_is_a_table(name):
    arrays = expected(name)
    with embcli.open(HUB / name) as model:
        table_values = [
            np.asarray(model.artifact.read(t.weight, slice(None)), dtype=np.float32)
            for t in tables(model)
        ]
        others = [w for w in weights(model) if not w.is_embedding]
        kernels = [e for e in MANIFEST[name]["non_embedding_2d"] if len(e["shape"]) == 2]
        assert len(others) >= len([k for k in kernels if k["layer_class"] == "Dense"])
        for values in table_values:
            assert any(
                values.shape == a.shape and np.array_equal(values, a) for a in arrays.values()
            )


@pytest.mark.parametrize("name", NAMES)
def test_layers_json_lists_the_tables(runner, name):
    result = runner.invoke(cli, ["layers", "--json", str(HUB / name)])
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    wanted = {
        ("/".join(e["path"]), e["class"], tuple(e["shape"])) for e in MANIFEST[name]["tables"]
    }
    assert {(r["qualified"], r["class"], tuple(r["shape"])) for r in records} == wanted


def test_the_task_weights_are_read_beside_the_backbone():
    with embcli.open(HUB / "bert_masked_lm") as model:
        artifact = model.artifact
        table = model.table("token_embedding")
        biases = artifact.output_biases(table)
        assert biases == ["task/layers/masked_lm_head/vars/0"]
        values = artifact.read(biases[0], slice(None))
        np.testing.assert_array_equal(values, expected("bert_masked_lm")["output_bias"])
        assert any(w.weight.startswith("task/") for w in weights(model))


def test_the_untied_reverse_table_is_read_from_its_shard():
    arrays = expected("llama3_sharded")
    with embcli.open(HUB / "llama3_sharded") as model:
        reverse = [w for w in weights(model) if w.name == "token_embedding:1"]
        assert len(reverse) == 1
        values = model.artifact.read(reverse[0].weight, slice(None))
        np.testing.assert_array_equal(values, arrays["token_embedding:reverse"])


def test_a_preset_without_weights_is_refused(tmp_path):
    folder = tmp_path / "preset"
    shutil.copytree(HUB / "llama3_sharded", folder)
    (folder / "model.weights.json").unlink()
    with pytest.raises(embcli.errors.EmbcliError):
        embcli.open(folder)


def test_a_row_edit_of_a_sharded_preset_touches_one_shard(tmp_path):
    folder = tmp_path / "preset"
    shutil.copytree(HUB / "llama3_sharded", folder)
    before = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    vectors = np.ones((1, 8), dtype=np.float32)
    embcli.assign(folder, "token_embedding", rows=[3], values=vectors, in_place=True)
    after = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"model_00000.weights.h5"}
    with embcli.open(folder) as model:
        np.testing.assert_array_equal(model.read("token_embedding", [3]), vectors)


def copy_preset(tmp_path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(HUB / name, folder)
    return folder


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: (f / "task.json").write_text("{not json"),
        lambda f: (f / "task.json").write_text("[1, 2]"),
        lambda f: (f / "task.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64),
        lambda f: (f / "config.json").write_text('{"config": '),
        lambda f: (f / "preprocessor.json").write_text("{"),
        lambda f: (f / "metadata.json").write_text("null"),
        lambda f: (f / "assets/tokenizer/merges.txt").symlink_to("/etc/passwd"),
        lambda f: (f / "model.weights.h5").unlink(),
    ],
)
def test_a_damaged_preset_is_an_error_not_a_traceback(runner, tmp_path, damage):
    folder = copy_preset(tmp_path, "bert_masked_lm")
    damage(folder)
    result = runner.invoke(cli, ["layers", str(folder)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ")


def test_a_tokenizer_config_pointing_outside_is_a_vocabulary_error(runner, tmp_path):
    folder = copy_preset(tmp_path, "gpt2_causal_lm")
    config = json.loads((folder / "tokenizer.json").read_text())
    config["config"]["config_file"] = "../../etc/passwd"
    (folder / "tokenizer.json").write_text(json.dumps(config))
    result = runner.invoke(cli, ["layers", str(folder)])
    assert result.exit_code == 1
    assert "config_file" in result.output and "Traceback" not in result.output


def test_a_preset_without_its_vocabulary_has_no_vocabulary(runner, tmp_path):
    folder = copy_preset(tmp_path, "llama_backbone")
    (folder / "assets/tokenizer/vocabulary.spm").unlink()
    result = runner.invoke(cli, ["rows", str(folder), "--token", "<s>"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: no vocabulary is known for token_embedding")


def test_a_task_backbone_written_apart_gets_the_new_size_only(runner, tmp_path):
    folder = copy_preset(tmp_path, "gpt2_causal_lm")
    task = json.loads((folder / "task.json").read_text())
    task["config"]["backbone"]["config"]["dropout"] = 0.5
    (folder / "task.json").write_text(json.dumps(task))
    output = tmp_path / "o"
    result = runner.invoke(
        cli, ["resize", str(folder), "-l", "token_embedding", "--add", "1", "-o", str(output)]
    )
    assert result.exit_code == 0, result.output
    written = json.loads((output / "task.json").read_text())
    task["config"]["backbone"]["config"]["vocabulary_size"] = 286
    assert written == task


def test_a_task_holding_another_backbone_is_not_resized(runner, tmp_path):
    folder = copy_preset(tmp_path, "gpt2_causal_lm")
    task = json.loads((folder / "task.json").read_text())
    task["config"]["backbone"]["config"]["vocabulary_size"] = 7
    (folder / "task.json").write_text(json.dumps(task))
    result = runner.invoke(
        cli,
        ["resize", str(folder), "-l", "token_embedding", "--add", "1", "-o", str(tmp_path / "o")],
    )
    assert result.exit_code == 1
    assert "another backbone" in result.output
    assert not (tmp_path / "o").exists()
