"""`layers` shows the output bias that follows a table's rows (a keras-hub
`MaskedLMHead`'s bias over the vocabulary), found as the edits find it: in a preset's
`task.weights.h5` and in a task saved as one `.keras` archive. Where keras-hub put it
comes from fixtures/hub/manifest.json."""

import json
import shutil
from pathlib import Path

import pytest

import embcli
from embcli.cli import cli

HUB = Path(__file__).resolve().parent.parent / "fixtures" / "hub"
MANIFEST = json.loads((HUB / "manifest.json").read_text(encoding="utf-8"))
NAMES = sorted(MANIFEST)
# A preset's task weights are read beside its backbone's, under this prefix.
TASK_PREFIX = {"task.weights.h5": "task/", "model.weights.h5": ""}


def keras_hub_bias(name: str) -> dict | None:
    """The output bias as keras-hub reported it, in `layers --json` form."""
    bias = MANIFEST[name]["output_bias"]
    if bias is None:
        return None
    stored = bias["stored"]
    weight = TASK_PREFIX[stored["file"]] + stored["dataset"]
    return {"weight": weight, "shape": bias["shape"], "dtype": "float32"}


def test_a_preset_lists_its_task_output_bias(runner):
    result = runner.invoke(cli, ["layers", str(HUB / "bert_masked_lm")])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "name                class                rows  dim  dtype    weight                      "
        "        vocab  vocab_source                               output_bias\n"
        "segment_embedding   Embedding               2    8  float32  layers/embedding/vars/0     "
        "        -      -                                          -\n"
        "position_embedding  PositionEmbedding      16    8  float32  layers/position_embedding/va"
        "rs/0    -      -                                          -\n"
        "token_embedding     ReversibleEmbedding   164    8  float32  layers/reversible_embedding/"
        "vars/0  164    tokenizer:assets/tokenizer/vocabulary.txt  task/layers/masked_lm_head/vars/0\n"
    )


def test_a_task_archive_lists_its_output_bias(runner):
    result = runner.invoke(cli, ["layers", str(HUB / "bert_masked_lm.keras"), "--csv"])
    assert result.exit_code == 0, result.output
    backbone = "layers/bert_backbone/layers"
    vocabulary = "tokenizer:assets/preprocessor/tokenizer/vocabulary.txt"
    assert result.output == (
        "name,class,rows,dim,dtype,weight,vocab,vocab_source,output_bias\n"
        f"segment_embedding,Embedding,2,8,float32,{backbone}/embedding/vars/0,,,\n"
        f"position_embedding,PositionEmbedding,16,8,float32,{backbone}/position_embedding/vars/0"
        ",,,\n"
        f"token_embedding,ReversibleEmbedding,164,8,float32,{backbone}/reversible_embedding/vars/0"
        f",164,{vocabulary},layers/masked_lm_head/vars/0\n"
    )


def test_no_output_bias_column_without_one(runner):
    result = runner.invoke(cli, ["layers", str(HUB / "bert_backbone.keras")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split() == [
        "name", "class", "rows", "dim", "dtype", "weight"
    ]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_json_gives_each_table_its_output_bias_as_keras_hub_stored_it(runner, name):
    result = runner.invoke(cli, ["layers", "--json", str(HUB / name)])
    assert result.exit_code == 0, result.output
    vocabulary_size = MANIFEST[name]["vocabulary_size"]
    for record in json.loads(result.output):
        token_table = record["class"] == "ReversibleEmbedding" or (
            record["rows"] == vocabulary_size and record["name"] == "token_embedding"
        )
        wanted = keras_hub_bias(name) if token_table else None
        assert record["output_bias"] == wanted, record["name"]


@pytest.mark.parametrize("name", ["bert_masked_lm", "bert_masked_lm.keras"])
def test_what_layers_shows_is_what_resize_moves(runner, tmp_path, name):
    source = HUB / name
    listed = json.loads(runner.invoke(cli, ["layers", "--json", str(source)]).stdout)
    [token] = [r for r in listed if r["name"] == "token_embedding"]
    bias = token["output_bias"]["weight"]
    output = tmp_path / ("grown" + source.suffix)
    result = runner.invoke(
        cli,
        ["resize", str(source), "-l", "token_embedding", "--add", "2", "-o", str(output), "--json"],
    )
    assert result.exit_code == 0, result.output
    assert bias in json.loads(result.stdout)["resized"]
    after = json.loads(runner.invoke(cli, ["layers", "--json", str(output)]).stdout)
    [token] = [r for r in after if r["name"] == "token_embedding"]
    assert token["output_bias"] == {"weight": bias, "shape": [166], "dtype": "float32"}


def test_the_api_gives_the_output_biases(tmp_path):
    with embcli.open(HUB / "bert_masked_lm") as model:
        assert model.output_biases("token_embedding") == [
            embcli.OutputBias("task/layers/masked_lm_head/vars/0", (164,), "float32")
        ]
        assert model.output_biases("segment_embedding") == []
    copy = tmp_path / "backbone"
    shutil.copytree(HUB / "bert_masked_lm", copy)
    for task_file in ("task.json", "task.weights.h5"):
        (copy / task_file).unlink()
    with embcli.open(copy) as model:
        assert model.output_biases("token_embedding") == []
