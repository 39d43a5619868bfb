"""Tokens of keras-hub models (WordPiece, byte-pair, SentencePiece) map to the rows that
keras-hub's own `token_to_id` gives (fixtures/hub/manifest.json), through the CLI, for a
preset folder, a `.keras` archive, a `.weights.h5` in its preset and `--vocab` files."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embcli
from embcli.cli import cli
from embcli.errors import BadVocabulary
from embcli.vocab import find_vocabulary, load_vocabulary_file

HUB = Path(__file__).resolve().parent.parent / "fixtures" / "hub"
MANIFEST = json.loads((HUB / "manifest.json").read_text(encoding="utf-8"))
WITH_TOKENIZER = sorted(name for name, entry in MANIFEST.items() if entry["tokenizer"])
KINDS = {name: MANIFEST[name]["tokenizer"]["kind"] for name in WITH_TOKENIZER}
TABLE = "token_embedding"


def token_table(name: str) -> np.ndarray:
    entry = next(t for t in MANIFEST[name]["tables"] if t["name"] == TABLE)
    return np.load(HUB / MANIFEST[name]["expected"])["/".join(entry["path"])]


def rows_by_token(runner, model: Path, tokens: list[str], *extra: str) -> dict:
    arguments = ["rows", str(model), "-l", TABLE, "--json", *extra]
    for token in tokens:
        arguments += ["--token", token]
    result = runner.invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_every_tokenizer_kind_is_covered():
    assert set(KINDS.values()) == {"wordpiece", "bpe", "sentencepiece"}


@pytest.mark.parametrize("name", WITH_TOKENIZER)
def test_rows_by_token_are_keras_hubs_ids(runner, name):
    samples = MANIFEST[name]["tokenizer"]["token_to_id"]
    record = rows_by_token(runner, HUB / name, list(samples))
    table = token_table(name)
    assert [(r["token"], r["index"]) for r in record["rows"]] == list(samples.items())
    for row in record["rows"]:
        np.testing.assert_allclose(row["vector"], table[row["index"]].astype(np.float64))


@pytest.mark.parametrize("name", WITH_TOKENIZER)
def test_the_vocabulary_is_the_tokenizers_in_id_order(name):
    with embcli.open(HUB / name) as model:
        vocabulary = model.table_vocabulary(TABLE)
        assert vocabulary.tokens == MANIFEST[name]["tokenizer"]["vocabulary"]
        assert vocabulary.source.startswith("tokenizer:assets/")
        for other in model.tables:
            if other != TABLE:
                assert model.table_vocabulary(other) is None


@pytest.mark.parametrize("name", WITH_TOKENIZER)
def test_layers_shows_the_tokenizer_as_the_source(runner, name):
    result = runner.invoke(cli, ["layers", "--json", str(HUB / name)])
    assert result.exit_code == 0, result.output
    records = {r["name"]: r for r in json.loads(result.output)}
    size = MANIFEST[name]["tokenizer"]["vocabulary_size"]
    asset = MANIFEST[name]["tokenizer"]["assets"]
    assert records[TABLE]["vocab"] == size
    assert records[TABLE]["vocab_source"] in {f"tokenizer:{a}" for a in asset}
    assert all(r["vocab"] is None for n, r in records.items() if n != TABLE)


@pytest.mark.parametrize("name", ["bert_masked_lm", "gpt2_causal_lm", "llama_backbone"])
def test_neighbors_by_token_are_the_neighbors_of_its_row(runner, name):
    token, row = next(iter(MANIFEST[name]["tokenizer"]["token_to_id"].items()))
    model = str(HUB / name)
    by_token = runner.invoke(cli, ["neighbors", model, "-l", TABLE, "--token", token, "--json"])
    by_row = runner.invoke(cli, ["neighbors", model, "-l", TABLE, str(row), "--json"])
    assert by_token.exit_code == 0, by_token.output
    assert json.loads(by_token.output)["neighbors"] == json.loads(by_row.output)["neighbors"]


@pytest.mark.parametrize("name", ["bert_masked_lm", "gemma_causal_lm", "llama3_sharded"])
def test_assign_by_token_writes_the_tokens_rows(runner, tmp_path, name):
    samples = list(MANIFEST[name]["tokenizer"]["token_to_id"].items())
    plain = [(t, i) for t, i in samples if " " not in t][:2]
    vectors = tmp_path / "vectors.txt"
    vectors.write_text(
        "".join(f"{t} " + " ".join(["0.5"] * 8) + "\n" for t, _ in plain), encoding="utf-8"
    )
    output = tmp_path / "out"
    result = runner.invoke(
        cli,
        ["assign", str(HUB / name), "-l", TABLE, "--by-token", "--from", str(vectors)]
        + ["--format", "glove", "-o", str(output)],
    )
    assert result.exit_code == 0, result.output
    with embcli.open(output) as model:
        written = model.read(TABLE, [i for _, i in plain])
        np.testing.assert_array_equal(np.asarray(written, dtype=np.float32), 0.5)
        untouched = [i for i in range(3) if i not in {r for _, r in plain}]
        np.testing.assert_array_equal(
            np.asarray(model.read(TABLE, untouched), dtype=np.float32),
            token_table(name)[untouched],
        )


@pytest.mark.parametrize(
    "name, file_name",
    [
        ("gpt2_causal_lm", "vocabulary.json"),
        ("llama_backbone", "vocabulary.spm"),
        ("bert_masked_lm", "vocabulary.txt"),
        ("llama3_sharded", "vocabulary.json"),
    ],
)
def test_a_weights_file_in_its_preset_finds_the_tokenizer(runner, name, file_name):
    samples = MANIFEST[name]["tokenizer"]["token_to_id"]
    weights = HUB / name / "model.weights.h5"
    if not weights.exists():
        weights = HUB / name / "model.weights.json"
    record = rows_by_token(runner, weights, list(samples))
    assert [(r["token"], r["index"]) for r in record["rows"]] == list(samples.items())


@pytest.mark.parametrize(
    "name, source, given",
    [
        ("gpt2_causal_lm", "assets/tokenizer/vocabulary.json", "vocab.json"),
        ("llama_backbone", "assets/tokenizer/vocabulary.spm", "tokenizer.model"),
        ("t5_backbone", "assets/tokenizer/vocabulary.spm", "spiece.spm"),
        ("bert_masked_lm", "assets/tokenizer/vocabulary.txt", "vocab.txt"),
    ],
)
def test_vocab_files_of_a_tokenizer_are_read_in_their_format(runner, tmp_path, name, source, given):
    weights = tmp_path / "model.weights.h5"
    shutil.copyfile(HUB / name / "model.weights.h5", weights)
    vocabulary = tmp_path / given
    shutil.copyfile(HUB / name / source, vocabulary)
    samples = MANIFEST[name]["tokenizer"]["token_to_id"]
    with embcli.open(weights) as model:
        assert find_vocabulary(model.artifact, model.artifact.tables()[0]) is None
    record = rows_by_token(runner, weights, list(samples), "--vocab", str(vocabulary))
    assert [(r["token"], r["index"]) for r in record["rows"]] == list(samples.items())


def test_a_presets_tokenizer_json_given_as_vocab_reads_its_assets(runner, tmp_path):
    name = "gemma_causal_lm"
    weights = tmp_path / "model.weights.h5"
    shutil.copyfile(HUB / name / "model.weights.h5", weights)
    samples = MANIFEST[name]["tokenizer"]["token_to_id"]
    given = HUB / name / "tokenizer.json"
    record = rows_by_token(runner, weights, list(samples), "--vocab", str(given))
    assert [(r["token"], r["index"]) for r in record["rows"]] == list(samples.items())


def test_a_hugging_face_tokenizer_json_is_read_with_its_added_tokens(tmp_path):
    document = {
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}},
        "added_tokens": [{"id": 3, "content": "<s>", "special": True}],
    }
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    vocabulary = load_vocabulary_file(path)
    assert vocabulary.tokens == ["a", "b", "ab", "<s>"]
    assert vocabulary.row_of("<s>") == 3


@pytest.mark.parametrize(
    "file_name, data",
    [
        ("vocab.json", b"[1, 2]"),
        ("vocab.json", b'{"a": 0, "b": 2}'),
        ("tokenizer.model", b"\xff\xff\xff"),
        ("tokenizer.json", b'{"class_name": "BertTokenizer", "config": {}}'),
    ],
)
def test_broken_tokenizer_files_are_vocabulary_errors(tmp_path, file_name, data):
    path = tmp_path / file_name
    path.write_bytes(data)
    with pytest.raises(BadVocabulary):
        load_vocabulary_file(path)


def test_layers_of_a_preset_exactly(runner):
    """The task's output bias is a last column (see test_layers_output_bias.py)."""
    result = runner.invoke(cli, ["layers", str(HUB / "bert_masked_lm")])
    assert result.exit_code == 0
    assert result.output == (
        "name                class                rows  dim  dtype    weight"
        "                              vocab  vocab_source"
        "                               output_bias\n"
        "segment_embedding   Embedding               2    8  float32  layers/embedding/vars/0"
        "             -      -                                          -\n"
        "position_embedding  PositionEmbedding      16    8  float32  "
        "layers/position_embedding/vars/0    -      -                                          -\n"
        "token_embedding     ReversibleEmbedding   164    8  float32  "
        "layers/reversible_embedding/vars/0  164    tokenizer:assets/tokenizer/vocabulary.txt"
        "  task/layers/masked_lm_head/vars/0\n"
    )


def test_rows_by_sentencepiece_token_exactly(runner):
    table = token_table("llama_backbone")
    result = runner.invoke(
        cli, ["rows", str(HUB / "llama_backbone"), "-l", TABLE, "--token", "<s>", "--token", "</s>"]
    )
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "row  token  vector"
    assert lines[1].startswith("  1  <s>    ") and lines[2].startswith("  2  </s>   ")
    for line, row in zip(lines[1:], (1, 2), strict=True):
        values = np.array(line.split()[2:], dtype=np.float32)
        np.testing.assert_array_equal(values, table[row])


def test_an_unknown_token_is_an_error(runner):
    result = runner.invoke(
        cli, ["rows", str(HUB / "gpt2_causal_lm"), "-l", TABLE, "--token", "not-a-token-here"]
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: 'not-a-token-here' is not in the vocabulary")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["bert_masked_lm", "gpt2_causal_lm", "gemma_causal_lm"]),
    tokens=st.lists(
        st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8),
        min_size=1,
        max_size=4,
        unique=True,
    ),
)
def test_added_tokens_read_back_at_the_end_of_the_tokenizer(name, tokens):
    from embcli.tokenizer_assets import find_vocabulary_asset, read_asset
    from embcli.tokenizer_edit import change_tokenizer

    with embcli.open(HUB / name) as model:
        vocabulary = model.table_vocabulary(TABLE)
        tokens = [t for t in tokens if t not in vocabulary.tokens]
        if not tokens:
            return
        source = model.artifact.tokenizer_files()
        change = change_tokenizer(model.artifact, vocabulary, len(vocabulary), tokens, None)
    files = dict(source.files.items())
    files.update({f"assets/{n}": data for n, data in change.assets.items()})
    files.update(change.files)
    new = read_asset(find_vocabulary_asset(type(source)(files, source.layout, None)), files)
    assert new.tokens == vocabulary.tokens + tokens
    for document in (json.loads(change.files[n]) for n in change.files if n.endswith(".json")):
        listed = json.dumps(document, ensure_ascii=False)
        assert all(json.dumps(t, ensure_ascii=False) in listed for t in tokens)


def test_a_repeated_wordpiece_token_is_the_id_keras_hub_gives_it(runner, tmp_path):
    """keras-hub's WordPiece maps each line to its number in a dict, so a repeated token
    is its last line, as Hugging Face reads a vocab.txt too."""
    folder = tmp_path / "bert"
    shutil.copytree(HUB / "bert_masked_lm", folder)
    vocabulary = folder / "assets/tokenizer/vocabulary.txt"
    lines = vocabulary.read_text(encoding="utf-8").split("\n")
    lines[10] = lines[20]
    vocabulary.write_text("\n".join(lines), encoding="utf-8")
    record = rows_by_token(runner, folder, [lines[20]])
    assert [r["index"] for r in record["rows"]] == [20]
