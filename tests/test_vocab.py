"""Vocabularies: the row embcli names for a word is the row Keras's own lookup layer maps
that word to, for TextVectorization, StringLookup and IntegerLookup, inline or in assets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, MANIFEST, fixture_names

import embcli
from embcli.cli import cli
from embcli.errors import BadVocabulary, UnknownToken
from embcli.model import find_table, list_tables, open_model, read_rows
from embcli.vocab import Vocabulary, find_vocabulary, load_vocabulary_file, table_vocabulary

VOCAB_FIXTURE = FIXTURES / "k3_vocab.keras"

# Builds small models with real Keras and records, for each table, the lookup layer's
# vocabulary and the index it maps each probe word to.
_BUILD = r"""
import json, os, sys
import numpy as np
import keras
from keras import layers

out = sys.argv[1]
oracle = {}

def probe(model_file, table, lookup, words, integer=False):
    ids = {}
    for word in words:
        value = np.array([word], dtype="int64" if integer else object)
        ids[str(word)] = int(np.asarray(lookup(value)).reshape(-1)[0])
    vocab = [str(t) for t in lookup.get_vocabulary()]
    oracle.setdefault(model_file, {})[table] = {"vocabulary": vocab, "ids": ids}

# IntegerLookup, adapted (vocabulary in assets), mask 0, two OOV rows, through a Reshape.
il = layers.IntegerLookup(num_oov_indices=2, mask_token=0, name="il")
il.adapt(np.array([[5, 7, 7, 9, 9, 9, 12]]))
ids = keras.Input(shape=(4,), dtype="int64")
raw = keras.Input(shape=(4,), dtype="int64")
emb = layers.Embedding(il.vocabulary_size(), 3, name="int_emb")(layers.Reshape((4,))(il(ids)))
plain = layers.Embedding(il.vocabulary_size(), 3, name="raw_emb")(raw)
model = keras.Model([ids, raw], [emb, plain])
model.save(os.path.join(out, "int_adapted.keras"))
probe("int_adapted.keras", "int_emb", il, [0, 5, 7, 9, 12], integer=True)

# IntegerLookup, inline vocabulary, mask 0, two OOV rows, negative oov_token.
il2 = layers.IntegerLookup(vocabulary=[30, 10, 20], num_oov_indices=2, mask_token=0,
                           oov_token=-7, name="il_inline")
ids = keras.Input(shape=(2,), dtype="int64")
model = keras.Model(ids, layers.Embedding(il2.vocabulary_size(), 3, name="inline_emb")(il2(ids)))
model.save(os.path.join(out, "int_inline.keras"))
probe("int_inline.keras", "inline_emb", il2, [0, 30, 10, 20], integer=True)

# StringLookup with a mask and three OOV rows, adapted, in a Sequential model.
sl = layers.StringLookup(mask_token="[MASK]", num_oov_indices=3, oov_token="<oov>", name="sl")
sl.adapt(np.array([["zebra", "ähre", "ähre", "東", "東", "東"]]))
model = keras.Sequential([keras.Input(shape=(2,), dtype="string"), sl,
                          layers.Embedding(sl.vocabulary_size(), 3, name="seq_emb")])
model.save(os.path.join(out, "string_sequential.keras"))
probe("string_sequential.keras", "seq_emb", sl, ["[MASK]", "zebra", "ähre", "東"])

# StringLookup given its special tokens inline: Keras drops them from the front.
sl2 = layers.StringLookup(vocabulary=["", "[UNK]", "b", "a", "c"], mask_token="", name="sl2")
text = keras.Input(shape=(1,), dtype="string")
model = keras.Model(text, layers.Embedding(sl2.vocabulary_size(), 3, name="specials_emb")(sl2(text)))
model.save(os.path.join(out, "string_specials.keras"))
probe("string_specials.keras", "specials_emb", sl2, ["", "a", "b", "c"])

# An adapted TextVectorization feeding an Embedding inside a nested model, next to a
# StringLookup of the same size feeding another table: only the graph tells them apart.
tv = layers.TextVectorization(output_sequence_length=3, name="tv")
tv.adapt(np.array(["un deux trois", "un deux", "un"]))
sl3 = layers.StringLookup(name="sl3", num_oov_indices=2)
sl3.adapt(np.array([["x", "y", "y", "z"]]))
inner_in = keras.Input(shape=(3,), dtype="int64")
inner = keras.Model(inner_in, layers.Embedding(tv.vocabulary_size(), 2, name="nested_emb")(inner_in),
                    name="inner")
text = keras.Input(shape=(), dtype="string")
cats = keras.Input(shape=(2,), dtype="string")
model = keras.Model([text, cats], [inner(tv(text)),
                                   layers.Embedding(sl3.vocabulary_size(), 2, name="cat_emb")(sl3(cats))])
assert tv.vocabulary_size() == sl3.vocabulary_size()
model.save(os.path.join(out, "nested.keras"))
probe("nested.keras", "nested_emb", tv._lookup_layer, ["", "un", "deux", "trois"])
probe("nested.keras", "cat_emb", sl3, ["x", "y", "z"])

# The legacy HDF5 writer keeps an inline vocabulary in model_config.
tv2 = layers.TextVectorization(vocabulary=["ünï", "côdé", "x"], output_sequence_length=2, name="tv2")
text = keras.Input(shape=(), dtype="string")
model = keras.Model(text, layers.Embedding(5, 2, name="legacy_emb")(tv2(text)))
model.save(os.path.join(out, "legacy.h5"))
probe("legacy.h5", "legacy_emb", tv2._lookup_layer, ["", "ünï", "côdé", "x"])

with open(os.path.join(out, "oracle.json"), "w", encoding="utf-8") as handle:
    json.dump(oracle, handle, ensure_ascii=False)
"""


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("vocab_models")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [sys.executable, "-c", _BUILD, str(folder)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    oracle = json.loads((folder / "oracle.json").read_text(encoding="utf-8"))
    return folder, oracle


ORACLE_CASES = [
    ("int_adapted.keras", "int_emb", "asset:layers/integer_lookup/vocabulary.txt"),
    ("int_inline.keras", "inline_emb", "config:il_inline"),
    ("string_sequential.keras", "seq_emb", "asset:layers/string_lookup/vocabulary.txt"),
    ("string_specials.keras", "specials_emb", "config:sl2"),
    ("nested.keras", "nested_emb", "asset:layers/text_vectorization/vocabulary.txt"),
    ("nested.keras", "cat_emb", "asset:layers/string_lookup/vocabulary.txt"),
    ("legacy.h5", "legacy_emb", "config:tv2"),
]


@pytest.mark.parametrize(("model_file", "table_name", "source"), ORACLE_CASES)
def test_rows_match_keras_lookup(built, model_file, table_name, source):
    folder, oracle = built
    expected = oracle[model_file][table_name]
    with open_model(folder / model_file) as model:
        table = find_table(model, table_name)
        vocabulary = find_vocabulary(model, table)
    assert vocabulary is not None
    assert vocabulary.source == source
    assert vocabulary.tokens == expected["vocabulary"]
    assert len(vocabulary) == table.rows
    for word, row in expected["ids"].items():
        assert vocabulary.row_of(word) == row, word


def test_special_rows_are_counted(built):
    folder, oracle = built
    with open_model(folder / "int_adapted.keras") as model:
        vocabulary = find_vocabulary(model, find_table(model, "int_emb"))
    assert vocabulary.specials == 3
    assert vocabulary.tokens[:3] == ["0", "-1", "-1"]
    assert vocabulary.rows_of("-1") == [1, 2]
    assert vocabulary.row_of("-1") == 1


def test_a_table_fed_by_raw_ids_has_no_vocabulary(built):
    folder, _ = built
    with open_model(folder / "int_adapted.keras") as model:
        table = find_table(model, "raw_emb")
        assert table.rows == find_table(model, "int_emb").rows
        assert find_vocabulary(model, table) is None


def test_fixture_vocabularies_match_the_manifest():
    with open_model(VOCAB_FIXTURE) as model:
        tables = list_tables(model)
        for entry in MANIFEST["k3_vocab.keras"]["tables"]:
            table = next(t for t in tables if t.name == entry["name"])
            vocabulary = find_vocabulary(model, table)
            assert vocabulary is not None
            assert vocabulary.tokens == entry["vocabulary"]


def test_fixture_sources():
    with open_model(VOCAB_FIXTURE) as model:
        sources = {t.name: find_vocabulary(model, t).source for t in list_tables(model)}
    assert sources == {
        "tok_emb": "config:tv",
        "lookup_emb": "asset:layers/string_lookup/vocabulary.txt",
    }


@pytest.mark.parametrize("name", [n for n in fixture_names() if n != "k3_vocab.keras"])
def test_models_without_lookup_layers_have_no_vocabulary(name):
    with open_model(FIXTURES / name) as model:
        for table in list_tables(model):
            assert find_vocabulary(model, table) is None


# Config data: the graph walk, without Keras ---------------------------------------------


def functional(layers: list) -> dict:
    return {"class_name": "Functional", "config": {"name": "m", "layers": layers}}


def layer(class_name: str, name: str, inputs: list[str], **config) -> dict:
    nodes = (
        [
            {
                "args": [
                    {"class_name": "__keras_tensor__", "config": {"keras_history": [i, 0, 0]}}
                    for i in inputs
                ],
                "kwargs": {},
            }
        ]
        if inputs
        else []
    )
    return {
        "class_name": class_name,
        "name": name,
        "config": {"name": name, **config},
        "inbound_nodes": nodes,
    }


class ConfigOnly:
    """A ModelFile stand-in that answers only config() and asset()."""

    def __init__(self, config: dict, assets: dict | None = None) -> None:
        self._config = config
        self._assets = assets or {}

    def config(self):
        return self._config

    def asset(self, name):
        return self._assets.get(name)


def table_for(name: str, rows: int, owner: str = ""):
    from embcli.formats.base import Table

    return Table(
        name=name,
        qualified=name,
        class_name="Embedding",
        shape=(rows, 2),
        dtype="float32",
        weight=f"{name}/vars/0",
        owner=owner,
    )


LOOKUP_A = {
    "vocabulary": ["a", "b"],
    "num_oov_indices": 1,
    "mask_token": None,
    "oov_token": "[UNK]",
    "output_mode": "int",
    "invert": False,
}
LOOKUP_B = {**LOOKUP_A, "vocabulary": ["c", "d"]}


def test_two_lookups_through_concatenate_are_ambiguous():
    config = functional(
        [
            layer("InputLayer", "in", []),
            layer("StringLookup", "la", ["in"], **LOOKUP_A),
            layer("StringLookup", "lb", ["in"], **LOOKUP_B),
            layer("Concatenate", "cat", ["la", "lb"]),
            layer("Embedding", "emb", ["cat"]),
        ]
    )
    assert find_vocabulary(ConfigOnly(config), table_for("emb", 3)) is None


def test_graph_picks_the_feeding_lookup_among_two():
    config = functional(
        [
            layer("InputLayer", "in", []),
            layer("StringLookup", "la", ["in"], **LOOKUP_A),
            layer("StringLookup", "lb", ["in"], **LOOKUP_B),
            layer("Flatten", "flat", ["lb"]),
            layer("Embedding", "emb", ["flat"]),
        ]
    )
    vocabulary = find_vocabulary(ConfigOnly(config), table_for("emb", 3))
    assert vocabulary.tokens == ["[UNK]", "c", "d"]
    assert vocabulary.source == "config:lb"


def test_a_layer_that_changes_ids_breaks_the_chain_but_one_lookup_of_the_right_size_is_used():
    config = functional(
        [
            layer("InputLayer", "in", []),
            layer("StringLookup", "la", ["in"], **LOOKUP_A),
            layer("Lambda", "shift", ["la"]),
            layer("Embedding", "emb", ["shift"]),
        ]
    )
    assert find_vocabulary(ConfigOnly(config), table_for("emb", 3)).source == "config:la"
    assert find_vocabulary(ConfigOnly(config), table_for("emb", 4)) is None


def test_lookups_that_do_not_output_ids_are_ignored():
    for change in ({"invert": True}, {"output_mode": "multi_hot"}):
        config = functional(
            [
                layer("InputLayer", "in", []),
                layer("StringLookup", "la", ["in"], **{**LOOKUP_A, **change}),
                layer("Embedding", "emb", ["la"]),
            ]
        )
        assert find_vocabulary(ConfigOnly(config), table_for("emb", 3)) is None


def test_legacy_inbound_nodes_are_followed():
    config = functional(
        [
            {"class_name": "InputLayer", "config": {"name": "in"}, "inbound_nodes": []},
            {
                "class_name": "StringLookup",
                "config": {"name": "la", **LOOKUP_A},
                "inbound_nodes": [[["in", 0, 0, {}]]],
            },
            {
                "class_name": "StringLookup",
                "config": {"name": "lb", **LOOKUP_B},
                "inbound_nodes": [[["in", 0, 0, {}]]],
            },
            {
                "class_name": "Embedding",
                "config": {"name": "emb"},
                "inbound_nodes": [[["la", 0, 0, {}]]],
            },
        ]
    )
    assert find_vocabulary(ConfigOnly(config), table_for("emb", 3)).source == "config:la"


def test_integer_lookup_tokens_are_text():
    config = functional(
        [
            layer("InputLayer", "in", []),
            layer(
                "IntegerLookup",
                "li",
                ["in"],
                vocabulary=[7, 3],
                mask_token=0,
                oov_token=-1,
                num_oov_indices=1,
                output_mode="int",
                invert=False,
            ),
            layer("Embedding", "emb", ["li"]),
        ]
    )
    vocabulary = find_vocabulary(ConfigOnly(config), table_for("emb", 4))
    assert vocabulary.tokens == ["0", "-1", "7", "3"]
    assert vocabulary.row_of("3") == 3


def test_asset_vocabulary_is_read_with_keras_line_rules():
    config = functional(
        [
            layer("InputLayer", "in", []),
            layer("StringLookup", "string_lookup", ["in"], **{**LOOKUP_A, "vocabulary": None}),
            layer("Embedding", "emb", ["string_lookup"]),
        ]
    )
    assets = {"layers/string_lookup/vocabulary.txt": "[UNK]\nnaïve\n東京\n\n".encode()}
    vocabulary = find_vocabulary(ConfigOnly(config, assets), table_for("emb", 3))
    assert vocabulary.tokens == ["[UNK]", "naïve", "東京"]
    assert vocabulary.source == "asset:layers/string_lookup/vocabulary.txt"


def test_config_with_odd_values_yields_no_vocabulary():
    config = functional(
        [
            layer("InputLayer", "in", []),
            layer("StringLookup", "la", ["in"], **{**LOOKUP_A, "vocabulary": [{"x": 1}]}),
            layer("Embedding", "emb", ["la"]),
        ]
    )
    assert find_vocabulary(ConfigOnly(config), table_for("emb", 3)) is None
    assert find_vocabulary(ConfigOnly({"config": "nonsense"}), table_for("emb", 3)) is None
    assert find_vocabulary(ConfigOnly(None), table_for("emb", 3)) is None


# Vocabulary files -----------------------------------------------------------------------


def test_vocabulary_file_one_token_a_line(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes("\n[UNK]\ncafé\r\nword with space\n日本\n\n".encode())
    vocabulary = load_vocabulary_file(path)
    assert vocabulary.tokens == ["", "[UNK]", "café", "word with space", "日本"]
    assert vocabulary.source == f"file:{path}"
    assert vocabulary.row_of("日本") == 4


def test_vocabulary_file_tsv_column(tmp_path):
    path = tmp_path / "meta.tsv"
    path.write_text("id\tword\tcount\n0\tthe\t9\n1\tcafé\t3\n", encoding="utf-8")
    assert load_vocabulary_file(path, "word").tokens == ["the", "café"]
    with pytest.raises(BadVocabulary, match="no column 'token'; columns: id, word, count"):
        load_vocabulary_file(path, "token")


def test_vocabulary_file_errors(tmp_path):
    with pytest.raises(BadVocabulary, match="no such file"):
        load_vocabulary_file(tmp_path / "missing.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(BadVocabulary, match="not UTF-8"):
        load_vocabulary_file(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(BadVocabulary, match="holds no tokens"):
        load_vocabulary_file(empty)


def test_unknown_token_is_an_error():
    vocabulary = Vocabulary(["a", "b"], "file:x")
    with pytest.raises(UnknownToken, match="'zz' is not in the vocabulary"):
        vocabulary.row_of("zz")


def test_user_file_overrides_the_model(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("\n".join(f"w{i}" for i in range(10)), encoding="utf-8")
    with open_model(VOCAB_FIXTURE) as model:
        table = find_table(model, "tok_emb")
        assert table_vocabulary(model, table, path).tokens[3] == "w3"
        assert table_vocabulary(model, table).source == "config:tv"


# The CLI ---------------------------------------------------------------------------------


def test_layers_table_shows_vocabularies(runner):
    result = runner.invoke(cli, ["layers", str(VOCAB_FIXTURE)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "name        class      rows  dim  dtype    weight                     vocab  vocab_source",
        "tok_emb     Embedding    10    4  float32  layers/embedding/vars/0       10  config:tv",
        "lookup_emb  Embedding     6    4  float32  layers/embedding_1/vars/0      6  "
        "asset:layers/string_lookup/vocabulary.txt",
    ]


def test_layers_without_vocabulary_keeps_its_columns(runner):
    result = runner.invoke(cli, ["layers", str(FIXTURES / "k3_functional.keras")])
    assert result.exit_code == 0
    assert result.output.splitlines()[0].split() == [
        "name",
        "class",
        "rows",
        "dim",
        "dtype",
        "weight",
    ]
    result = runner.invoke(cli, ["layers", str(FIXTURES / "k3_functional.keras"), "--csv"])
    assert result.output.splitlines()[0] == "name,class,rows,dim,dtype,weight"
    result = runner.invoke(cli, ["layers", str(FIXTURES / "k3_functional.keras"), "--json"])
    assert {(t["vocab"], t["vocab_source"]) for t in json.loads(result.output)} == {(None, None)}


def test_layers_json_and_csv(runner):
    result = runner.invoke(cli, ["layers", str(VOCAB_FIXTURE), "--json"])
    listed = json.loads(result.stdout)
    assert [(t["name"], t["vocab"], t["vocab_source"]) for t in listed] == [
        ("tok_emb", 10, "config:tv"),
        ("lookup_emb", 6, "asset:layers/string_lookup/vocabulary.txt"),
    ]
    result = runner.invoke(cli, ["layers", str(VOCAB_FIXTURE), "--csv"])
    assert result.output.splitlines()[:2] == [
        "name,class,rows,dim,dtype,weight,vocab,vocab_source",
        "tok_emb,Embedding,10,4,float32,layers/embedding/vars/0,10,config:tv",
    ]


def test_layers_shows_spare_rows_past_the_vocabulary(runner, tmp_path):
    padded = tmp_path / "padded.keras"
    embcli.resize(
        FIXTURES / "k3_vocab.keras", "tok_emb", add_tokens=["zebra"], pad_to_multiple=8,
        output=padded,
    )  # fmt: skip
    result = runner.invoke(cli, ["layers", str(padded)])
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "name        class      rows  dim  dtype    weight                     vocab  vocab_source                               spare_rows",
        "tok_emb     Embedding    16    4  float32  layers/embedding/vars/0       11  config:tv                                           5",
        "lookup_emb  Embedding     6    4  float32  layers/embedding_1/vars/0      6  asset:layers/string_lookup/vocabulary.txt           0",
    ]
    listed = json.loads(runner.invoke(cli, ["layers", str(padded), "--json"]).stdout)
    assert [t["spare_rows"] for t in listed] == [5, 0]
    plain = json.loads(
        runner.invoke(cli, ["layers", str(FIXTURES / "k3_vocab.keras"), "--json"]).stdout
    )
    assert [t["spare_rows"] for t in plain] == [0, 0]
    assert (
        "spare_rows" not in runner.invoke(cli, ["layers", str(FIXTURES / "k3_vocab.keras")]).stdout
    )


def test_layers_warns_when_sizes_differ(runner, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("a\nb\nc\n", encoding="utf-8")
    result = runner.invoke(
        cli, ["layers", str(FIXTURES / "k3_functional.keras"), "--vocab", str(path), "--json"]
    )
    assert result.exit_code == 0
    assert [t["vocab"] for t in json.loads(result.stdout)] == [3, 3]
    assert result.stderr.splitlines() == [
        f"warning: words: the vocabulary (file:{path}) has 3 tokens but the table has 50 rows",
        f"warning: positions: the vocabulary (file:{path}) has 3 tokens but the table has 30 rows",
    ]


def test_rows_by_token_json(runner):
    result = runner.invoke(
        cli,
        [
            "rows",
            str(VOCAB_FIXTURE),
            "-l",
            "tok_emb",
            "1",
            "--token",
            "東京",
            "--token",
            "café",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [(r["index"], r["token"]) for r in data["rows"]] == [
        (1, "[UNK]"),
        (9, "東京"),
        (4, "café"),
    ]
    assert list(data["rows"][0]) == ["index", "token", "vector"]
    expected = np.load(FIXTURES / MANIFEST["k3_vocab.keras"]["expected"])
    table = next(k for k in expected.files if k.startswith("tok_emb") or k == "tok_emb")
    np.testing.assert_array_equal(
        np.array(data["rows"][1]["vector"], dtype=np.float32), expected[table][9]
    )


def test_rows_without_vocabulary_have_no_token_key(runner):
    result = runner.invoke(
        cli, ["rows", str(FIXTURES / "k3_functional.keras"), "-l", "words", "0", "--json"]
    )
    assert list(json.loads(result.output)["rows"][0]) == ["index", "vector"]


def test_rows_text_and_csv_gain_a_token_column(runner):
    result = runner.invoke(cli, ["rows", str(VOCAB_FIXTURE), "-l", "tok_emb", "0:3"])
    lines = result.output.splitlines()
    assert lines[0].split() == ["row", "token", "vector"]
    assert [line.split()[1] for line in lines[1:]] == ['""', "[UNK]", "the"]
    result = runner.invoke(
        cli, ["rows", str(VOCAB_FIXTURE), "-l", "lookup_emb", "--token", "grün", "--csv"]
    )
    assert result.output.splitlines()[0] == "index,token,v0,v1,v2,v3"
    assert result.output.splitlines()[1].startswith("2,grün,")


def test_rows_lowercase(runner):
    result = runner.invoke(
        cli,
        ["rows", str(VOCAB_FIXTURE), "-l", "tok_emb", "--token", "CAFÉ", "--lowercase", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"][0]["token"] == "café"


def test_rows_unknown_token(runner):
    result = runner.invoke(cli, ["rows", str(VOCAB_FIXTURE), "-l", "tok_emb", "--token", "dog"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: 'dog' is not in the vocabulary (config:tv)"


def test_rows_token_without_vocabulary(runner):
    result = runner.invoke(
        cli, ["rows", str(FIXTURES / "k3_functional.keras"), "-l", "words", "--token", "dog"]
    )
    assert result.exit_code == 1
    assert "no vocabulary is known for words; give one with --vocab FILE" in result.output


def test_rows_needs_a_row_or_token(runner):
    result = runner.invoke(cli, ["rows", str(VOCAB_FIXTURE), "-l", "tok_emb"])
    assert result.exit_code == 2
    result = runner.invoke(
        cli, ["rows", str(VOCAB_FIXTURE), "-l", "tok_emb", "0", "--vocab-column", "x"]
    )
    assert result.exit_code == 2


def test_rows_with_user_tsv_vocabulary(runner, tmp_path):
    path = tmp_path / "meta.tsv"
    path.write_text("word\tfreq\n" + "".join(f"w{i}\t{i}\n" for i in range(50)), encoding="utf-8")
    result = runner.invoke(
        cli,
        [
            "rows",
            str(FIXTURES / "k3_functional.keras"),
            "-l",
            "words",
            "--vocab",
            str(path),
            "--vocab-column",
            "word",
            "--token",
            "w7",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"][0]["index"] == 7


def read_w2v_binary(path: Path) -> tuple[list[str], np.ndarray]:
    data = path.read_bytes()
    header, _, rest = data.partition(b"\n")
    count, dim = map(int, header.split())
    tokens, vectors, at = [], [], 0
    for _ in range(count):
        space = rest.index(b" ", at)
        tokens.append(rest[at:space].decode("utf-8"))
        vectors.append(np.frombuffer(rest, "<f4", dim, space + 1))
        at = space + 1 + 4 * dim
        assert rest[at : at + 1] == b"\n"
        at += 1
    assert at == len(rest)
    return tokens, np.array(vectors)


def test_export_word2vec_text_and_binary_with_tokens(runner, tmp_path):
    with open_model(VOCAB_FIXTURE) as model:
        table = find_table(model, "tok_emb")
        values = read_rows(model, table, np.arange(table.rows))
    tokens = ["<empty>", "[UNK]", "the", "cat", "café", "日本", "naïve", "über", "straße", "東京"]
    result = runner.invoke(
        cli, ["export", str(VOCAB_FIXTURE), "-l", "tok_emb", "-o", str(tmp_path / "w.txt")]
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "w.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "10 4"
    assert [line.split(" ")[0] for line in lines[1:]] == tokens
    got = np.array([[float(v) for v in line.split(" ")[1:]] for line in lines[1:]], np.float32)
    np.testing.assert_array_equal(got, values)
    result = runner.invoke(
        cli, ["export", str(VOCAB_FIXTURE), "-l", "tok_emb", "-o", str(tmp_path / "w.bin")]
    )
    assert result.exit_code == 0, result.output
    names, vectors = read_w2v_binary(tmp_path / "w.bin")
    assert names == tokens
    np.testing.assert_array_equal(vectors, values)


def test_export_binary_without_vocabulary_names_rows_by_number(runner, tmp_path):
    result = runner.invoke(
        cli,
        [
            "export",
            str(FIXTURES / "k3_functional.keras"),
            "-l",
            "positions",
            "-o",
            str(tmp_path / "p.bin"),
        ],
    )
    assert result.exit_code == 0, result.output
    names, vectors = read_w2v_binary(tmp_path / "p.bin")
    assert names == [str(i) for i in range(30)]
    assert vectors.shape == (30, 4)


def test_export_projector_pair(runner, tmp_path):
    out = tmp_path / "vectors.tsv"
    result = runner.invoke(cli, ["export", str(VOCAB_FIXTURE), "-l", "lookup_emb", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == (
        f"wrote lookup_emb to {out} and its tokens to {tmp_path / 'metadata.tsv'}"
    )
    assert (tmp_path / "metadata.tsv").read_text(encoding="utf-8").splitlines() == [
        "[UNK]",
        "red",
        "grün",
        "żółty",
        "niebieski",
        "bleu",
    ]
    assert len(out.read_text().splitlines()) == 6
    result = runner.invoke(cli, ["export", str(VOCAB_FIXTURE), "-l", "lookup_emb", "-o", str(out)])
    assert result.exit_code == 1
    (tmp_path / "metadata.tsv").unlink()
    result = runner.invoke(cli, ["export", str(VOCAB_FIXTURE), "-l", "lookup_emb", "-o", str(out)])
    assert result.exit_code == 1 and not (tmp_path / "metadata.tsv").exists()
    result = runner.invoke(
        cli, ["export", str(VOCAB_FIXTURE), "-l", "lookup_emb", "-o", str(tmp_path / "words.tsv")]
    )
    assert result.exit_code == 0
    assert (tmp_path / "words_metadata.tsv").exists()


def test_export_projector_without_vocabulary_writes_no_metadata(runner, tmp_path):
    out = tmp_path / "vectors.tsv"
    result = runner.invoke(
        cli, ["export", str(FIXTURES / "k3_functional.keras"), "-l", "words", "-o", str(out)]
    )
    assert result.exit_code == 0
    assert result.stderr.strip() == f"wrote words to {out}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors.tsv"]


def test_export_pads_a_short_vocabulary_with_row_numbers(runner, tmp_path):
    vocab = tmp_path / "v.txt"
    vocab.write_text("zero\none\n", encoding="utf-8")
    out = tmp_path / "p.txt"
    result = runner.invoke(
        cli,
        [
            "export",
            str(FIXTURES / "k3_functional.keras"),
            "-l",
            "positions",
            "--vocab",
            str(vocab),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0
    assert "has 2 tokens but the table has 30 rows" in result.stderr
    names = [line.split(" ")[0] for line in out.read_text().splitlines()[1:]]
    assert names == ["zero", "one"] + [str(i) for i in range(2, 30)]
