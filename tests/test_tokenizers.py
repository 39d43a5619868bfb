"""Tokenizer vocabularies read from bytes, checked against what keras-hub reported when it
wrote the fixtures (fixtures/hub/manifest.json), and against hostile input."""

import json
import struct
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embcli.errors import BadArgument, BadVocabulary, EmbcliError, NoVocabulary
from embcli.sentencepiece_model import PieceType, append_user_defined, parse_pieces
from embcli.tokenizer_assets import (
    VocabularyAsset,
    archive_vocabulary_asset,
    archive_vocabulary_assets,
    preset_vocabulary_asset,
    read_asset,
    read_preset_vocabulary,
)
from embcli.tokenizers import (
    BYTE_PAIR,
    HF_TOKENIZER_JSON,
    SENTENCEPIECE,
    WORDPIECE,
    append_tokens,
    kind_of_file,
    read_byte_pair,
    read_hf_tokenizer_json,
    read_sentencepiece,
    read_vocabulary,
    read_vocabulary_file,
    read_wordpiece,
)

HUB = Path(__file__).resolve().parent.parent / "fixtures" / "hub"
MANIFEST = json.loads((HUB / "manifest.json").read_text(encoding="utf-8"))
WITH_TOKENIZER = sorted(name for name, entry in MANIFEST.items() if entry["tokenizer"])


def fixture_files(name: str) -> dict[str, bytes]:
    path = HUB / name
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with zipfile.ZipFile(path) as archive:
        return {member: archive.read(member) for member in archive.namelist()}


def fixture_vocabulary(name: str):
    files = fixture_files(name)
    if (HUB / name).is_dir():
        return read_asset(preset_vocabulary_asset(files), files)
    return read_asset(archive_vocabulary_asset(files, files["config.json"]), files)


# --- the fixtures: every token at the row keras-hub gives it -------------------------


@pytest.mark.parametrize("name", WITH_TOKENIZER)
def test_fixture_vocabulary_is_keras_hubs(name):
    expected = MANIFEST[name]["tokenizer"]
    vocabulary = fixture_vocabulary(name)
    assert vocabulary.kind == expected["kind"]
    assert vocabulary.tokens == expected["vocabulary"]
    assert len(vocabulary) == expected["vocabulary_size"] == MANIFEST[name]["vocabulary_size"]
    for token, row in expected["token_to_id"].items():
        assert vocabulary.ids[token] == row


@pytest.mark.parametrize("name", WITH_TOKENIZER)
def test_keras_hub_special_tokens_are_special(name):
    expected = MANIFEST[name]["tokenizer"]["special_tokens"]
    specials = fixture_vocabulary(name).special_tokens()
    assert {token: specials[token] for token in expected} == expected


@pytest.mark.parametrize("name", WITH_TOKENIZER)
def test_preset_asset_names_what_keras_hub_wrote(name):
    expected = MANIFEST[name]["tokenizer"]
    files = fixture_files(name)
    if (HUB / name).is_dir():
        asset = preset_vocabulary_asset(files)
    else:
        asset = archive_vocabulary_asset(files, files["config.json"])
    assert asset.name in expected["assets"]
    assert asset.tokenizer_class == expected["class"]
    assert (asset.merges is not None) == (expected["kind"] == BYTE_PAIR)


def test_sentencepiece_piece_types_of_a_trained_model():
    pieces = parse_pieces((HUB / "llama_backbone/assets/tokenizer/vocabulary.spm").read_bytes())
    assert [p.type for p in pieces[:3]] == [
        PieceType.UNKNOWN,
        PieceType.CONTROL,
        PieceType.CONTROL,
    ]
    assert pieces[3].text == "<0x00>" and pieces[3].type is PieceType.BYTE
    assert sum(p.type is PieceType.BYTE for p in pieces) == 256
    gemma = parse_pieces((HUB / "gemma_causal_lm/assets/tokenizer/vocabulary.spm").read_bytes())
    kinds = {p.text: p.type for p in gemma}
    assert kinds["<start_of_turn>"] is PieceType.USER_DEFINED
    assert kinds["☃"] is PieceType.USER_DEFINED
    assert kinds["<mask>"] is PieceType.CONTROL


def test_backbone_archive_has_no_tokenizer():
    files = fixture_files("bert_backbone.keras")
    assert archive_vocabulary_assets(files) == []
    with pytest.raises(NoVocabulary, match="no tokenizer vocabulary"):
        archive_vocabulary_asset(files)


def test_read_preset_vocabulary_in_one_call():
    vocabulary = read_preset_vocabulary(fixture_files("t5_backbone"))
    assert vocabulary.tokens == MANIFEST["t5_backbone"]["tokenizer"]["vocabulary"]


# --- WordPiece --------------------------------------------------------------------


def test_wordpiece_lines_are_rows():
    vocabulary = read_wordpiece(b"[PAD]\n[UNK]\nthe\n##s\ncaf\xc3\xa9\n", "vocab.txt")
    assert vocabulary.tokens == ["[PAD]", "[UNK]", "the", "##s", "café"]
    assert vocabulary.special_ids == {0, 1}
    assert vocabulary.source == "vocab.txt"


@pytest.mark.parametrize(
    "data, tokens",
    [
        (b"a\r\nb\r\n", ["a", "b"]),
        (b"a\nb", ["a", "b"]),
        (b"a\rb\r", ["a", "b"]),
        (b"\xef\xbb\xbfa\nb\n", ["\ufeffa", "b"]),
        (b"a\n\nb\n", ["a", "", "b"]),
        (b"a \nb\n", ["a ", "b"]),
    ],
)
def test_wordpiece_line_endings(data, tokens):
    assert read_wordpiece(data).tokens == tokens


def test_a_repeated_token_maps_to_its_last_row():
    # as Hugging Face's BertTokenizer reads it; keras-hub refuses such a vocabulary
    vocabulary = read_wordpiece(b"[PAD]\na\nb\na\n")
    assert vocabulary.tokens == ["[PAD]", "a", "b", "a"]
    assert vocabulary.ids == {"[PAD]": 0, "a": 3, "b": 2}


def test_wordpiece_append_keeps_the_file_and_adds_lines():
    data = b"[PAD]\nthe\n"
    new = append_tokens(WORDPIECE, data, ["<new>", "ü"])
    assert new == b"[PAD]\nthe\n<new>\n\xc3\xbc\n"
    assert read_wordpiece(new).ids["ü"] == 3
    assert append_tokens(WORDPIECE, b"a\r\nb", ["c"]) == b"a\r\nb\r\nc\r\n"


@pytest.mark.parametrize(
    "tokens", [["the"], ["x", "x"], [""], ["a\nb"], "abc", [3], ["\ud800"], [None]]
)
def test_wordpiece_append_refuses_bad_tokens(tokens):
    with pytest.raises(BadArgument):
        append_tokens(WORDPIECE, b"[PAD]\nthe\n", tokens)


@pytest.mark.parametrize("data", [b"", b"\xff\xfe\n", b"\xc3"])
def test_wordpiece_refuses_empty_or_non_utf8(data):
    with pytest.raises(BadVocabulary):
        read_wordpiece(data)


# --- byte-pair vocabulary.json ----------------------------------------------------


def test_byte_pair_ids_are_rows():
    data = json.dumps({"b": 1, "a": 0, "<|endoftext|>": 2}).encode()
    vocabulary = read_byte_pair(data)
    assert vocabulary.tokens == ["a", "b", "<|endoftext|>"]
    assert vocabulary.special_tokens() == {"<|endoftext|>": 2}


@pytest.mark.parametrize(
    "document, message",
    [
        ({"a": 0, "b": 2, "c": 5}, "0..5 without gaps; 3 missing, first: 1, 3, 4$"),
        ({"a": 1}, "1 missing, first: 0"),
        ({"a": 0, "b": 0}, "id 0 is given to 'a' and to 'b'"),
        ({"a": -1}, "negative id"),
        ({"a": "0"}, "not an integer"),
        ({"a": True}, "not an integer"),
        ({"a": 0.0}, "not an integer"),
        ([["a", 0]], "not a JSON object"),
        ({}, "holds no tokens"),
        ({"a": 0, "b": 10**12}, "999999999999 missing, first: 1"),
    ],
)
def test_byte_pair_ids_must_be_a_permutation(document, message):
    with pytest.raises(BadVocabulary, match=message):
        read_byte_pair(json.dumps(document).encode(), "vocab.json")


def test_byte_pair_append_inserts_before_the_closing_brace():
    data = b'{"a": 0, "\\u00fc": 1}\n'
    new = append_tokens(BYTE_PAIR, data, ["<new>", "é"])
    assert new == '{"a": 0, "\\u00fc": 1, "<new>": 2, "é": 3}\n'.encode()
    assert read_byte_pair(new).tokens == ["a", "ü", "<new>", "é"]


def test_byte_pair_append_to_the_fixture_keeps_every_old_byte():
    data = (HUB / "gpt2_causal_lm/assets/tokenizer/vocabulary.json").read_bytes()
    new = append_tokens(BYTE_PAIR, data, ["<|pad|>"])
    assert new[: len(data) - 1] == data[:-1]
    vocabulary = read_byte_pair(new)
    assert vocabulary.tokens[:-1] == MANIFEST["gpt2_causal_lm"]["tokenizer"]["vocabulary"]
    assert vocabulary.tokens[-1] == "<|pad|>"


# --- SentencePiece ----------------------------------------------------------------


def piece_message(text: bytes, score: float | None = None, kind: int | None = None) -> bytes:
    body = b"\x0a" + bytes([len(text)]) + text
    if score is not None:
        body += b"\x15" + struct.pack("<f", score)
    if kind is not None:
        body += b"\x18" + bytes([kind])
    return b"\x0a" + bytes([len(body)]) + body


def test_sentencepiece_by_hand():
    data = piece_message(b"<unk>", 0.0, 2) + piece_message(b"\xe2\x96\x81a", -1.5)
    data += b"\x12\x02\x08\x01"  # a trainer_spec, skipped
    vocabulary = read_sentencepiece(data)
    assert vocabulary.tokens == ["<unk>", "▁a"]
    assert vocabulary.special_ids == {0}
    pieces = parse_pieces(data)
    assert pieces[1].score == -1.5 and pieces[1].type is PieceType.NORMAL


def test_sentencepiece_append_keeps_every_byte():
    data = (HUB / "t5_backbone/assets/tokenizer/vocabulary.spm").read_bytes()
    new = append_tokens(SENTENCEPIECE, data, ["<extra_id_0>", "☃"])
    assert new[: len(data)] == data
    pieces = parse_pieces(new)
    size = MANIFEST["t5_backbone"]["tokenizer"]["vocabulary_size"]
    assert [p.text for p in pieces[size:]] == ["<extra_id_0>", "☃"]
    assert {p.type for p in pieces[size:]} == {PieceType.USER_DEFINED}
    assert [p.text for p in pieces[:size]] == MANIFEST["t5_backbone"]["tokenizer"]["vocabulary"]


def test_sentencepiece_append_refuses_a_known_piece():
    data = (HUB / "t5_backbone/assets/tokenizer/vocabulary.spm").read_bytes()
    with pytest.raises(BadArgument, match="already in the vocabulary"):
        append_user_defined(data, ["</s>"])


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "holds no pieces"),
        (b"\x12\x00", "holds no pieces"),
        (b"\x0a\x05ab", "truncated"),
        (b"\x0a", "truncated inside a number"),
        (b"\x08\x01", "piece 0 is not a message"),
        (b"\x09\x01", "truncated"),
        (b"\x0b", "unsupported wire type 3"),
        (b"\x00", "field number 0"),
        (b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", "longer than 10 bytes"),
        (b"\x0a\x00", "has no text"),
        (b"\x0a\x03\x0a\x01\xff", "not valid UTF-8"),
        (b"\x0a\x05\x0a\x01a\x18\x09", "unknown type 9"),
        (b"\x0a\x05\x0d\x01\x02\x03\x04", "wrong kind"),
        (b"\x10\x05", "holds no pieces"),
        (piece_message(b"a") * 2, "appears as ids 0 and 1"),
        (b"\x0d\x00\x00\x00\x00", "piece 0 is not a message"),
    ],
)
def test_sentencepiece_malformed(data, message):
    with pytest.raises(BadVocabulary, match=message):
        read_sentencepiece(data, "tokenizer.model")


def model_proto(pieces, trainer_vocab_size):
    sentencepiece_model_pb2 = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")

    proto = sentencepiece_model_pb2.ModelProto()
    for text, score, kind in pieces:
        piece = proto.pieces.add()
        piece.piece = text
        if score is not None:
            piece.score = score
        if kind is not None:
            piece.type = kind
    if trainer_vocab_size is not None:
        proto.trainer_spec.vocab_size = trainer_vocab_size
        proto.normalizer_spec.name = "identity"
    return proto


PIECE = st.tuples(
    st.text(min_size=1, max_size=12),
    st.one_of(st.none(), st.floats(width=32, allow_nan=False)),
    st.one_of(st.none(), st.sampled_from([int(t) for t in PieceType])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(PIECE, min_size=1, max_size=30, unique_by=lambda p: p[0]),
    trainer_vocab_size=st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
    added=st.lists(st.text(min_size=1, max_size=8), max_size=4, unique=True),
)
def test_sentencepiece_round_trip_with_protobuf(pieces, trainer_vocab_size, added):
    proto = model_proto(pieces, trainer_vocab_size)
    data = proto.SerializeToString()
    parsed = parse_pieces(data)
    assert [p.text for p in parsed] == [p.piece for p in proto.pieces]
    assert [p.score for p in parsed] == [p.score for p in proto.pieces]
    assert [int(p.type) for p in parsed] == [p.type for p in proto.pieces]

    added = [token for token in added if token not in {p.piece for p in proto.pieces}]
    new = append_user_defined(data, added)
    assert new[: len(data)] == data
    again = type(proto).FromString(new)
    assert [p.piece for p in again.pieces] == [p.piece for p in proto.pieces] + added
    assert [p.type for p in again.pieces[len(pieces) :]] == [PieceType.USER_DEFINED] * len(added)
    assert again.trainer_spec == proto.trainer_spec


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_sentencepiece_hostile_bytes(data):
    try:
        pieces = parse_pieces(data)
    except BadVocabulary:
        return
    assert pieces


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(PIECE, min_size=1, max_size=5, unique_by=lambda p: p[0]),
    cut=st.integers(0, 400),
    flip=st.integers(0, 400),
    byte=st.integers(0, 255),
)
def test_sentencepiece_damaged_models(pieces, cut, flip, byte):
    data = bytearray(model_proto(pieces, 8000).SerializeToString())
    if data:
        data[flip % len(data)] = byte
    damaged = bytes(data[: len(data) - cut % (len(data) + 1)])
    try:
        read_sentencepiece(damaged)
    except BadVocabulary:
        pass


@pytest.mark.parametrize("kind", [WORDPIECE, BYTE_PAIR, SENTENCEPIECE, HF_TOKENIZER_JSON])
@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=120))
def test_every_reader_fails_only_with_bad_vocabulary(kind, data):
    try:
        read_vocabulary(kind, data)
    except BadVocabulary:
        pass


@pytest.mark.parametrize("kind", [BYTE_PAIR, HF_TOKENIZER_JSON])
def test_json_readers_refuse_deep_nesting(kind):
    with pytest.raises(BadVocabulary):
        read_vocabulary(kind, b"[" * 100_000 + b"]" * 100_000)


def test_unknown_kind():
    with pytest.raises(BadVocabulary, match="unknown vocabulary kind"):
        read_vocabulary("bytes", b"a\n")
    with pytest.raises(BadVocabulary, match="unknown vocabulary kind"):
        append_tokens("bytes", b"a\n", ["b"])


# --- Hugging Face tokenizer.json --------------------------------------------------


def hf_document(vocab, added=()):
    return {
        "version": "1.0",
        "added_tokens": list(added),
        "model": {"type": "BPE" if isinstance(vocab, dict) else "Unigram", "vocab": vocab},
    }


def added_token(content, number, special=True):
    return {"id": number, "content": content, "special": special}


def test_hf_map_plus_added_tokens():
    document = hf_document({"a": 0, "b": 1}, [added_token("<s>", 2), added_token("b", 1, False)])
    vocabulary = read_hf_tokenizer_json(json.dumps(document).encode())
    assert vocabulary.tokens == ["a", "b", "<s>"]
    assert vocabulary.special_ids == {2}


def test_hf_unigram_list():
    document = hf_document([["<pad>", 0.0], ["▁a", -2.0]], [added_token("<pad>", 0)])
    vocabulary = read_hf_tokenizer_json(json.dumps(document).encode())
    assert vocabulary.tokens == ["<pad>", "▁a"]
    assert vocabulary.special_ids == {0}


@pytest.mark.parametrize(
    "document, message",
    [
        ({"model": {}}, "no model.vocab"),
        ({"model": {"vocab": 3}}, "neither a map nor a list"),
        (hf_document([["a"], "b"]), r"model.vocab\[1\]"),
        (hf_document([["a", 0], ["a", 1]]), "appears twice"),
        (hf_document({"a": 0}, [{"content": "b"}]), "needs a content and an id"),
        (hf_document({"a": 0}, [added_token("b", 0)]), "id 0 is given to 'a' and to 'b'"),
        (hf_document({"a": 0}, [added_token("b", 3)]), "2 missing, first: 1, 2"),
        (hf_document({"a": 0}, [added_token("b", 1), added_token("b", 2)]), "two ids"),
        ({**hf_document({"a": 0}), "added_tokens": {}}, "added_tokens is not a list"),
    ],
)
def test_hf_malformed(document, message):
    with pytest.raises(BadVocabulary, match=message):
        read_hf_tokenizer_json(json.dumps(document).encode())


def test_hf_append_adds_non_special_added_tokens():
    document = hf_document({"a": 0, "b": 1}, [added_token("<s>", 2)])
    new = append_tokens(HF_TOKENIZER_JSON, json.dumps(document).encode(), ["ü", "<x>"])
    result = json.loads(new)
    assert result["model"] == document["model"]
    assert result["added_tokens"][0] == document["added_tokens"][0]
    assert [(t["content"], t["id"], t["special"]) for t in result["added_tokens"][1:]] == [
        ("ü", 3, False),
        ("<x>", 4, False),
    ]
    assert read_hf_tokenizer_json(new).tokens == ["a", "b", "<s>", "ü", "<x>"]


# --- finding the file --------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kind",
    [
        ("vocab.txt", WORDPIECE),
        ("assets/tokenizer/vocabulary.txt", WORDPIECE),
        ("vocab.json", BYTE_PAIR),
        ("tokenizer.model", SENTENCEPIECE),
        ("vocabulary.spm", SENTENCEPIECE),
        ("tokenizer.json", HF_TOKENIZER_JSON),
        ("merges.txt", None),
    ],
)
def test_kind_of_file(name, kind):
    assert kind_of_file(name) == kind


def test_read_vocabulary_file_by_its_name():
    assert read_vocabulary_file("some/dir/vocab.txt", b"a\nb\n").tokens == ["a", "b"]
    with pytest.raises(BadVocabulary, match="tells no vocabulary format"):
        read_vocabulary_file("words.csv", b"a\n")
    config = (HUB / "t5_backbone" / "tokenizer.json").read_bytes()
    with pytest.raises(BadVocabulary, match="is a keras-hub tokenizer config"):
        read_vocabulary_file("tokenizer.json", config)


def keras_hub_config(class_name, **arguments):
    config = {"config_file": "tokenizer.json", **arguments}
    return json.dumps(
        {"class_name": class_name, "config": config, "registered_name": f"keras_hub>{class_name}"}
    ).encode()


def test_preset_config_names_the_asset_folder():
    files = {
        "tokenizer.json": keras_hub_config("MyTokenizer", config_file="my_tok.json"),
        "assets/my_tok/vocabulary.txt": b"[PAD]\nx\n",
        "assets/tokenizer/vocabulary.spm": b"ignored",
    }
    asset = preset_vocabulary_asset(files)
    assert asset == VocabularyAsset(WORDPIECE, "assets/my_tok/vocabulary.txt", "MyTokenizer")


def test_preset_config_tokens_are_special():
    files = {
        "tokenizer.json": keras_hub_config("Llama3Tokenizer", unsplittable_tokens=["<x>", 3]),
        "assets/tokenizer/vocabulary.json": b'{"x": 0, "<x>": 1}',
    }
    vocabulary = read_preset_vocabulary(files)
    assert vocabulary.special_ids == {1}


def test_preset_with_a_hugging_face_tokenizer_json():
    files = {"tokenizer.json": json.dumps(hf_document({"a": 0})).encode()}
    assert preset_vocabulary_asset(files) == VocabularyAsset(HF_TOKENIZER_JSON, "tokenizer.json")
    assert read_preset_vocabulary(files).tokens == ["a"]


@pytest.mark.parametrize(
    "files, error, message",
    [
        ({}, NoVocabulary, "no tokenizer.json"),
        ({"tokenizer.json": b"[]"}, BadVocabulary, "not a JSON object"),
        ({"tokenizer.json": b"{"}, BadVocabulary, "not valid JSON"),
        ({"tokenizer.json": b"\xff"}, BadVocabulary, "not valid JSON"),
        ({"tokenizer.json": b'{"class_name": 1}'}, BadVocabulary, "not a keras-hub tokenizer"),
        (
            {"tokenizer.json": keras_hub_config("T", config_file="../../etc/passwd")},
            BadVocabulary,
            "not a plain file name",
        ),
        ({"tokenizer.json": keras_hub_config("T")}, NoVocabulary, "no vocabulary under"),
    ],
)
def test_preset_without_a_usable_tokenizer(files, error, message):
    with pytest.raises(error, match=message):
        preset_vocabulary_asset(files)


def test_read_asset_of_a_missing_file():
    with pytest.raises(NoVocabulary, match="is missing"):
        read_asset(VocabularyAsset(WORDPIECE, "assets/tokenizer/vocabulary.txt"), {})


def test_archive_lookup_layer_vocabularies_are_not_tokenizers():
    names = [
        "assets/layers/string_lookup/vocabulary.txt",
        "assets/preprocessor/tokenizer/vocabulary.txt",
        "assets/other/vocabulary.spm",
        "assets/vocabulary.json",
        "config.json",
    ]
    found = archive_vocabulary_assets(names)
    assert [(a.kind, a.name) for a in found] == [
        (SENTENCEPIECE, "assets/other/vocabulary.spm"),
        (WORDPIECE, "assets/preprocessor/tokenizer/vocabulary.txt"),
    ]
    with pytest.raises(NoVocabulary, match="2 tokenizer vocabularies"):
        archive_vocabulary_asset(names)


def test_errors_are_embcli_errors():
    for error in (BadVocabulary, NoVocabulary, BadArgument):
        assert issubclass(error, EmbcliError)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
CONFIG_KEYS = st.sampled_from(
    ["class_name", "config", "config_file", "model", "vocab", "added_tokens", "unsplittable_tokens"]
)


@settings(max_examples=200, deadline=None)
@given(
    config=st.dictionaries(CONFIG_KEYS, JSON_VALUES | st.dictionaries(CONFIG_KEYS, JSON_VALUES)),
    names=st.lists(
        st.sampled_from(
            [
                "assets/tokenizer/vocabulary.txt",
                "assets/tokenizer/vocabulary.json",
                "assets/tokenizer/merges.txt",
                "assets/tokenizer/vocabulary.spm",
                "assets/x/vocabulary.spm",
            ]
        ),
        max_size=4,
    ),
    content=st.binary(max_size=40),
)
def test_hostile_presets_fail_only_with_vocabulary_errors(config, names, content):
    files = {"tokenizer.json": json.dumps(config).encode(), **dict.fromkeys(names, content)}
    try:
        read_preset_vocabulary(files)
    except (BadVocabulary, NoVocabulary):
        pass
    try:
        asset = archive_vocabulary_asset(files, files["tokenizer.json"])
        read_asset(asset, files)
    except (BadVocabulary, NoVocabulary):
        pass
