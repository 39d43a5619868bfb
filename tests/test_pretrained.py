"""Token-keyed vector files (GloVe, word2vec text and binary, fastText .vec, TSV), and
`assign --by-token`, whose result Keras reloads with the right rows."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, MANIFEST
from oracle import keras_tables

from embcli import pretrained
from embcli.cli import cli
from embcli.commands.assign import VECTOR_FORMATS
from embcli.errors import BadVectors
from embcli.model import find_table, open_model, read_rows
from embcli.pretrained import detect_format, read_token_vectors, vocabulary_vectors
from embcli.vocab import Vocabulary

VOCAB_FIXTURE = FIXTURES / "k3_vocab.keras"
TOKENS = ["the", "café", "日本", "naïve", "zebra", "東京"]


def vectors_for(tokens, dim=4, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (len(tokens), dim)).round(6)


def text_lines(tokens, values, sep=" ", trailing="") -> list[str]:
    return [
        t + sep + sep.join(repr(float(v)) for v in row) + trailing
        for t, row in zip(tokens, values, strict=True)
    ]


def write_glove(path: Path, tokens, values, newline="\n") -> Path:
    path.write_bytes(newline.join(text_lines(tokens, values)).encode() + newline.encode())
    return path


def write_word2vec_text(path: Path, tokens, values, trailing="") -> Path:
    lines = [f"{len(tokens)} {values.shape[1]}"] + text_lines(tokens, values, trailing=trailing)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_word2vec_binary(path: Path, tokens, values, newline=True) -> Path:
    """As word2vec.c writes it (a newline after each vector) or gensim (none)."""
    parts = [f"{len(tokens)} {values.shape[1]}\n".encode()]
    for token, row in zip(tokens, values, strict=True):
        parts.append(
            token.encode() + b" " + row.astype("<f4").tobytes() + (b"\n" if newline else b"")
        )
    path.write_bytes(b"".join(parts))
    return path


def write_tsv(path: Path, tokens, values, header=False) -> Path:
    lines = text_lines(tokens, values, sep="\t")
    if header:
        lines.insert(0, "token\t" + "\t".join(f"d{i}" for i in range(values.shape[1])))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


FILE_KINDS = {
    "glove": ("g.txt", write_glove, "glove"),
    "word2vec": ("w.txt", write_word2vec_text, "word2vec"),
    "fasttext": ("f.vec", lambda p, t, v: write_word2vec_text(p, t, v, trailing=" "), "fasttext"),
    "binary": ("w.bin", write_word2vec_binary, "word2vec-binary"),
    "binary_gensim": (
        "w.bin",
        lambda p, t, v: write_word2vec_binary(p, t, v, False),
        "word2vec-binary",
    ),
    "binary_no_suffix": ("vectors", write_word2vec_binary, "word2vec-binary"),
    "tsv": ("v.tsv", write_tsv, "tsv"),
    "tsv_header": ("v.tsv", lambda p, t, v: write_tsv(p, t, v, header=True), "tsv"),
    "glove_crlf": ("g.txt", lambda p, t, v: write_glove(p, t, v, "\r\n"), "glove"),
}


@pytest.fixture(params=sorted(FILE_KINDS))
def vector_file(request, tmp_path):
    name, writer, fmt = FILE_KINDS[request.param]
    values = vectors_for(TOKENS)
    return writer(tmp_path / name, TOKENS, values), fmt, values


def test_formats_are_detected(vector_file):
    path, fmt, _ = vector_file
    assert detect_format(path) == fmt


@pytest.mark.parametrize("block", [None, 7, 64])
def test_wanted_vectors_are_read_exactly(vector_file, monkeypatch, block):
    path, fmt, values = vector_file
    if block:
        monkeypatch.setattr(pretrained, "BLOCK_BYTES", block)
    wanted = ["東京", "missing", "café", "the"]
    found = read_token_vectors(path, wanted, dim=4)
    assert found.format == fmt and found.dim == 4
    assert found.records == len(TOKENS)
    assert found.skipped == 3
    order = np.argsort(found.positions)
    assert found.positions[order].tolist() == [0, 2, 3]
    expected = values[[TOKENS.index(t) for t in ("東京", "café", "the")]]
    if fmt == "word2vec-binary":
        expected = expected.astype(np.float32)
    np.testing.assert_array_equal(found.vectors[order], expected)


def test_format_can_be_forced(tmp_path):
    path = write_glove(tmp_path / "g.txt", TOKENS, vectors_for(TOKENS))
    assert read_token_vectors(path, ["the"], fmt="glove").vectors.shape == (1, 4)
    with pytest.raises(BadVectors, match="no `count dim` header line, so not word2vec"):
        read_token_vectors(path, ["the"], fmt="word2vec")
    with pytest.raises(BadVectors, match="unknown vector file format 'xml'"):
        read_token_vectors(path, ["the"], fmt="xml")
    assert VECTOR_FORMATS == pretrained.FORMATS


def test_glove_tokens_with_spaces(tmp_path):
    """GloVe 840B has lines whose token holds spaces, such as `. . .`."""
    tokens = [".", ". . .", "at name@x.com", "at", "1 2"]
    values = vectors_for(tokens, dim=3)
    path = write_glove(tmp_path / "g.txt", tokens, values)
    assert detect_format(path) == "glove"
    found = read_token_vectors(path, ["at name@x.com", ".", "at", "1 2", ". . ."])
    assert found.dim == 3
    order = np.argsort(found.positions)
    assert found.positions[order].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(found.vectors[order], values[[2, 0, 3, 4, 1]])
    only_dot = read_token_vectors(path, ["."])
    np.testing.assert_array_equal(only_dot.vectors, values[[0]])
    assert only_dot.skipped == 4


def test_duplicates_keep_the_first(tmp_path):
    values = vectors_for(["a", "b", "a"], dim=2)
    path = write_glove(tmp_path / "g.txt", ["a", "b", "a"], values)
    found = read_token_vectors(path, ["a"])
    np.testing.assert_array_equal(found.vectors, values[[0]])
    assert (found.records, found.duplicates, found.skipped) == (3, 1, 1)


def test_blank_lines_and_no_final_newline(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("\nthe 1 2\n\ncafé 3 4", encoding="utf-8")
    found = read_token_vectors(path, ["café", "the"])
    assert found.records == 2
    assert sorted(map(tuple, found.vectors.tolist())) == [(1.0, 2.0), (3.0, 4.0)]


def test_dimension_mismatch(vector_file):
    path, _, _ = vector_file
    with pytest.raises(
        BadVectors, match=f"{path.name} holds 4-dimensional vectors; the table has dim 5"
    ):
        read_token_vectors(path, ["the"], dim=5)


def test_a_bad_vector_for_a_wanted_token_is_an_error(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("the 1 2 3\ncafé 1 x 3\nzebra 1 2\n", encoding="utf-8")
    assert read_token_vectors(path, ["the"]).vectors.shape == (1, 3)
    with pytest.raises(BadVectors, match="the vector for 'café' is not 3 numbers"):
        read_token_vectors(path, ["café"])
    with pytest.raises(BadVectors, match="the vector for 'zebra' is not 3 numbers"):
        read_token_vectors(path, ["zebra"])


def test_truncated_binary(tmp_path):
    path = write_word2vec_binary(tmp_path / "w.bin", TOKENS, vectors_for(TOKENS))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BadVectors, match="ends after 5 of the 6 vectors its header announces"):
        read_token_vectors(path, ["the"])


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(BadVectors, match="the file is empty"):
        read_token_vectors(tmp_path / "e.txt", ["a"])
    with pytest.raises(BadVectors, match="no such file"):
        read_token_vectors(tmp_path / "nope.txt", ["a"])
    (tmp_path / "t.txt").write_text("a\nb\n")
    with pytest.raises(BadVectors, match="lines hold a token but no values"):
        read_token_vectors(tmp_path / "t.txt", ["a"])


# Matching a vocabulary --------------------------------------------------------------------


def test_coverage_report(tmp_path):
    vocabulary = Vocabulary(
        ["", "[UNK]", "the", "café", "日本", "naïve", "über", "the"], "config:tv", specials=2
    )
    tokens = ["[UNK]", "the", "café", "zebra", "東京", "日本"]
    values = vectors_for(tokens)
    path = write_glove(tmp_path / "glove.txt", tokens, values)
    rows, got, coverage = vocabulary_vectors(vocabulary, 8, path, dim=4)
    assert rows.tolist() == [1, 2, 3, 4, 7]
    np.testing.assert_array_equal(got, values[[0, 1, 2, 5, 1]])
    assert coverage.lines() == [
        "matched 3 of 5 vocabulary tokens (60.0%) in glove.txt (glove, 4-d, 6 vectors)",
        "also matched special tokens: '[UNK]'",
        "unmatched: 'naïve', 'über'",
        "skipped 2 token(s) of glove.txt that the vocabulary lacks",
    ]


def test_coverage_samples_unmatched_tokens(tmp_path):
    vocabulary = Vocabulary([f"w{i}" for i in range(30)], "file:v.txt")
    path = write_glove(tmp_path / "g.txt", ["w3", "w3", "x"], vectors_for("abc"))
    rows, _, coverage = vocabulary_vectors(vocabulary, 20, path)
    assert rows.tolist() == [3]
    assert coverage.lines() == [
        "matched 1 of 20 vocabulary tokens (5.0%) in g.txt (glove, 4-d, 3 vectors)",
        "unmatched (first 10): 'w0', 'w1', 'w2', 'w4', 'w5', 'w6', 'w7', 'w8', 'w9', 'w10'",
        "skipped 1 token(s) of g.txt that the vocabulary lacks",
        "ignored 1 repeated token(s); the first vector given for a token was used",
    ]


def test_lowercase_looks_up_vocabulary_tokens_in_lower_case(tmp_path):
    vocabulary = Vocabulary(["The", "CAFÉ", "the"], "file:v.txt")
    values = vectors_for(["the", "café"])
    path = write_glove(tmp_path / "g.txt", ["the", "café"], values)
    rows, got, coverage = vocabulary_vectors(vocabulary, 3, path, lowercase=True)
    assert rows.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(got, values[[0, 1, 0]])
    assert coverage.matched == coverage.total == 2
    rows, _, _ = vocabulary_vectors(vocabulary, 3, path)
    assert rows.tolist() == [2]


# The CLI, end to end ----------------------------------------------------------------------


def keras_table(path: Path, name: str) -> np.ndarray:
    return keras_tables(path, [name], scratch=path.parent)[name]


@pytest.fixture
def model_copy(tmp_path) -> Path:
    return Path(shutil.copy(VOCAB_FIXTURE, tmp_path / "model.keras"))


def test_assign_by_token_reloads_in_keras(runner, tmp_path, model_copy):
    tokens = ["東京", "the", "zebra", "naïve", "[UNK]"]
    values = vectors_for(tokens)
    source = write_word2vec_text(tmp_path / "vecs.vec", tokens, values, trailing=" ")
    out = tmp_path / "out.keras"
    result = runner.invoke(
        cli,
        [
            "assign",
            str(model_copy),
            "-l",
            "tok_emb",
            "--by-token",
            "--from",
            str(source),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "matched 3 of 8 vocabulary tokens (37.5%) in vecs.vec (fasttext, 4-d, 5 vectors)",
        "also matched special tokens: '[UNK]'",
        "unmatched: 'cat', 'café', '日本', 'über', 'straße'",
        "skipped 1 token(s) of vecs.vec that the vocabulary lacks",
        f"assigned 4 row(s) of tok_emb; wrote {out}",
    ]
    before = np.load(FIXTURES / MANIFEST["k3_vocab.keras"]["expected"])["tok_emb"]
    expected = before.copy()
    expected[[9, 2, 6, 1]] = values[[0, 1, 3, 4]].astype(np.float32)
    np.testing.assert_array_equal(keras_table(out, "tok_emb"), expected)
    with open_model(out) as model:
        other = find_table(model, "lookup_emb")
        with open_model(VOCAB_FIXTURE) as original:
            np.testing.assert_array_equal(
                read_rows(model, other, np.arange(6)), read_rows(original, other, np.arange(6))
            )


def test_assign_by_token_binary_in_place_with_user_vocabulary(runner, tmp_path):
    model = Path(shutil.copy(FIXTURES / "k3_functional.keras", tmp_path / "m.keras"))
    vocab = tmp_path / "words.txt"
    vocab.write_text("\n".join(f"w{i}" for i in range(50)), encoding="utf-8")
    values = vectors_for(["w49", "w0"], dim=8)
    source = write_word2vec_binary(tmp_path / "v.bin", ["w49", "w0"], values)
    result = runner.invoke(
        cli,
        [
            "assign",
            str(model),
            "-l",
            "words",
            "--by-token",
            "--from",
            str(source),
            "--vocab",
            str(vocab),
            "--in-place",
        ],
    )
    assert result.exit_code == 0, result.output
    table = keras_table(model, "words")
    np.testing.assert_array_equal(table[[0, 49]], values[[1, 0]].astype(np.float32))


def test_assign_by_token_dimension_mismatch_writes_nothing(runner, tmp_path, model_copy):
    source = write_glove(tmp_path / "g.txt", ["the"], vectors_for(["the"], dim=5))
    out = tmp_path / "out.keras"
    result = runner.invoke(
        cli,
        [
            "assign",
            str(model_copy),
            "-l",
            "tok_emb",
            "--by-token",
            "--from",
            str(source),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: g.txt holds 5-dimensional vectors; the table has dim 4"
    )
    assert not out.exists()


def test_assign_by_token_with_no_match_writes_nothing(runner, tmp_path, model_copy):
    source = write_glove(tmp_path / "g.txt", ["dog"], vectors_for(["dog"]))
    out = tmp_path / "out.keras"
    result = runner.invoke(
        cli,
        [
            "assign",
            str(model_copy),
            "-l",
            "lookup_emb",
            "--by-token",
            "--from",
            str(source),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 1
    assert "Error: no token of the vocabulary of lookup_emb appears in g.txt" in result.output
    assert not out.exists()


def test_assign_by_token_checks_the_output_before_reading(runner, tmp_path, model_copy):
    source = tmp_path / "huge.txt"
    source.write_text("the 1 2 3 x\n")
    result = runner.invoke(
        cli,
        [
            "assign",
            str(model_copy),
            "-l",
            "tok_emb",
            "--by-token",
            "--from",
            str(source),
            "-o",
            str(model_copy),
        ],
    )
    assert result.exit_code == 1
    assert "exists; use --force" in result.output


def test_assign_by_token_needs_a_vocabulary(runner, tmp_path):
    source = write_glove(tmp_path / "g.txt", ["the"], vectors_for(["the"], dim=8))
    result = runner.invoke(
        cli,
        [
            "assign",
            str(FIXTURES / "k3_functional.keras"),
            "-l",
            "words",
            "--by-token",
            "--from",
            str(source),
            "-o",
            str(tmp_path / "o.keras"),
        ],
    )
    assert result.exit_code == 1
    assert "no vocabulary is known for words; give one with --vocab FILE" in result.output


@pytest.mark.parametrize(
    "extra",
    [
        ["--rows", "1"],
        ["--key", "x"],
        ["--fill", "zeros"],
    ],
)
def test_assign_by_token_usage_errors(runner, tmp_path, extra):
    args = [
        "assign",
        str(VOCAB_FIXTURE),
        "-l",
        "tok_emb",
        "--by-token",
        "-o",
        str(tmp_path / "o.keras"),
    ]
    if "--fill" not in extra:
        args += ["--from", str(tmp_path / "g.txt")]
    result = runner.invoke(cli, args + extra)
    assert result.exit_code == 2


@pytest.mark.parametrize("option", [["--format", "glove"], ["--lowercase"], ["--vocab", "v.txt"]])
def test_token_options_need_by_token(runner, tmp_path, option):
    np.save(tmp_path / "v.npy", np.zeros((1, 4), np.float32))
    result = runner.invoke(
        cli,
        [
            "assign",
            str(VOCAB_FIXTURE),
            "-l",
            "tok_emb",
            "--from",
            str(tmp_path / "v.npy"),
            "--rows",
            "0",
            "-o",
            str(tmp_path / "o.keras"),
            *option,
        ],
    )
    assert result.exit_code == 2
    assert "goes with --by-token" in result.output


@pytest.mark.parametrize("suffix", [".txt", ".bin"])
def test_exported_files_read_back_by_token(runner, tmp_path, suffix):
    out = tmp_path / f"words{suffix}"
    result = runner.invoke(cli, ["export", str(VOCAB_FIXTURE), "-l", "tok_emb", "-o", str(out)])
    assert result.exit_code == 0
    vocabulary = MANIFEST["k3_vocab.keras"]["tables"][0]["vocabulary"]
    found = read_token_vectors(out, vocabulary[1:])
    assert found.format == ("word2vec" if suffix == ".txt" else "word2vec-binary")
    expected = np.load(FIXTURES / MANIFEST["k3_vocab.keras"]["expected"])["tok_emb"]
    order = np.argsort(found.positions)
    assert found.positions[order].tolist() == list(range(9))
    np.testing.assert_array_equal(found.vectors[order].astype(np.float32), expected[1:])


def test_by_token_from_a_projector_pair_round_trip(runner, tmp_path, model_copy):
    """Export, change the vectors file, and assign it back by token."""
    out = tmp_path / "words.txt"
    runner.invoke(cli, ["export", str(model_copy), "-l", "lookup_emb", "-o", str(out)])
    lines = out.read_text(encoding="utf-8").splitlines()
    changed = [lines[0]] + [line.split(" ")[0] + " 0.5 0.25 -1 2" for line in lines[1:]]
    out.write_text("\n".join(changed) + "\n", encoding="utf-8")
    result = runner.invoke(
        cli,
        [
            "assign",
            str(model_copy),
            "-l",
            "lookup_emb",
            "--by-token",
            "--from",
            str(out),
            "--in-place",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0].startswith("matched 5 of 5 vocabulary tokens (100.0%)")
    rows = json.loads(
        runner.invoke(cli, ["rows", str(model_copy), "-l", "lookup_emb", "0:6", "--json"]).stdout
    )["rows"]
    assert {tuple(r["vector"]) for r in rows} == {(0.5, 0.25, -1.0, 2.0)}


def test_progress_reports_every_byte_read(vector_file):
    path, _, _ = vector_file
    seen = []
    read_token_vectors(path, ["the"], dim=4, progress=seen.append)
    size = path.stat().st_size
    header = len(path.read_bytes().partition(b"\n")[0]) + 1
    assert size - header <= sum(seen) <= size
