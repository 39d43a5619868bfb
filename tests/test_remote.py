"""Models at URLs, read by byte ranges from real servers on loopback.

The HTTP server (`remote_servers.CountingServer`) serves byte ranges and counts the
bytes and requests it answers, so that byte budgets are checked from the server's side.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import FIXTURES
from remote_servers import CountingServer

import embcli
from embcli.cli import cli
from embcli.remote import (
    BLOCK_BYTES,
    LIMITS,
    RemoteObject,
    TransferFailed,
    is_url,
    reset_transfer_stats,
    transfer_stats,
    url_of,
)


@pytest.fixture(autouse=True)
def _fresh_counts(monkeypatch):
    reset_transfer_stats()
    monkeypatch.setattr(LIMITS, "request_seconds", 15.0)
    yield


MB = 1024 * 1024
ARCHIVE = FIXTURES / "k3_functional.keras"
WEIGHTS = FIXTURES / "k3.weights.h5"
SHARDED = FIXTURES / "k3_sharded.weights.json"
LEGACY = FIXTURES / "tfk_full.h5"
READABLE = [p for p in (ARCHIVE, WEIGHTS, LEGACY) if p.exists()]


def _same_output(runner, local_args, remote_args):
    local = runner.invoke(cli, local_args)
    remote = runner.invoke(cli, remote_args)
    assert (remote.exit_code, remote.output) == (local.exit_code, local.output)
    return remote


@pytest.mark.parametrize(
    "text, url",
    [
        ("s3://bucket/m.keras", "s3://bucket/m.keras"),
        ("gs://b/k/m.weights.h5", "gs://b/k/m.weights.h5"),
        ("hf://org/repo/model.keras", "hf://org/repo/model.keras"),
        ("http://127.0.0.1:8000/m.h5", "http://127.0.0.1:8000/m.h5"),
        ("HTTPS://example.org/m.keras", "HTTPS://example.org/m.keras"),
        ("model.keras", None),
        ("s3:model.keras", None),
        ("ftp://host/m.keras", None),
        ("file:///tmp/m.keras", None),
        ("/tmp/s3://x", None),
    ],
)
def test_url_of_tells_urls_from_paths(text, url):
    assert url_of(text) == url
    assert is_url(text) == (url is not None)


def test_a_path_made_from_a_url_still_names_it():
    assert url_of(Path("s3://bucket/key.keras")) == "s3://bucket/key.keras"
    assert url_of(Path("https://host/m.keras")) == "https://host/m.keras"
    assert url_of("s3:/bucket/key") is None


@pytest.mark.parametrize("fixture", READABLE, ids=lambda p: p.name)
@pytest.mark.parametrize(
    "command",
    [
        ["layers", "--json"],
        ["layers", "--all", "--csv"],
        ["rows", "0", "3", "-1", "5:9", "--json"],
        ["stats", "--json"],
        ["check"],
    ],
    ids=lambda c: "-".join(c[:2]),
)
def test_read_commands_give_the_local_files_output(http_server, runner, fixture, command):
    url = http_server.serve(fixture)
    with embcli.open(fixture) as model:
        layer = sorted(model.tables)[0]
    verb, *rest = command
    extra = ["-l", layer] if verb == "rows" else []
    result = _same_output(runner, [verb, str(fixture), *extra, *rest], [verb, url, *extra, *rest])
    assert result.exit_code == 0, result.output
    assert http_server.bytes_sent <= fixture.stat().st_size


@pytest.mark.parametrize("fixture", READABLE, ids=lambda p: p.name)
@pytest.mark.parametrize("suffix", [".npy", ".tsv", ".npz", ".txt"])
def test_export_writes_the_local_files_bytes(http_server, runner, tmp_path, fixture, suffix):
    url = http_server.serve(fixture)
    with embcli.open(fixture) as model:
        layer = sorted(model.tables)[0]
    layer_args = [] if suffix == ".npz" else ["-l", layer]
    local, remote = tmp_path / f"local{suffix}", tmp_path / f"remote{suffix}"
    assert (
        runner.invoke(cli, ["export", str(fixture), *layer_args, "-o", str(local)]).exit_code == 0
    )
    result = runner.invoke(cli, ["export", url, *layer_args, "-o", str(remote)])
    assert result.exit_code == 0, result.output
    assert remote.read_bytes() == local.read_bytes()


def test_vocab_diff_and_neighbors_read_a_remote_model(http_server, runner):
    fixture = FIXTURES / "k3_vocab.keras"
    url = http_server.serve(fixture)
    for command in (["vocab", "-l", "lookup_emb", "--json"], ["neighbors", "-l", "tok_emb", "1"]):
        verb, *rest = command
        assert _same_output(runner, [verb, str(fixture), *rest], [verb, url, *rest]).exit_code == 0
    same = runner.invoke(cli, ["diff", url, str(fixture), "--json"])
    assert same.exit_code == 0, same.output
    other = _same_output(runner, ["diff", str(fixture), str(ARCHIVE)], ["diff", url, str(ARCHIVE)])
    assert other.exit_code == 1


def test_the_python_api_opens_a_url(http_server):
    url = http_server.serve(ARCHIVE)
    with embcli.open(url) as remote, embcli.open(ARCHIVE) as local:
        assert list(remote.tables) == list(local.tables)
        np.testing.assert_array_equal(
            remote.read("words", slice(0, 50)), local.read("words", slice(0, 50))
        )
    assert transfer_stats().requests >= 1
    assert transfer_stats().bytes == http_server.bytes_sent


BIG_ROWS = 1_500_000


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory):
    """A `.keras` archive whose table takes ~48 MB (~144 MB with its Adam slots)."""
    path = tmp_path_factory.mktemp("big") / "big.keras"
    embcli.resize(ARCHIVE, "words", rows=BIG_ROWS, init="normal:0.1", seed=7, output=path)
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


def test_layers_on_a_large_remote_archive_fetches_little(http_server, runner, big_archive):
    url = http_server.serve(big_archive)
    assert big_archive.stat().st_size > 100 * MB
    result = _same_output(runner, ["layers", str(big_archive), "--json"], ["layers", url, "--json"])
    assert json.loads(result.output)[0]["shape"] == [BIG_ROWS, 8]
    assert http_server.bytes_sent <= 2 * MB
    assert http_server.requests <= 20
    listed = http_server.bytes_sent

    http_server.reset()
    rows = ["0", "7", "750000:750010", "-1"]
    command = ["rows", "-l", "words", *rows, "--json"]
    _same_output(
        runner, [command[0], str(big_archive), *command[1:]], [command[0], url, *command[1:]]
    )
    assert listed + http_server.bytes_sent <= 4 * MB


def test_spread_rows_fetch_their_own_bytes_not_blocks(http_server, runner, big_archive):
    url = http_server.serve(big_archive)
    runner.invoke(cli, ["layers", url])
    listing, listing_requests = http_server.bytes_sent, http_server.requests
    http_server.reset()
    rows = [str(row) for row in range(3, BIG_ROWS, BIG_ROWS // 50)]
    command = ["rows", "-l", "words", ",".join(rows), "--json"]
    _same_output(
        runner, [command[0], str(big_archive), *command[1:]], [command[0], url, *command[1:]]
    )
    row_bytes = 8 * 4
    # The listing again, then at most one request of exactly 32 bytes per row (none for a
    # row in a block the listing already fetched).
    assert listing < http_server.bytes_sent <= listing + len(rows) * row_bytes
    assert http_server.requests <= listing_requests + len(rows)


def test_exporting_a_large_remote_table_fetches_it_about_once(
    http_server, runner, big_archive, tmp_path
):
    url = http_server.serve(big_archive)
    local, remote = tmp_path / "local.npy", tmp_path / "remote.npy"
    runner.invoke(cli, ["export", str(big_archive), "-l", "words", "-o", str(local)])
    result = runner.invoke(cli, ["export", url, "-l", "words", "-o", str(remote)])
    assert result.exit_code == 0, result.output
    assert remote.read_bytes() == local.read_bytes()
    table_bytes = BIG_ROWS * 8 * 4
    assert table_bytes <= http_server.bytes_sent <= table_bytes + 2 * MB


def test_a_missing_object_is_one_error_line(http_server, runner):
    result = runner.invoke(cli, ["layers", http_server.url("nothing.keras")])
    assert result.exit_code == 1
    assert result.output == f"Error: {http_server.url('nothing.keras')}: no such file or folder\n"


def test_a_transfer_cut_short_is_one_error_line(http_server, runner, big_archive, tmp_path):
    url = http_server.serve(big_archive)
    http_server.cut_after = 3 * MB
    target = tmp_path / "out.npy"
    result = runner.invoke(cli, ["export", url, "-l", "words", "-o", str(target)])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {url}: ")
    assert result.output.count("\n") == 1
    assert "cut short" in result.output
    assert not target.exists()


def test_a_server_that_ignores_ranges_is_refused(http_server, runner, big_archive):
    url = http_server.serve(big_archive)
    http_server.ignore_ranges = True
    result = runner.invoke(cli, ["layers", url])
    assert result.exit_code == 1
    assert result.output == f"Error: {url}: the server does not serve byte ranges\n"
    assert transfer_stats().bytes <= BLOCK_BYTES


def test_the_byte_limit_stops_a_read(http_server, runner, big_archive, monkeypatch, tmp_path):
    url = http_server.serve(big_archive)
    monkeypatch.setattr(LIMITS, "max_bytes", 8 * MB)
    result = runner.invoke(cli, ["export", url, "-l", "words", "-o", str(tmp_path / "w.npy")])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {url}: reading it would fetch more than 8388608 bytes")
    assert http_server.bytes_sent <= 8 * MB


def test_redirects_are_followed_up_to_the_limit(http_server, runner, monkeypatch):
    http_server.serve(ARCHIVE, "real.keras")
    http_server.redirects = {"moved.keras": "real.keras", "loop.keras": "loop.keras"}
    moved = _same_output(
        runner, ["layers", str(ARCHIVE)], ["layers", http_server.url("moved.keras")]
    )
    assert moved.exit_code == 0
    loop = runner.invoke(cli, ["layers", http_server.url("loop.keras")])
    assert loop.exit_code == 1
    assert loop.output.startswith(f"Error: {http_server.url('loop.keras')}: HTTP 302")
    assert loop.output.count("\n") == 1


@pytest.mark.parametrize("fixture", READABLE, ids=lambda p: p.name)
def test_a_remote_model_is_edited_into_a_local_copy(
    http_server, runner, tmp_path, fixture, monkeypatch
):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    url = http_server.serve(fixture)
    with embcli.open(fixture) as model:
        layer = sorted(model.tables)[0]
        dim = model.tables[layer].shape[1]
    vectors = tmp_path / "v.npy"
    np.save(vectors, np.arange(2 * dim, dtype=np.float32).reshape(2, dim))
    local, remote = tmp_path / f"local-{fixture.name}", tmp_path / f"remote-{fixture.name}"
    base = ["assign", "-l", layer, "--from", str(vectors), "--rows", "3,7", "-o"]
    assert runner.invoke(cli, [base[0], str(fixture), *base[1:], str(local)]).exit_code == 0
    result = runner.invoke(cli, [base[0], url, *base[1:], str(remote)])
    assert result.exit_code == 0, result.output
    assert remote.read_bytes() == local.read_bytes()
    assert list(scratch.iterdir()) == []  # the download is gone


def test_editing_a_url_in_place_is_refused(http_server, runner):
    url = http_server.serve(ARCHIVE)
    result = runner.invoke(cli, ["assign", url, "-l", "words", "--fill", "zeros", "--in-place"])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {url}: a model at a URL cannot be edited in place; "
        "write the copy to a local path\n"
    )
    assert http_server.requests == 0


def test_a_remote_model_gets_the_same_guards(http_server, runner, tmp_path):
    unsafe = tmp_path / "unsafe.keras"
    with zipfile.ZipFile(ARCHIVE) as source, zipfile.ZipFile(unsafe, "w") as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        target.writestr("../escape.txt", b"x")
    url = http_server.serve(unsafe)
    local = runner.invoke(cli, ["layers", str(unsafe)])
    remote = runner.invoke(cli, ["layers", url])
    assert remote.exit_code == local.exit_code == 1
    assert remote.output == local.output.replace(str(unsafe), url)


def test_an_hdf5_external_link_is_refused_remotely(http_server, runner, tmp_path):
    linked = tmp_path / "linked.weights.h5"
    shutil.copy(WEIGHTS, linked)
    with h5py.File(linked, "a") as handle:
        handle["elsewhere"] = h5py.ExternalLink("/etc/passwd", "/")
    url = http_server.serve(linked)
    result = runner.invoke(cli, ["layers", url])
    assert result.exit_code == 1
    assert result.output == "Error: elsewhere: HDF5 external links are refused\n"


def test_store_urls_without_the_extra_name_the_install(monkeypatch, runner):
    import sys

    monkeypatch.setitem(sys.modules, "fsspec", None)
    result = runner.invoke(cli, ["layers", "s3://bucket/model.keras"])
    assert result.exit_code == 1
    assert result.output == ("Error: reading s3:// URLs needs s3fs: pip install 'embcli[remote]'\n")


def test_reads_are_counted_per_object(http_server):
    url = http_server.serve(ARCHIVE)
    remote = RemoteObject(url)
    assert remote.pread(4, 0) == ARCHIVE.read_bytes()[:4]
    assert remote.pread(100, 1000) == ARCHIVE.read_bytes()[1000:1100]
    assert remote.pread(10, remote.size - 5) == ARCHIVE.read_bytes()[-5:]
    assert remote.stats.requests == http_server.requests == 1
    assert remote.stats.bytes == http_server.bytes_sent
    with pytest.raises(TransferFailed):
        RemoteObject(http_server.url("nothing")).pread(1, 0)


def _serve_sharded(server: CountingServer) -> str:
    for shard in sorted(FIXTURES.glob("k3_sharded_*.weights.h5")):
        server.serve(shard)
    return server.serve(SHARDED)


@pytest.mark.parametrize(
    "command",
    [["layers", "--json"], ["rows", "-l", "words", "0", "-1", "--json"], ["stats", "--json"]],
    ids=lambda c: c[0],
)
def test_sharded_weights_read_their_shards_beside_the_index(http_server, runner, command):
    url = _serve_sharded(http_server)
    result = _same_output(
        runner, [command[0], str(SHARDED), *command[1:]], [command[0], url, *command[1:]]
    )
    assert result.exit_code == 0, result.output


def test_a_missing_shard_is_one_error_line(http_server, runner):
    url = http_server.serve(SHARDED)
    result = runner.invoke(cli, ["layers", url])
    assert result.exit_code == 1
    assert result.output == f"Error: {url}: shard k3_sharded_00000.weights.h5 is missing\n"


def test_a_remote_sharded_model_is_resized_into_a_local_copy(http_server, tmp_path):
    url = _serve_sharded(http_server)
    local, remote = tmp_path / "local" / "m.weights.json", tmp_path / "remote" / "m.weights.json"
    local.parent.mkdir()
    remote.parent.mkdir()
    embcli.resize(SHARDED, "words", rows=60, output=local)
    embcli.resize(url, "words", rows=60, output=remote)
    assert sorted(p.name for p in remote.parent.iterdir()) == sorted(
        p.name for p in local.parent.iterdir()
    )
    for path in local.parent.iterdir():
        assert (remote.parent / path.name).read_bytes() == path.read_bytes()


def test_a_remote_archive_is_resized_into_a_local_copy(http_server, tmp_path):
    url = http_server.serve(ARCHIVE)
    local, remote = tmp_path / "local.keras", tmp_path / "remote.keras"
    embcli.resize(ARCHIVE, "words", rows=64, output=local)
    embcli.resize(url, "words", rows=64, output=remote)
    with embcli.open(remote) as resized, embcli.open(local) as expected:
        np.testing.assert_array_equal(
            resized.read("words", slice(0, 64)), expected.read("words", slice(0, 64))
        )


def test_the_transfer_summary_counts_what_the_server_sent(http_server):
    from embcli.remote import TransferStats, transfer_summary

    assert transfer_summary() is None
    url = http_server.serve(ARCHIVE)
    with embcli.open(url) as model:
        model.read("words", slice(0, 50))
    assert transfer_summary() == (
        f"fetched {http_server.bytes_sent} bytes in {http_server.requests} request"
        + ("" if http_server.requests == 1 else "s")
    )
    assert transfer_summary(TransferStats(10, 2)) == "fetched 10 bytes in 2 requests"


@pytest.mark.parametrize(
    "url, shown",
    [
        ("s3://bucket/key.keras", "s3://bucket/key.keras"),
        ("https://user:secret@host/m.keras", "https://host/m.keras"),
        ("https://host/m.keras?X-Amz-Signature=abc&X-Amz-Credential=k", "https://host/m.keras?..."),
        ("http://127.0.0.1:8000/a/m.h5#frag", "http://127.0.0.1:8000/a/m.h5?..."),
    ],
)
def test_messages_never_show_credentials_in_a_url(url, shown):
    from embcli.remote import shown_url

    assert shown_url(url) == shown


def test_a_signed_urls_query_stays_out_of_errors(http_server, runner):
    url = http_server.url("nothing.keras") + "?X-Amz-Signature=topsecret"
    result = runner.invoke(cli, ["layers", url])
    assert result.exit_code == 1
    assert (
        result.output == f"Error: {http_server.url('nothing.keras')}?...: no such file or folder\n"
    )
    served = http_server.serve(ARCHIVE)
    signed = runner.invoke(
        cli, ["assign", served + "?sig=topsecret", "--fill", "zeros", "--in-place"]
    )
    assert "topsecret" not in signed.output


def test_the_time_limit_stops_a_read(http_server, runner, monkeypatch):
    url = http_server.serve(ARCHIVE)
    monkeypatch.setattr(LIMITS, "max_seconds", -1.0)
    result = runner.invoke(cli, ["layers", url])
    assert result.exit_code == 1
    assert result.output == f"Error: {url}: reading took over -1.0 s\n"
