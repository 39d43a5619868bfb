"""vocab and remap: a table rebuilt for a new vocabulary keeps every kept token's vector
bit for bit at its new row, and the model's own lookup layer (Keras as the oracle) maps
each kept token to that row, each dropped token to OOV, and gives the same outputs on text
made of kept tokens."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embcli
from embcli import errors
from embcli.cli import cli
from embcli.token_lists import decode_line, encode_token, read_token_list, token_list_text

VOCAB_MODEL = FIXTURES / "k3_vocab.keras"
LOOKUP_TOKENS = ["[UNK]", "red", "grün", "żółty", "niebieski", "bleu"]
TV_TOKENS = ["", "[UNK]", "the", "cat", "café", "日本", "naïve", "über", "straße", "東京"]

_KERAS_SCRIPT = r"""
import json, sys
import numpy as np
import keras
path, layer_name, lookup_name, tokens = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
model = keras.models.load_model(path)
lookup = model.get_layer(lookup_name)
ids = np.asarray(lookup(np.array(tokens))).reshape(len(tokens), -1)[:, 0].tolist()
table = np.asarray(model.get_layer(layer_name).embeddings)
import tensorflow as tf
out = model({"text": tf.constant(["the cat café", "東京 the"]), "cats": tf.constant([["red", "grün", "red"], ["grün", "grün", "red"]])})
print(json.dumps({"ids": ids, "rows": table[ids].tolist(), "input_dim": table.shape[0], "out": np.asarray(out).tolist()}))
"""


def keras_lookup(path, layer, lookup, tokens):
    result = subprocess.run(
        [sys.executable, "-c", _KERAS_SCRIPT, str(path), layer, lookup, json.dumps(tokens)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def table_of(path, name):
    with embcli.open(path) as model:
        return model.read(name, slice(None)), model.vocabulary(name)


@pytest.mark.keras
@pytest.mark.parametrize(
    "new_tokens",
    [
        ["bleu", "red", "grün", "żółty", "niebieski"],  # reorder
        ["grün", "red"],  # subset
        ["red", "grün", "żółty", "niebieski", "bleu", "violet", "indigo"],  # superset
        ["violet", "grün", "red", "orange"],  # mixed
    ],
)
def test_remap_lookup_asset_vocabulary_and_keras_agrees(tmp_path, new_tokens):
    output = tmp_path / "r.keras"
    (tmp_path / "to.txt").write_text("\n".join(new_tokens) + "\n", encoding="utf-8")
    map_out = tmp_path / "map.tsv"
    result = embcli.remap(
        VOCAB_MODEL, "lookup_emb", to=tmp_path / "to.txt", init="zeros", map_out=map_out,
        output=output,
    )  # fmt: skip
    old_table, old_tokens = table_of(VOCAB_MODEL, "lookup_emb")
    new_table, tokens = table_of(output, "lookup_emb")
    assert tokens == ["[UNK]", *new_tokens]
    assert new_table.shape == (len(tokens), 4)
    expected_map = [(0, 0)] + [
        (old_tokens.index(t), j) for j, t in enumerate(tokens) if t in old_tokens and j > 0
    ]
    assert result.index_map == expected_map
    assert map_out.read_text() == "".join(f"{a}\t{b}\n" for a, b in expected_map)
    for old, new in expected_map:
        assert new_table[new].tobytes() == old_table[old].tobytes()
    for j, token in enumerate(tokens):
        if token not in old_tokens:
            assert not new_table[j].any()
    dropped = [t for t in old_tokens[1:] if t not in tokens]
    assert result.dropped == dropped
    asked = [t for t in tokens if t in old_tokens] + dropped
    report = keras_lookup(output, "lookup_emb", "lookup", asked)
    assert report["input_dim"] == len(tokens)
    for token, row, vector in zip(asked, report["ids"], report["rows"], strict=True):
        if token in dropped:
            assert row == 0  # OOV
        else:
            assert tokens[row] == token
            np.testing.assert_array_equal(np.float32(vector), old_table[old_tokens.index(token)])
    if "red" in tokens and "grün" in tokens:
        before = keras_lookup(VOCAB_MODEL, "lookup_emb", "lookup", ["red"])
        np.testing.assert_array_equal(report["out"], before["out"])


@pytest.mark.keras
def test_remap_inline_text_vectorization_vocabulary(tmp_path):
    output = tmp_path / "t.keras"
    new_tokens = ["東京", "the", "zebra", "cat", "café"]
    embcli.remap(VOCAB_MODEL, "tok_emb", to=new_tokens, output=output)
    old_table, _ = table_of(VOCAB_MODEL, "tok_emb")
    _, tokens = table_of(output, "tok_emb")
    assert tokens == ["", "[UNK]", *new_tokens]
    report = keras_lookup(output, "tok_emb", "tv", ["東京", "the", "cat", "café", "naïve"])
    assert report["ids"] == [2, 3, 5, 6, 1]
    for index, token in enumerate(["東京", "the", "cat", "café"]):
        np.testing.assert_array_equal(
            np.float32(report["rows"][index]), old_table[TV_TOKENS.index(token)]
        )
    before = keras_lookup(VOCAB_MODEL, "tok_emb", "tv", ["the"])
    np.testing.assert_array_equal(report["out"], before["out"])


@pytest.mark.keras
def test_rename_keeps_the_row(tmp_path):
    output = tmp_path / "n.keras"
    changed = embcli.rename_tokens(
        VOCAB_MODEL, "lookup_emb", renames={"bleu": "blue"}, output=output
    )
    assert changed == [(5, "bleu", "blue")]
    old_table, _ = table_of(VOCAB_MODEL, "lookup_emb")
    new_table, tokens = table_of(output, "lookup_emb")
    assert tokens[5] == "blue" and new_table.tobytes() == old_table.tobytes()
    report = keras_lookup(output, "lookup_emb", "lookup", ["blue", "bleu"])
    assert report["ids"] == [5, 0]


def test_rename_refuses_a_token_present(tmp_path):
    with pytest.raises(errors.BadVocabulary, match="in the vocabulary already"):
        embcli.rename_tokens(
            VOCAB_MODEL, "lookup_emb", renames={"bleu": "red"}, output=tmp_path / "x.keras"
        )
    assert not (tmp_path / "x.keras").exists()


def weights_with_vocabulary(tmp_path, rows=30):
    vocabulary = tmp_path / "v.txt"
    vocabulary.write_text("".join(f"t{i}\n" for i in range(rows)), encoding="utf-8")
    return FIXTURES / "k3.weights.h5", vocabulary


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_remap_there_and_back_restores_the_kept_rows(tmp_path_factory, data):
    tmp_path = tmp_path_factory.mktemp("roundtrip")
    model, vocabulary = weights_with_vocabulary(tmp_path)
    original = [f"t{i}" for i in range(30)]
    kept = data.draw(st.lists(st.sampled_from(original), unique=True, min_size=1, max_size=30))
    extra = data.draw(st.lists(st.sampled_from(["n1", "n2", "n3"]), unique=True, max_size=3))
    order = data.draw(st.permutations(kept + extra))
    there = tmp_path / "there.weights.h5"
    embcli.remap(model, "positions", to=list(order), vocab=vocabulary, output=there)
    beside = tmp_path / "there.vocab.txt"
    assert read_token_list(beside) == list(order)
    back = tmp_path / "back.weights.h5"
    embcli.remap(there, "positions", to=original, vocab=beside, init="zeros", output=back)
    before, _ = table_of(model, "positions")
    after, _ = table_of(back, "positions")
    for i, token in enumerate(original):
        if token in kept:
            assert after[i].tobytes() == before[i].tobytes()
        else:
            assert not after[i].any()


def test_remap_refusals(tmp_path):
    with pytest.raises(errors.BadVocabulary, match="twice"):
        embcli.remap(VOCAB_MODEL, "lookup_emb", to=["red", "red"], output=tmp_path / "a.keras")
    with pytest.raises(errors.NoVocabulary):
        embcli.remap(
            FIXTURES / "k3_functional.keras", "words", to=["a"], output=tmp_path / "b.keras"
        )
    assert sorted(tmp_path.iterdir()) == []


@given(st.lists(st.text(), min_size=1, max_size=20))
def test_token_lists_read_back_exactly(tokens):
    lines = token_list_text(tokens).split("\n")[:-1]
    assert [decode_line(line) for line in lines] == tokens
    assert all("\n" not in encode_token(t) and "\r" not in encode_token(t) for t in tokens)


def test_vocab_command_exact_output(runner, tmp_path):
    result = runner.invoke(cli, ["vocab", str(VOCAB_MODEL), "-l", "lookup_emb"])
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "index  token",
        "    0  [UNK]",
        "    1  red",
        "    2  grün",
        "    3  żółty",
        "    4  niebieski",
        "    5  bleu",
    ]
    assert result.stderr == "6 tokens from asset:layers/string_lookup/vocabulary.txt\n"
    result = runner.invoke(cli, ["vocab", str(VOCAB_MODEL), "-l", "tok_emb", "--json"])
    assert json.loads(result.stdout) == {
        "layer": "tok_emb",
        "source": "config:tv",
        "tokens": TV_TOKENS,
    }
    result = runner.invoke(cli, ["vocab", str(VOCAB_MODEL), "-l", "tok_emb", "--csv"])
    assert result.stdout.splitlines()[:3] == ["index,token", "0,", "1,[UNK]"]
    out = tmp_path / "tv.txt"
    result = runner.invoke(cli, ["vocab", str(VOCAB_MODEL), "-l", "tok_emb", "-o", str(out)])
    assert result.exit_code == 0 and read_token_list(out) == TV_TOKENS
    result = runner.invoke(cli, ["vocab", str(FIXTURES / "k3_functional.keras"), "-l", "words"])
    assert result.exit_code == 1
    assert result.output == "Error: no vocabulary is known for words; give one with --vocab FILE\n"


def test_remap_command(runner, tmp_path):
    (tmp_path / "to.txt").write_text("grün\nrouge\nred\n", encoding="utf-8")
    output = tmp_path / "r.keras"
    args = ["remap", str(VOCAB_MODEL), "-l", "lookup_emb", "--to", str(tmp_path / "to.txt")]
    result = runner.invoke(cli, [*args, "-o", str(output), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert {k: record[k] for k in ("layer", "old_rows", "new_rows", "kept", "added", "dropped")} == {
        "layer": "lookup_emb", "old_rows": 6, "new_rows": 4, "kept": 3, "added": 1, "dropped": 3,
    }  # fmt: skip
    result = runner.invoke(cli, [*args, "-o", str(output)])
    assert result.exit_code == 1 and "exists; use --force to replace it" in result.output
    result = runner.invoke(cli, args)
    assert result.exit_code == 2


@pytest.mark.parametrize("preset", ["bert_masked_lm", "gpt2_causal_lm", "llama_backbone"])
def test_a_keras_hub_tokenizer_vocabulary_is_not_remapped_or_renamed(runner, tmp_path, preset):
    folder = FIXTURES / "hub" / preset
    tokens = tmp_path / "tokens.txt"
    listed = runner.invoke(cli, ["vocab", str(folder), "-l", "token_embedding", "-o", str(tokens)])
    assert listed.exit_code == 0, listed.output
    kept = tokens.read_text(encoding="utf-8").splitlines()[:20]
    tokens.write_text("\n".join(reversed(kept)) + "\n", encoding="utf-8")
    first = kept[5]
    for args in (
        [
            "remap",
            str(folder),
            "-l",
            "token_embedding",
            "--to",
            str(tokens),
            "-o",
            str(tmp_path / "remapped"),
        ],
        [
            "vocab",
            str(folder),
            "-l",
            "token_embedding",
            "--rename",
            f"{first}=embcli_new",
            "-o",
            str(tmp_path / "renamed"),
        ],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: assets/tokenizer/")
        assert "is a keras-hub tokenizer's vocabulary" in result.output
        assert (
            "can append tokens to it (resize) but not reorder, drop or rename them" in result.output
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.txt"]
