"""Real tokenizers as the oracle: keras-hub (in a subprocess, so that Keras never shares
this interpreter with tf_keras) and Hugging Face `tokenizers` build themselves from the
bytes embcli reads or writes, and must give every token the row embcli gives it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_tokenizers import HUB, MANIFEST, WITH_TOKENIZER, fixture_files

from embcli.tokenizer_assets import archive_vocabulary_asset, preset_vocabulary_asset, read_asset
from embcli.tokenizers import (
    BYTE_PAIR,
    HF_TOKENIZER_JSON,
    SENTENCEPIECE,
    WORDPIECE,
    append_tokens,
    read_hf_tokenizer_json,
)

ADDED = {
    WORDPIECE: ["[NEW]", "ünïcode", "##zz"],
    BYTE_PAIR: ["<|added|>", "ĠnewÃ©", "zzz"],
    SENTENCEPIECE: ["<added>", "☂", "▁brand_new"],
}

_ORACLE = r"""
import json, sys
import keras, keras_hub

def build(job):
    files = job["files"]
    if job.get("preset"):
        return keras_hub.tokenizers.Tokenizer.from_preset(job["preset"])
    if job["kind"] == "wordpiece":
        return keras_hub.tokenizers.WordPieceTokenizer(vocabulary=files["vocabulary"])
    if job["kind"] == "bpe":
        return keras_hub.tokenizers.BytePairTokenizer(
            vocabulary=files["vocabulary"], merges=files["merges"]
        )
    return keras_hub.tokenizers.SentencePieceTokenizer(proto=files["vocabulary"])

results = {}
for key, job in json.load(open(sys.argv[1])).items():
    tokenizer = build(job)
    result = {
        "class": type(tokenizer).__name__,
        "vocabulary_size": int(tokenizer.vocabulary_size()),
        "ids": [int(tokenizer.token_to_id(t)) for t in job["tokens"]],
    }
    if job.get("text"):
        result["tokenized"] = [int(i) for i in keras.ops.convert_to_numpy(tokenizer.tokenize(job["text"]))]
    results[key] = result
json.dump(results, open(sys.argv[2], "w"))
"""


def run_oracle(jobs: dict, scratch: Path) -> dict:
    job_file, out_file = scratch / "jobs.json", scratch / "results.json"
    job_file.write_text(json.dumps(jobs), encoding="utf-8")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_USE_LEGACY_KERAS", None)
    result = subprocess.run(
        [sys.executable, "-c", _ORACLE, str(job_file), str(out_file)],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise AssertionError(f"keras-hub failed:\n{result.stderr[-4000:]}")
    return json.loads(out_file.read_text(encoding="utf-8"))


def locate(name: str, files: dict[str, bytes]):
    if (HUB / name).is_dir():
        return preset_vocabulary_asset(files)
    return archive_vocabulary_asset(files, files["config.json"])


def write_vocabulary_files(folder: Path, asset, files, vocabulary_bytes: bytes) -> dict:
    folder.mkdir(parents=True)
    written = {"vocabulary": str(folder / asset.name.rsplit("/", 1)[-1])}
    Path(written["vocabulary"]).write_bytes(vocabulary_bytes)
    if asset.merges:
        written["merges"] = str(folder / "merges.txt")
        Path(written["merges"]).write_bytes(files[asset.merges])
    return written


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """Each case: (tokens embcli reads, what keras-hub reports for them)."""
    scratch = tmp_path_factory.mktemp("tokenizer-oracle")
    jobs, cases = {}, {}
    for name in WITH_TOKENIZER:
        files = fixture_files(name)
        asset = locate(name, files)
        vocabulary = read_asset(asset, files)
        added = ADDED[asset.kind]
        grown_bytes = append_tokens(asset.kind, files[asset.name], added)
        grown = read_asset(
            type(asset)(asset.kind, asset.name, merges=asset.merges), {asset.name: grown_bytes}
        )
        plain = write_vocabulary_files(scratch / name / "plain", asset, files, files[asset.name])
        bigger = write_vocabulary_files(scratch / name / "grown", asset, files, grown_bytes)
        text = f"the {added[0]} fox" if asset.kind == SENTENCEPIECE else None
        jobs[f"{name}:generic"] = {"kind": asset.kind, "files": plain, "tokens": vocabulary.tokens}
        jobs[f"{name}:grown"] = {
            "kind": asset.kind,
            "files": bigger,
            "tokens": grown.tokens,
            "text": text,
        }
        cases[f"{name}:generic"] = vocabulary.tokens
        cases[f"{name}:grown"] = grown.tokens
        if (HUB / name).is_dir():
            preset = scratch / name / "preset"
            shutil.copytree(HUB / name, preset)
            jobs[f"{name}:preset"] = {
                "preset": str(preset),
                "files": {},
                "tokens": vocabulary.tokens,
            }
            cases[f"{name}:preset"] = vocabulary.tokens
            grown_preset = scratch / name / "grown_preset"
            shutil.copytree(HUB / name, grown_preset)
            (grown_preset / asset.name).write_bytes(grown_bytes)
            jobs[f"{name}:grown_preset"] = {
                "preset": str(grown_preset),
                "files": {},
                "tokens": grown.tokens,
            }
            cases[f"{name}:grown_preset"] = grown.tokens
    results = run_oracle(jobs, scratch)
    return {key: (cases[key], results[key]) for key in cases}


CASES = [
    f"{name}:{variant}"
    for name in WITH_TOKENIZER
    for variant in ("generic", "grown")
    + (("preset", "grown_preset") if (HUB / name).is_dir() else ())
]


@pytest.mark.keras
@pytest.mark.tensorflow
@pytest.mark.parametrize("case", CASES)
def test_keras_hub_gives_every_token_embcli_s_row(oracle, case):
    tokens, reported = oracle[case]
    assert reported["vocabulary_size"] == len(tokens)
    assert reported["ids"] == list(range(len(tokens)))


@pytest.mark.keras
@pytest.mark.tensorflow
@pytest.mark.parametrize("name", WITH_TOKENIZER)
def test_added_tokens_take_the_next_ids(oracle, name):
    before, _ = oracle[f"{name}:generic"]
    after, reported = oracle[f"{name}:grown"]
    kind = MANIFEST[name]["tokenizer"]["kind"]
    assert after[len(before) :] == ADDED[kind]
    assert reported["ids"][len(before) :] == [len(before) + i for i in range(len(ADDED[kind]))]
    if (HUB / name).is_dir():
        preset_tokens, preset_reported = oracle[f"{name}:grown_preset"]
        assert preset_reported["class"] == MANIFEST[name]["tokenizer"]["class"]
        assert preset_reported["ids"][len(before) :] == reported["ids"][len(before) :]


@pytest.mark.keras
@pytest.mark.tensorflow
@pytest.mark.parametrize(
    "name", [n for n in WITH_TOKENIZER if MANIFEST[n]["tokenizer"]["kind"] == SENTENCEPIECE]
)
def test_sentencepiece_tokenizes_an_added_piece_whole(oracle, name):
    before, _ = oracle[f"{name}:generic"]
    _, reported = oracle[f"{name}:grown"]
    assert len(before) in reported["tokenized"]


# --- Hugging Face tokenizer.json, with the `tokenizers` package as the oracle --------


def hf_tokenizers():
    return pytest.importorskip("tokenizers")


def word_level_json(tokenizers) -> bytes:
    vocab = {"[UNK]": 0, "the": 1, "fox": 2, "café": 3, "日本": 4}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["[CLS]", "[SEP]"])
    tokenizer.add_tokens(["naïve"])
    return tokenizer.to_str().encode("utf-8")


def unigram_json(tokenizers) -> bytes:
    pieces = [("<unk>", 0.0), ("▁the", -1.0), ("▁fox", -2.0), ("é", -3.0), ("▁", -4.0)]
    tokenizer = tokenizers.Tokenizer(tokenizers.models.Unigram(pieces, unk_id=0))
    tokenizer.add_special_tokens(["<unk>", "</s>"])
    return tokenizer.to_str().encode("utf-8")


@pytest.mark.parametrize("build", [word_level_json, unigram_json])
def test_hugging_face_tokenizer_json_rows(build):
    tokenizers = hf_tokenizers()
    data = build(tokenizers)
    vocabulary = read_hf_tokenizer_json(data)
    oracle = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
    assert len(vocabulary) == oracle.get_vocab_size(with_added_tokens=True)
    assert [oracle.token_to_id(t) for t in vocabulary.tokens] == list(range(len(vocabulary)))
    specials = {t.content for t in oracle.get_added_tokens_decoder().values() if t.special}
    assert set(vocabulary.special_tokens()) == specials


@pytest.mark.parametrize("build", [word_level_json, unigram_json])
def test_hugging_face_tokenizer_json_append(build):
    tokenizers = hf_tokenizers()
    data = build(tokenizers)
    size = len(read_hf_tokenizer_json(data))
    grown = append_tokens(HF_TOKENIZER_JSON, data, ["<new>", "ü"])
    oracle = tokenizers.Tokenizer.from_str(grown.decode("utf-8"))
    assert oracle.token_to_id("<new>") == size
    assert oracle.token_to_id("ü") == size + 1
    assert oracle.encode("the <new> fox", add_special_tokens=False).ids.count(size) == 1
