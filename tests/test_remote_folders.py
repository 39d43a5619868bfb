"""Model folders and keras-hub presets at URLs, read from real servers on loopback: the
counting HTTP Range server (`remote_servers.CountingServer`) and moto's S3 server.

Every command gives the local folder's output; only the files a command needs are asked
for, by name, with the weights read by byte ranges.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES
from remote_servers import s3_store

import embcli
from embcli.cli import cli
from embcli.errors import UnsafeFile
from embcli.guarded import parsing
from embcli.locations import LocalFolder, RemoteFolder
from embcli.remote import LIMITS, reset_transfer_stats, transfer_stats

HUB = FIXTURES / "hub"
K3_FOLDER = FIXTURES / "k3_folder"
# (folder, its token table, a token of its tokenizer)
FOLDERS = {
    "k3_folder": (K3_FOLDER, "words", None),
    "bert": (HUB / "bert_masked_lm", "token_embedding", "the"),
    "gpt2": (HUB / "gpt2_causal_lm", "token_embedding", "<|endoftext|>"),
    "llama3_sharded": (HUB / "llama3_sharded", "token_embedding", "<|eot_id|>"),
}
KB = 1024
MB = 1024 * 1024


@pytest.fixture(autouse=True)
def _fresh_counts(monkeypatch):
    reset_transfer_stats()
    monkeypatch.setattr(LIMITS, "request_seconds", 15.0)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def same_output(runner, local_args, remote_args):
    local = runner.invoke(cli, local_args)
    remote = runner.invoke(cli, remote_args)
    assert (remote.exit_code, remote.output) == (local.exit_code, local.output)
    return remote


def commands(table: str, token: str | None) -> list[list[str]]:
    found = [
        ["layers", "--json"],
        ["layers", "--all", "--csv"],
        ["rows", "-l", table, "0", "3", "-1", "--json"],
        ["stats", "-l", table, "--json"],
        ["neighbors", "-l", table, "1", "--json"],
        ["check", "-l", table],
    ]
    if token is not None:
        found.append(["rows", "-l", table, "--token", token, "--json"])
        found.append(["vocab", "-l", table, "--json"])
    return found


@pytest.mark.parametrize("slash", [True, False], ids=["slash", "no-slash"])
@pytest.mark.parametrize("name", FOLDERS)
def test_read_commands_over_http_give_the_local_folders_output(http_server, runner, name, slash):
    folder, table, token = FOLDERS[name]
    url = http_server.serve_folder(folder, name)
    url = url if slash else url.rstrip("/")
    for verb, *rest in commands(table, token):
        http_server.reset()
        result = same_output(runner, [verb, str(folder), *rest], [verb, url, *rest])
        assert result.exit_code == 0, (verb, result.output)
        assert http_server.bytes_sent <= folder_size(folder) + 64 * KB
        asked = http_server.names_asked()
        assert all(a.startswith(f"{name}/") or a == name for a in asked), asked


@pytest.mark.parametrize("name", FOLDERS)
@pytest.mark.parametrize("suffix", [".npy", ".tsv"])
def test_export_over_http_writes_the_local_folders_bytes(
    http_server, runner, tmp_path, name, suffix
):
    folder, table, _ = FOLDERS[name]
    url = http_server.serve_folder(folder, name)
    local, remote = tmp_path / f"local{suffix}", tmp_path / f"remote{suffix}"
    assert runner.invoke(cli, ["export", str(folder), "-l", table, "-o", str(local)]).exit_code == 0
    result = runner.invoke(cli, ["export", url, "-l", table, "-o", str(remote)])
    assert result.exit_code == 0, result.output
    assert remote.read_bytes() == local.read_bytes()


def test_diff_compares_a_remote_preset_with_a_local_one(http_server, runner):
    folder = FOLDERS["bert"][0]
    url = http_server.serve_folder(folder, "bert")
    same = runner.invoke(cli, ["diff", url, str(folder), "--json"])
    assert same.exit_code == 0, same.output
    other = same_output(
        runner,
        ["diff", str(folder), str(FOLDERS["gpt2"][0])],
        ["diff", url, str(FOLDERS["gpt2"][0])],
    )
    assert other.exit_code == 1


def test_a_preset_fetches_only_the_files_it_needs(http_server, runner):
    folder = FOLDERS["gpt2"][0]
    url = http_server.serve_folder(folder, "gpt2")
    result = runner.invoke(cli, ["rows", url, "-l", "token_embedding", "0", "--json"])
    assert result.exit_code == 0, result.output
    asked = {a.removeprefix("gpt2/") for a in http_server.names_asked()}
    known = {
        "config.json", "metadata.json", "task.json", "preprocessor.json", "tokenizer.json",
        "model.weights.h5", "task.weights.h5", "saved_model.pb",
        "assets/tokenizer/vocabulary.spm", "assets/tokenizer/vocabulary.json",
        "assets/tokenizer/vocabulary.txt", "assets/tokenizer/merges.txt",
    }  # fmt: skip
    assert asked <= known, asked - known


@pytest.fixture(scope="module")
def big_preset(tmp_path_factory):
    """The GPT-2 preset with a token table of 400,000 rows (12.8 MB of weights)."""
    path = tmp_path_factory.mktemp("big") / "gpt2_big"
    embcli.resize(FOLDERS["gpt2"][0], "token_embedding", rows=400_000, init="zeros", output=path)
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


def test_layers_on_a_large_remote_preset_fetches_little(http_server, runner, big_preset):
    url = http_server.serve_folder(big_preset, "big")
    assert folder_size(big_preset) > 12 * MB
    result = same_output(runner, ["layers", str(big_preset), "--json"], ["layers", url, "--json"])
    listing = result.output[result.output.index("[") :]  # after a warning on the vocabulary
    assert json.loads(listing)[1]["shape"] == [400_000, 8]
    assert http_server.bytes_sent <= 1 * MB
    assert http_server.requests <= 30
    listed = http_server.bytes_sent

    http_server.reset()
    command = ["-l", "token_embedding", "0", "200000:200010", "-1", "--json"]
    same_output(runner, ["rows", str(big_preset), *command], ["rows", url, *command])
    assert listed + http_server.bytes_sent <= 2 * MB


def test_the_python_api_keeps_a_url_as_a_url(http_server):
    folder = FOLDERS["bert"][0]
    url = http_server.serve_folder(folder, "bert")
    with embcli.open(url) as remote, embcli.open(folder) as local:
        assert remote.path == url and isinstance(remote.path, str)
        assert remote.format == local.format == "keras-hub preset"
        assert list(remote.tables) == list(local.tables)
        np.testing.assert_array_equal(
            remote.read("token_embedding", slice(0, 20)),
            local.read("token_embedding", slice(0, 20)),
        )
        assert remote.vocabulary("token_embedding") == local.vocabulary("token_embedding")
    assert repr(remote) == f"<embcli.Model {url!r} (closed)>"
    assert transfer_stats().bytes == http_server.bytes_sent


def test_a_url_naming_nothing_is_one_error_line(http_server, runner):
    http_server.serve_folder(K3_FOLDER, "k3")
    for url in (http_server.url("absent/"), http_server.url("absent")):
        result = runner.invoke(cli, ["layers", url])
        assert result.exit_code == 1
        assert result.output == f"Error: {url}: no such file or folder\n"


def _copy(folder: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def test_a_shard_map_that_leaves_the_folder_is_refused(http_server, runner, tmp_path):
    hostile = _copy(FOLDERS["llama3_sharded"][0], tmp_path, "hostile")
    index = hostile / "model.weights.json"
    document = json.loads(index.read_text())
    first = next(iter(document["weight_map"]))
    document["weight_map"][first] = "../secret.weights.h5"
    index.write_text(json.dumps(document))
    url = http_server.serve_folder(hostile, "hostile")
    http_server.serve(FOLDERS["llama3_sharded"][0] / "model_00000.weights.h5", "secret.weights.h5")
    result = runner.invoke(cli, ["layers", url])
    local = runner.invoke(cli, ["layers", str(hostile)])
    assert result.exit_code == local.exit_code == 1
    assert result.output == local.output
    assert result.output == "Error: shard index names an unsafe file: '../secret.weights.h5'\n"
    assert "secret.weights.h5" not in http_server.names_asked()


def test_an_oversized_config_is_refused_before_it_is_fetched(
    http_server, runner, tmp_path, monkeypatch
):
    hostile = _copy(FOLDERS["bert"][0], tmp_path, "big_config")
    config = hostile / "config.json"
    document = json.loads(config.read_text())
    config.write_text(json.dumps(document) + " " * (2 * MB))
    monkeypatch.setattr(parsing, "MAX_JSON_BYTES", 1 * MB)
    url = http_server.serve_folder(hostile, "big_config")
    result = runner.invoke(cli, ["layers", url])
    assert result.exit_code == 1
    assert result.output == f"Error: {url}config.json is larger than {MB} bytes\n"
    local = runner.invoke(cli, ["layers", str(hostile)])
    assert local.output == f"Error: {config} is larger than {MB} bytes\n"
    assert http_server.bytes_sent <= 512 * KB


def test_a_preset_without_weights_is_one_error_line(http_server, runner, tmp_path):
    broken = _copy(FOLDERS["bert"][0], tmp_path, "broken")
    (broken / "model.weights.h5").unlink()
    url = http_server.serve_folder(broken, "broken")
    result = runner.invoke(cli, ["layers", url])
    local = runner.invoke(cli, ["layers", str(broken)])
    assert result.exit_code == local.exit_code == 1
    assert result.output == local.output.replace(str(broken), url)
    assert result.output.count("\n") == 1


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "a\\b", ""])
def test_a_folder_refuses_names_outside_it(name, tmp_path):
    remote = RemoteFolder("http://127.0.0.1:9/models/preset/")
    with pytest.raises(UnsafeFile, match="names a file outside the folder"):
        remote.member_url(name)
    (tmp_path / "x").write_bytes(b"outside")
    local = LocalFolder(tmp_path / "preset")
    for ask in (local.exists, local.is_file, local.read):
        with pytest.raises(UnsafeFile, match="names a file outside the folder"):
            ask(name)


def test_a_folder_url_without_the_extra_names_the_install(monkeypatch, runner):
    import sys

    monkeypatch.setitem(sys.modules, "fsspec", None)
    result = runner.invoke(cli, ["layers", "s3://bucket/presets/bert/"])
    assert result.exit_code == 1
    assert result.output == "Error: reading s3:// URLs needs s3fs: pip install 'embcli[remote]'\n"


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("name", ["k3_folder", "bert", "llama3_sharded"])
def test_a_remote_folder_is_edited_into_a_local_copy(
    http_server, runner, tmp_path, name, monkeypatch
):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    folder, table, _ = FOLDERS[name]
    url = http_server.serve_folder(folder, name)
    with embcli.open(folder) as model:
        dim = model.tables[table].shape[1]
    vectors = tmp_path / "v.npy"
    np.save(vectors, np.arange(2 * dim, dtype=np.float32).reshape(2, dim))
    local, remote = tmp_path / "local", tmp_path / "remote"
    base = ["-l", table, "--from", str(vectors), "--rows", "3,7", "-o"]
    assert runner.invoke(cli, ["assign", str(folder), *base, str(local)]).exit_code == 0
    result = runner.invoke(cli, ["assign", url, *base, str(remote)])
    assert result.exit_code == 0, result.output
    assert _tree(remote) == _tree(local)
    assert list(scratch.iterdir()) == []  # the download is gone


def test_a_remote_preset_is_resized_into_a_local_copy(http_server, tmp_path):
    folder = FOLDERS["gpt2"][0]
    url = http_server.serve_folder(folder, "gpt2")
    local, remote = tmp_path / "local", tmp_path / "remote"
    embcli.resize(folder, "token_embedding", rows=300, output=local)
    embcli.resize(url, "token_embedding", rows=300, output=remote)
    assert _tree(remote) == _tree(local)


# S3 (moto) ------------------------------------------------------------------------------

BUCKET = "folders"


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    store = s3_store(s3_endpoint, monkeypatch)
    if not store.exists(BUCKET):
        store.mkdir(BUCKET)
        for name, (folder, _, _) in FOLDERS.items():
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    key = f"{BUCKET}/{name}/{path.relative_to(folder).as_posix()}"
                    store.put_file(str(path), key)
    reset_transfer_stats()
    yield f"s3://{BUCKET}"
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("name", FOLDERS)
def test_s3_folders_give_the_local_folders_output(bucket, runner, name, tmp_path):
    folder, table, token = FOLDERS[name]
    url = f"{bucket}/{name}"
    for verb, *rest in commands(table, token)[:3] + commands(table, token)[6:]:
        reset_transfer_stats()
        result = same_output(runner, [verb, str(folder), *rest], [verb, url, *rest])
        assert result.exit_code == 0, (verb, result.output)
        assert 0 < transfer_stats().bytes <= folder_size(folder)
    local, remote = tmp_path / "l.npy", tmp_path / "r.npy"
    runner.invoke(cli, ["export", str(folder), "-l", table, "-o", str(local)])
    result = runner.invoke(cli, ["export", url + "/", "-l", table, "-o", str(remote)])
    assert result.exit_code == 0, result.output
    assert remote.read_bytes() == local.read_bytes()


def test_the_python_api_opens_an_s3_preset(bucket):
    url = f"{bucket}/gpt2"
    folder = FOLDERS["gpt2"][0]
    with embcli.open(url) as remote, embcli.open(folder) as local:
        assert remote.path == url
        np.testing.assert_array_equal(
            remote.read("token_embedding", [0, 5, -1]), local.read("token_embedding", [0, 5, -1])
        )
        assert remote.vocabulary("token_embedding") == local.vocabulary("token_embedding")


def test_a_missing_s3_prefix_is_one_error_line(bucket, runner):
    result = runner.invoke(cli, ["layers", f"{bucket}/absent"])
    assert result.exit_code == 1
    assert result.output == f"Error: {bucket}/absent: no such file or folder\n"


def test_a_remote_weights_file_in_a_preset_finds_the_tokenizer_beside_it(http_server, runner):
    folder, table, token = FOLDERS["gpt2"]
    url = http_server.serve_folder(folder, "gpt2") + "model.weights.h5"
    local = folder / "model.weights.h5"
    for verb, *rest in (["rows", "-l", table, "--token", token, "--json"], ["layers"]):
        result = same_output(runner, [verb, str(local), *rest], [verb, url, *rest])
        assert result.exit_code == 0, result.output
    assert "gpt2/tokenizer.json" in http_server.names_asked()


def test_an_s3_folder_edit_copies_every_file_the_store_lists(bucket, runner, tmp_path):
    """Over HTTP only the files embcli knows by name can be fetched; an object store lists
    the folder, so the copy keeps the files no kind knows, byte for byte."""
    import s3fs

    folder = tmp_path / "with_extras"
    shutil.copytree(K3_FOLDER, folder)
    (folder / "notes").mkdir()
    (folder / "notes" / "README.md").write_text("trained on the 2026 crawl\n")
    (folder / "assets").mkdir(exist_ok=True)
    (folder / "assets" / "extra.bin").write_bytes(bytes(range(256)) * 3)
    store = s3fs.S3FileSystem(skip_instance_cache=True)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            store.put_file(str(path), f"{BUCKET}/extras/{path.relative_to(folder).as_posix()}")
    vectors = tmp_path / "v.npy"
    np.save(vectors, np.ones((1, 8), dtype=np.float32))
    base = ["-l", "words", "--from", str(vectors), "--rows", "4", "-o"]
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert runner.invoke(cli, ["assign", str(folder), *base, str(local)]).exit_code == 0
    result = runner.invoke(cli, ["assign", f"{bucket}/extras", *base, str(remote)])
    assert result.exit_code == 0, result.output
    assert _tree(remote) == _tree(local)
    assert (remote / "notes" / "README.md").read_text() == "trained on the 2026 crawl\n"
