"""`check --vocab-consistent`: a table whose vocabulary has another number of tokens than
rows, or repeats a token, or whose config declares another row count, fails."""

import json
import zipfile
from pathlib import Path

import pytest
from conftest import FIXTURES

from embcli import audit
from embcli.audit import consistency
from embcli.cli import cli
from embcli.formats.base import Table
from embcli.model import find_table, open_model
from embcli.vocab import Vocabulary

VOCAB = FIXTURES / "k3_vocab.keras"
ASSET = "assets/layers/string_lookup/vocabulary.txt"


def rewritten(target: Path, config=None, asset: bytes | None = None) -> str:
    """A copy of k3_vocab.keras with `config(layers)` applied to its layer list and/or
    the StringLookup asset replaced."""
    with zipfile.ZipFile(VOCAB) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "config.json" and config is not None:
                parsed = json.loads(data)
                config({layer["config"]["name"]: layer for layer in parsed["config"]["layers"]})
                data = json.dumps(parsed).encode()
            elif info.filename == ASSET and asset is not None:
                data = asset
            out.writestr(info, data)
    return str(target)


def tv_vocabulary(change):
    def apply(layers):
        layers["tv"]["config"]["vocabulary"] = change(layers["tv"]["config"]["vocabulary"])

    return apply


def test_consistent_models_pass(runner):
    for model, summary in (
        (VOCAB, "2 tables, 16 rows"),
        (FIXTURES / "k3_functional.keras", "2 tables, 80 rows"),
    ):
        result = runner.invoke(cli, ["check", str(model), "--vocab-consistent"])
        assert (result.exit_code, result.stdout) == (0, f"ok: {summary} checked\n")


def test_longer_vocabulary_with_a_repeated_token(runner, tmp_path):
    model = rewritten(tmp_path / "longer.keras", config=tv_vocabulary(lambda v: [*v, "cat"]))
    result = runner.invoke(cli, ["check", model, "--vocab-consistent"])
    assert (result.exit_code, result.stdout, result.stderr) == (
        1,
        "tok_emb: the vocabulary (config:tv) has 11 tokens but the table has 10 rows\n"
        "tok_emb: 1 token repeats an earlier token of the vocabulary (config:tv): 'cat' (row 10)\n",
        "",
    )
    unchecked = runner.invoke(cli, ["check", model])
    assert (unchecked.exit_code, unchecked.stdout) == (0, "ok: 2 tables, 16 rows checked\n")


def test_repeated_tokens_at_the_right_size(runner, tmp_path):
    # 'naïve' (row 6) and '東京' (row 9) become 'the' (row 2): still 10 tokens
    model = rewritten(
        tmp_path / "repeats.keras",
        config=tv_vocabulary(lambda v: ["the" if t in ("naïve", "東京") else t for t in v]),
    )
    result = runner.invoke(cli, ["check", model, "-l", "tok_emb", "--vocab-consistent", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["problems"] == [
        {
            "table": "tok_emb",
            "kind": "vocab_duplicates",
            "count": 2,
            "message": "tok_emb: 2 tokens repeat an earlier token of the vocabulary "
            "(config:tv): 'the' (rows 6, 9)",
        }
    ]


def test_asset_vocabulary_with_a_repeated_line(runner, tmp_path):
    with zipfile.ZipFile(VOCAB) as source:
        asset = source.read(ASSET)
    model = rewritten(tmp_path / "asset.keras", asset=asset.replace(b"bleu", b"red"))
    result = runner.invoke(cli, ["check", model, "--vocab-consistent"])
    assert (result.exit_code, result.stdout) == (
        1,
        "lookup_emb: 1 token repeats an earlier token of the vocabulary "
        "(asset:layers/string_lookup/vocabulary.txt): "
        "'red' (row 5)\n",
    )


def test_problems_follow_the_stats_problems_of_their_table(runner, tmp_path):
    model = rewritten(tmp_path / "longer.keras", config=tv_vocabulary(lambda v: [*v, "cat"]))
    result = runner.invoke(cli, ["check", model, "--vocab-consistent", "--max-norm", "0", "--json"])
    kinds = [(p["table"], p["kind"]) for p in json.loads(result.stdout)["problems"]]
    assert kinds == [
        ("tok_emb", "max_norm"),
        ("tok_emb", "vocab_size"),
        ("tok_emb", "vocab_duplicates"),
        ("lookup_emb", "max_norm"),
    ]


def test_the_declared_size_hook_is_compared(runner, monkeypatch):
    declared = {"tok_emb": 12, "lookup_emb": 6}
    monkeypatch.setattr(consistency, "declared_rows", lambda model, table: declared[table.name])
    result = runner.invoke(cli, ["check", str(VOCAB), "--vocab-consistent"])
    assert (result.exit_code, result.stdout) == (
        1,
        "tok_emb: the config declares 12 rows but the table has 10\n",
    )


@pytest.mark.parametrize(
    ("fixture", "want"),
    [
        ("k3_vocab.keras", {"tok_emb": 10, "lookup_emb": 6}),
        ("tfk_full.h5", {"word_emb": 40, "inner_emb": 20}),
        ("k3_folder", {"words": 50, "positions": 30}),
    ],
)
def test_declared_rows_are_read_from_the_config(fixture, want):
    with open_model(FIXTURES / fixture) as model:
        assert {t.name: consistency.declared_rows(model, t) for t in model.tables()} == want


def test_a_position_embedding_declares_its_sequence_length():
    with open_model(FIXTURES / "k3_hub.keras") as model:
        assert consistency.declared_rows(model, find_table(model, "pos")) == 6


def test_a_config_that_declares_other_rows_fails(runner, tmp_path):
    def grow(layers):
        layers["tok_emb"]["config"]["input_dim"] = 12

    model = rewritten(tmp_path / "declared.keras", config=grow)
    result = runner.invoke(cli, ["check", model, "--vocab-consistent"])
    assert (result.exit_code, result.stdout) == (
        1,
        "tok_emb: the config declares 12 rows but the table has 10\n",
    )


@pytest.mark.parametrize(
    ("tokens", "specials", "want"),
    [
        (["", "[UNK]", "a", "b"], 2, {}),
        (["[UNK]", "[UNK]", "[UNK]", "a", "b"], 3, {}),
        (["[UNK]", "[UNK]", "a", "[UNK]", "a", "a"], 2, {"[UNK]": [3], "a": [4, 5]}),
        (["x", "x"], 0, {"x": [1]}),
    ],
)
def test_repeated_tokens_leave_mask_and_oov_rows_alone(tokens, specials, want):
    assert audit.repeated_tokens(Vocabulary(tokens, "test", specials)) == want


def test_vocabulary_given_by_the_caller():
    table = Table("t", "t", "Embedding", (3, 2), "float32", "t")
    with open_model(VOCAB) as model:
        problems = audit.vocabulary_problems(model, table, Vocabulary(list("abcdefg"), "x"))
    assert [(p.kind, p.count) for p in problems] == [("vocab_size", 4)]
    with open_model(VOCAB) as model:
        many = audit.vocabulary_problems(
            model, table, Vocabulary(list("abc") + list("abcabc"), "x")
        )
    assert many[1].message == (
        "t: 6 tokens repeat an earlier token of the vocabulary (x): "
        "'a' (rows 3, 6), 'b' (rows 4, 7), 'c' (rows 5, 8)"
    )
