"""Models in S3, read by byte ranges from moto's S3 server on loopback, through s3fs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES
from remote_servers import s3_store

import embcli
from embcli.cli import cli
from embcli.remote import LIMITS, reset_transfer_stats, transfer_stats

pytest.importorskip("moto.server", reason="needs moto[server] (the test extra)")
s3fs = pytest.importorskip("s3fs", reason="needs s3fs (the remote extra)")

BUCKET = "models"
FILES = ("k3_functional.keras", "k3.weights.h5", "tfk_full.h5")


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    store = s3_store(s3_endpoint, monkeypatch)
    monkeypatch.setattr(LIMITS, "request_seconds", 15.0)
    if not store.exists(BUCKET):
        store.mkdir(BUCKET)
        for name in FILES:
            store.put_file(str(FIXTURES / name), f"{BUCKET}/{name}")
    reset_transfer_stats()
    yield f"s3://{BUCKET}"
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("command", [["layers", "--json"], ["stats", "--json"]])
def test_s3_reads_give_the_local_files_output(bucket, runner, name, command):
    local = runner.invoke(cli, [command[0], str(FIXTURES / name), *command[1:]])
    remote = runner.invoke(cli, [command[0], f"{bucket}/{name}", *command[1:]])
    assert (remote.exit_code, remote.output) == (local.exit_code, local.output)
    assert 0 < transfer_stats().bytes <= (FIXTURES / name).stat().st_size


def test_s3_rows_and_export_match(bucket, runner, tmp_path):
    url = f"{bucket}/k3_functional.keras"
    with embcli.open(url) as remote, embcli.open(FIXTURES / "k3_functional.keras") as local:
        np.testing.assert_array_equal(
            remote.read("words", [0, 5, -1]), local.read("words", [0, 5, -1])
        )
    out_local, out_remote = tmp_path / "l.npy", tmp_path / "r.npy"
    runner.invoke(
        cli, ["export", str(FIXTURES / "k3_functional.keras"), "-l", "words", "-o", str(out_local)]
    )
    result = runner.invoke(cli, ["export", url, "-l", "words", "-o", str(out_remote)])
    assert result.exit_code == 0, result.output
    assert out_remote.read_bytes() == out_local.read_bytes()


def test_a_missing_s3_object_is_one_error_line(bucket, runner):
    result = runner.invoke(cli, ["layers", f"{bucket}/absent.keras"])
    assert result.exit_code == 1
    assert result.output == f"Error: {bucket}/absent.keras: no such file or folder\n"
