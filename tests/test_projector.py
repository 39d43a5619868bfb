"""`export --projector DIR`: a TensorBoard projector log folder, checked file by file."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FIXTURES

from embcli.cli import cli
from embcli.model import list_tables, open_model
from embcli.projector import CONFIG_FILENAME, ProjectorEntry, export_projector, projector_config

VOCAB = FIXTURES / "k3_vocab.keras"
NESTED = FIXTURES / "k3_legacy.h5"


def _tsv_export(runner, tmp_path: Path, model: Path, layer: str) -> bytes:
    target = tmp_path / "single" / "vectors.tsv"
    target.parent.mkdir(exist_ok=True)
    result = runner.invoke(cli, ["export", str(model), "-l", layer, "-o", str(target), "--force"])
    assert result.exit_code == 0, result.output
    return target.read_bytes()


def test_projector_folder_holds_every_table_with_its_tokens(runner, tmp_path):
    folder = tmp_path / "logs"
    result = runner.invoke(cli, ["export", str(VOCAB), "--projector", str(folder)])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote tok_emb, lookup_emb to the projector folder {folder}\n"
    assert sorted(p.name for p in folder.iterdir()) == [
        "lookup_emb.tsv",
        "lookup_emb_metadata.tsv",
        CONFIG_FILENAME,
        "tok_emb.tsv",
        "tok_emb_metadata.tsv",
    ]
    assert (folder / CONFIG_FILENAME).read_text() == (
        "embeddings {\n"
        '  tensor_name: "tok_emb"\n'
        '  tensor_path: "tok_emb.tsv"\n'
        '  metadata_path: "tok_emb_metadata.tsv"\n'
        "  tensor_shape: 10\n"
        "  tensor_shape: 4\n"
        "}\n"
        "embeddings {\n"
        '  tensor_name: "lookup_emb"\n'
        '  tensor_path: "lookup_emb.tsv"\n'
        '  metadata_path: "lookup_emb_metadata.tsv"\n'
        "  tensor_shape: 6\n"
        "  tensor_shape: 4\n"
        "}\n"
    )
    for layer in ("tok_emb", "lookup_emb"):
        assert (folder / f"{layer}.tsv").read_bytes() == _tsv_export(runner, tmp_path, VOCAB, layer)
        assert (folder / f"{layer}_metadata.tsv").read_bytes() == (
            tmp_path / "single" / "metadata.tsv"
        ).read_bytes()
    assert (folder / "lookup_emb_metadata.tsv").read_text(encoding="utf-8").splitlines()[:3] == [
        "[UNK]",
        "red",
        "grün",
    ]


def test_one_layer_and_names_that_are_not_file_names(runner, tmp_path):
    folder = tmp_path / "logs"
    result = runner.invoke(
        cli, ["export", str(NESTED), "-l", "tower/emb", "--projector", str(folder)]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILENAME, "tower_emb.tsv"]
    assert (
        (folder / CONFIG_FILENAME)
        .read_text()
        .startswith(
            'embeddings {\n  tensor_name: "tower/emb"\n  tensor_path: "tower_emb.tsv"\n  tensor_shape:'
        )
    )


def test_names_are_quoted_as_protobuf_text():
    config = projector_config([ProjectorEntry('a "q"\\é', "a.tsv", None, (2, 3))])
    assert config == (
        'embeddings {\n  tensor_name: "a \\"q\\"\\\\\\303\\251"\n'
        '  tensor_path: "a.tsv"\n  tensor_shape: 2\n  tensor_shape: 3\n}\n'
    )


def test_file_names_never_collide(tmp_path):
    folder = tmp_path / "logs"
    with open_model(NESTED) as model:
        tables = list_tables(model)
        renamed = [
            t.renamed(n) for t, n in zip(tables, ["x", "x_metadata", "x/", "x_2"], strict=True)
        ]
        entries = export_projector(model, renamed, folder)
    assert [e.tensor_path for e in entries] == [
        "x.tsv",
        "x_metadata_2.tsv",
        "x_2.tsv",
        "x_2_2.tsv",
    ]
    assert [e.tensor_name for e in entries] == ["x", "x_metadata", "x/", "x_2"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [CONFIG_FILENAME, *(e.tensor_path for e in entries)]
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        ([], "Error: give exactly one of -o/--output FILE and --projector DIR"),
        (["-o", "x.npy", "--projector", "d"], "Error: give exactly one of"),
    ],
)
def test_output_and_projector_exclude_each_other(runner, arguments, message):
    result = runner.invoke(cli, ["export", str(VOCAB), *arguments])
    assert result.exit_code == 2
    assert message in result.output


def test_an_existing_folder_needs_force(runner, tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    result = runner.invoke(cli, ["export", str(VOCAB), "--projector", str(folder)])
    assert result.exit_code == 1
    assert result.output == f"Error: {folder} exists; use --force to replace it\n"
    assert sorted(p.name for p in folder.iterdir()) == ["old.txt"]
    forced = runner.invoke(cli, ["export", str(VOCAB), "--projector", str(folder), "--force"])
    assert forced.exit_code == 0, forced.output
    assert "old.txt" not in {p.name for p in folder.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["logs"]


def test_tensorboard_reads_the_config(runner, tmp_path):
    projector = pytest.importorskip(
        "tensorboard.plugins.projector.projector_config_pb2", reason="needs tensorboard"
    )
    from google.protobuf import text_format

    folder = tmp_path / "logs"
    assert runner.invoke(cli, ["export", str(VOCAB), "--projector", str(folder)]).exit_code == 0
    config = text_format.Parse((folder / CONFIG_FILENAME).read_text(), projector.ProjectorConfig())
    assert [e.tensor_name for e in config.embeddings] == ["tok_emb", "lookup_emb"]
    for embedding in config.embeddings:
        rows = (folder / embedding.tensor_path).read_text().splitlines()
        labels = (folder / embedding.metadata_path).read_text(encoding="utf-8").splitlines()
        assert len(rows) == len(labels) == embedding.tensor_shape[0]
        assert all(len(row.split("\t")) == embedding.tensor_shape[1] for row in rows)
