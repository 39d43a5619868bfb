"""Models in Google Cloud Storage and on the Hugging Face Hub, read by byte ranges from
servers on loopback.

`gs://` goes through gcsfs to gcp-storage-emulator, run in a thread of this process on a
server that counts what it answers. `hf://` goes through huggingface_hub's `HfFileSystem`
to `FakeHub`, written here: the few Hub API endpoints that reading a file needs, serving
fixture files from a temporary folder with Range support. Both take their endpoints and
credentials from the standard environment (`STORAGE_EMULATOR_HOST`, fsspec's
`FSSPEC_GS_TOKEN`; `HF_ENDPOINT`, `HF_TOKEN`), and a guard refuses any connection or
name look-up that is not on loopback, so no test can reach the internet.
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, ROOT

import embcli
from embcli.cli import cli
from embcli.remote import LIMITS, reset_transfer_stats, transfer_stats

SERVER_LIFETIME = 300.0
BUCKET = "models"
REPO = "embcli-org/tiny-models"
SECRET = "hf_topsecret_token_0123456789"
ARCHIVE = FIXTURES / "k3_functional.keras"
SHARDED = FIXTURES / "k3_sharded.weights.json"
SHARDS = sorted(FIXTURES.glob("k3_sharded_*.weights.h5"))
LEGACY = FIXTURES / "tfk_full.h5"
MODELS = {"k3_functional.keras": ARCHIVE, "k3_sharded.weights.json": SHARDED, "tfk_full.h5": LEGACY}
FILES = [ARCHIVE, SHARDED, *SHARDS, LEGACY]
MB = 1024 * 1024
BIG_ROWS = 100_000


def _loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Refuse every connection and name look-up off loopback; fail the test if one was
    tried."""
    refused: list[str] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(str(address[0])):
            refused.append(str(address))
            raise ConnectionRefusedError(f"test guard: {address} is not on loopback")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and not _loopback(name):
            refused.append(str(name))
            raise socket.gaierror(f"test guard: {name} is not on loopback")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(LIMITS, "request_seconds", 15.0)
    reset_transfer_stats()
    yield refused
    assert refused == [], f"requests tried to leave loopback: {refused}"


def _start(server: HTTPServer) -> threading.Timer:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stopper = threading.Timer(SERVER_LIFETIME, server.shutdown)
    stopper.daemon = True
    stopper.start()
    return stopper


def _stop(server: HTTPServer, stopper: threading.Timer) -> None:
    stopper.cancel()
    server.shutdown()
    server.server_close()


class _Counts:
    """Requests a server answered, and the bytes of object data (`bytes_sent`) and of
    everything else (`metadata_bytes`) in their bodies, counted under a lock."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes_sent = 0
        self.metadata_bytes = 0
        self._lock = threading.Lock()

    def count(self, sent: int, data: bool) -> None:
        with self._lock:
            self.requests += 1
            if data:
                self.bytes_sent += sent
            else:
                self.metadata_bytes += sent

    def reset(self) -> None:
        with self._lock:
            self.requests = self.bytes_sent = self.metadata_bytes = 0


@dataclass
class Served:
    """A store's base URL, with its environment set, and what its server counted."""

    base: str
    counts: _Counts
    server: HTTPServer

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


# --- Google Cloud Storage: gcp-storage-emulator on a counting server -------------------


class _QuietServer(HTTPServer):
    def handle_error(self, request, client_address) -> None:
        # gcsfs asks for an object and for its folder at once and drops the slower
        # answer; the broken pipe that leaves on this side is no error.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def gcs_server(tmp_path_factory):
    """gcp-storage-emulator's request handler over an in-memory store, on a server in a
    thread of this process that counts the body bytes of every answer."""
    emulator = pytest.importorskip(
        "gcp_storage_emulator.server", reason="needs gcp-storage-emulator (the test extra)"
    )
    if importlib.util.find_spec("gcsfs") is None:
        pytest.skip("needs gcsfs (the remote extra)")
    from gcp_storage_emulator.handlers.buckets import create_bucket
    from gcp_storage_emulator.storage import Storage

    counts = _Counts()
    authorizations: list[str | None] = []

    class CountingHandler(emulator.RequestHandler):
        def send_header(self, keyword, value):
            if keyword.lower() == "content-length":  # once for every answer
                data = "alt=media" in self.path or self.path.startswith("/download/")
                counts.count(int(value), data)
                authorizations.append(self.headers.get("Authorization"))
            super().send_header(keyword, value)

        def log_message(self, *args) -> None:
            pass

    storage = Storage(use_memory_fs=True, data_dir=str(tmp_path_factory.mktemp("gcs")))
    create_bucket(BUCKET, storage)
    server = _QuietServer(("127.0.0.1", 0), partial(CountingHandler, storage))
    server.counts = counts  # type: ignore[attr-defined]
    server.authorizations = authorizations  # type: ignore[attr-defined]
    stopper = _start(server)
    host = f"http://127.0.0.1:{server.server_address[1]}"
    for path in FILES:
        _gcs_upload(host, path.name, path.read_bytes())
    _gcs_upload(host, f"nested/deeper/{ARCHIVE.name}", ARCHIVE.read_bytes())
    server.host = host  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        _stop(server, stopper)


def _gcs_upload(host: str, name: str, data: bytes) -> None:
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    request = urllib.request.Request(
        f"{host}/upload/storage/v1/b/{BUCKET}/o?{query}", data=data, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def _core_gcsfs_registered(monkeypatch) -> None:
    """gcsfs's class without its gRPC bucket-type probe, as
    `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false` picks when gcsfs is imported after it.
    (The probe asks the emulator's port for gRPC, which it does not speak, and waits a
    minute for each request.) If another test imported gcsfs first, register the class
    that the variable would have chosen."""
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    import gcsfs
    import gcsfs.core

    core = gcsfs.core.GCSFileSystem
    if gcsfs.GCSFileSystem is not core:
        monkeypatch.setattr(gcsfs, "GCSFileSystem", core)
        registry = importlib.import_module("fsspec.registry")._registry
        for protocol in ("gs", "gcs"):
            if protocol in registry:
                monkeypatch.setitem(registry, protocol, core)
    core.clear_instance_cache()


@pytest.fixture
def gcs(gcs_server, monkeypatch):
    """The environment a user sets for an emulator, and the bucket's URL."""
    import fsspec.config

    server = gcs_server
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.host)
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    # fsspec's own configuration (`FSSPEC_GS_TOKEN=anon` in a fresh process): anonymous
    # access, so that google-auth looks for no credentials.
    monkeypatch.setitem(fsspec.config.conf, "gs", {"token": "anon"})
    _core_gcsfs_registered(monkeypatch)
    server.counts.reset()
    server.authorizations.clear()
    yield Served(f"gs://{BUCKET}", server.counts, server)
    import gcsfs.core

    gcsfs.core.GCSFileSystem.clear_instance_cache()


# --- The Hugging Face Hub: a fake of the endpoints HfFileSystem calls ------------------


class FakeHub(ThreadingHTTPServer):
    """The Hub API endpoints that `HfFileSystem` calls to read a file (`info`, then
    `cat_file` by ranges), over folders of files, one for each revision of one model
    repository:

    - `GET /api/models/{repo}[/revision/{rev}]`: the repo and revision exist
      (`HfApi.repo_info`, which `resolve_path` calls once per filesystem).
    - `GET /api/models/{repo}/tree/{rev}[/{folder}]`: a folder's entries, not recursive
      (`ls` of the parent folder, which `info` reads the file's size from).
    - `GET /{repo}/resolve/{rev}/{path}`: the file's bytes, by `Range`.

    Missing repos, revisions and entries are answered as the Hub answers them (404 and an
    `X-Error-Code`). Every request must carry `token`. Any other request (such as
    `POST .../paths-info/{rev}`, which `info(refresh=True)` would make) is kept in
    `unexpected`, so that a test sees what a new huggingface_hub started asking for.
    """

    daemon_threads = True

    def __init__(self, repo: str, revisions: dict[str, Path], token: str) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.repo, self.revisions, self.token = repo, revisions, token
        self.counts = _Counts()
        self.unexpected: list[str] = []
        self.unauthorized: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def _oid(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class _HubHandler(BaseHTTPRequestHandler):
    server: FakeHub
    timeout = 10

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        hub = self.server
        path = urllib.parse.urlsplit(self.path).path
        if self.headers.get("Authorization") != f"Bearer {hub.token}":
            hub.unauthorized.append(path)
            return self._error(401, "Unauthorized")
        repo = re.escape(hub.repo)
        routes = [
            (rf"/api/models/({repo})(?:/revision/([^/]+))?", self._repo_info),
            (rf"/api/models/({repo})/tree/([^/]+)(?:/(.+))?", self._tree),
            (rf"/({repo})/resolve/([^/]+)/(.+)", self._resolve),
        ]
        for pattern, answer in routes:
            match = re.fullmatch(pattern, path)
            if match:
                _, *args = [urllib.parse.unquote(g) if g else None for g in match.groups()]
                return answer(*args)
        if re.fullmatch(
            r"/api/models/[^/]+/[^/]+(/(revision|tree)/.*)?|/[^/]+/[^/]+/resolve/.+", path
        ):
            return self._error(404, "RepoNotFound")
        self._unexpected()

    def _unexpected(self) -> None:
        self.server.unexpected.append(f"{self.command} {self.path}")
        self._error(404, "NotFound")

    do_HEAD = do_POST = do_PUT = do_DELETE = _unexpected

    def _error(self, status: int, code: str) -> None:
        self._send(status, json.dumps({"error": code}).encode(), {"X-Error-Code": code})

    def _send(self, status: int, body: bytes, headers: dict[str, str], data: bool = False):
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.server.counts.count(len(body), data)  # before the client can have it all
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value) -> None:
        self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _folder(self, revision: str | None, relative: str | None) -> Path | None:
        """The folder of `revision` (the default branch if None), or the path `relative`
        in it; None for an unknown revision, a path out of the folder, or a missing one."""
        root = self.server.revisions.get(revision or "main")
        if root is None:
            self._error(404, "RevisionNotFound")
            return None
        if relative is None:
            return root
        target = root / relative
        if ".." in relative.split("/") or not target.exists():
            self._error(404, "EntryNotFound")
            return None
        return target

    def _repo_info(self, revision: str | None) -> None:
        if self._folder(revision, None) is not None:
            sha = _oid(revision or "main")
            self._json({"id": self.server.repo, "sha": sha, "private": False, "siblings": []})

    def _tree(self, revision: str, folder: str | None) -> None:
        target = self._folder(revision, folder or ".")
        if target is None:
            return
        if not target.is_dir():
            return self._error(404, "EntryNotFound")
        root = self.server.revisions[revision]
        entries = []
        for child in sorted(target.iterdir()):
            relative = child.relative_to(root).as_posix()
            entry = {"type": "file", "oid": _oid(relative), "size": child.stat().st_size}
            if child.is_dir():
                entry = {"type": "directory", "oid": _oid(relative)}
            entries.append({**entry, "path": relative})
        self._json(entries)

    def _resolve(self, revision: str, relative: str) -> None:
        target = self._folder(revision, relative)
        if target is None:
            return
        if not target.is_file():
            return self._error(404, "EntryNotFound")
        size = target.stat().st_size
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        start = int(match.group(1)) if match else 0
        end = min(int(match.group(2) or size - 1), size - 1) if match else size - 1
        if start >= size:
            return self._error(416, "RangeNotSatisfiable")
        with open(target, "rb") as handle:
            handle.seek(start)
            body = handle.read(end - start + 1)
        headers = {"ETag": f'"{_oid(relative)}"'}
        if match:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(206 if match else 200, body, headers, data=True)


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory):
    pytest.importorskip("huggingface_hub", reason="needs huggingface_hub (the remote extra)")
    folder = tmp_path_factory.mktemp("hub")
    main, tagged = folder / "main", folder / "v1"
    for root in (main, tagged):
        (root / "nested" / "deeper").mkdir(parents=True)
        for path in FILES:
            shutil.copy(path, root / path.name)
        shutil.copy(ARCHIVE, root / "nested" / "deeper" / ARCHIVE.name)
    (tagged / "only-in-v1.keras").write_bytes(ARCHIVE.read_bytes())
    hub = FakeHub(REPO, {"main": main, "v1": tagged}, SECRET)
    stopper = _start(hub)
    try:
        yield hub
    finally:
        _stop(hub, stopper)


def hub_environment(endpoint: str, home: Path) -> dict[str, str]:
    """What a user sets to read from a Hub at `endpoint` with a token."""
    return {
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": SECRET,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0",
    }


@pytest.fixture
def hub(hub_server, monkeypatch, tmp_path):
    """The Hub environment set, and the repo's URL. huggingface_hub reads most of its
    environment once, when it is imported (which another test may have done), so the
    values it derives are set on its `constants` as a fresh import would."""
    from huggingface_hub import HfFileSystem, constants

    environment = hub_environment(hub_server.endpoint, tmp_path / "hf-home")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    for name, value in {
        "ENDPOINT": hub_server.endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub_server.endpoint
        + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
        "HF_HOME": environment["HF_HOME"],
        "HF_TOKEN_PATH": str(tmp_path / "hf-home" / "token"),
        "HF_STORED_TOKENS_PATH": str(tmp_path / "hf-home" / "stored_tokens"),
    }.items():
        monkeypatch.setattr(constants, name, value)
    HfFileSystem.clear_instance_cache()
    hub_server.counts.reset()
    hub_server.unexpected.clear()
    hub_server.unauthorized.clear()
    yield Served(f"hf://{REPO}", hub_server.counts, hub_server)
    HfFileSystem.clear_instance_cache()
    assert hub_server.unexpected == []
    assert hub_server.unauthorized == []


# --- Both stores -----------------------------------------------------------------------


@pytest.fixture(params=["gs", "hf"])
def store(request) -> Served:
    """Each store, its environment set."""
    return request.getfixturevalue("gcs" if request.param == "gs" else "hub")


def _put(store: Served, name: str, path: Path) -> None:
    """Put the file at `path` into the store as `name` (replacing any there)."""
    if isinstance(store.server, FakeHub):
        shutil.copy(path, store.server.revisions["main"] / name)
    else:
        _gcs_upload(store.server.host, name, path.read_bytes())  # type: ignore[attr-defined]


def _same_output(runner, local_args, remote_args):
    local = runner.invoke(cli, local_args)
    remote = runner.invoke(cli, remote_args)
    assert (remote.exit_code, remote.output) == (local.exit_code, local.output)
    return remote


def _first_table(path: Path) -> str:
    with embcli.open(path) as model:
        return sorted(model.tables)[0]


def _model_bytes(name: str) -> int:
    path = MODELS[name]
    return path.stat().st_size + (sum(s.stat().st_size for s in SHARDS) if path == SHARDED else 0)


@pytest.mark.parametrize("name", list(MODELS))
def test_layers_and_rows_give_the_local_files_output(store, runner, name):
    local, url = MODELS[name], store.url(name)
    layer = _first_table(local)
    for command in (["layers", "--json"], ["rows", "-l", layer, "0", "3", "-1", "--json"]):
        store.counts.reset()
        reset_transfer_stats()
        verb, *rest = command
        result = _same_output(runner, [verb, str(local), *rest], [verb, url, *rest])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)
        assert 0 < store.counts.bytes_sent <= _model_bytes(name)
        assert transfer_stats().bytes == store.counts.bytes_sent


@pytest.mark.parametrize("name", list(MODELS))
def test_export_writes_the_local_files_bytes(store, runner, tmp_path, name):
    local, url = MODELS[name], store.url(name)
    layer = _first_table(local)
    ours, theirs = tmp_path / "local.npy", tmp_path / "remote.npy"
    assert runner.invoke(cli, ["export", str(local), "-l", layer, "-o", str(ours)]).exit_code == 0
    result = runner.invoke(cli, ["export", url, "-l", layer, "-o", str(theirs)])
    assert result.exit_code == 0, result.output
    assert theirs.read_bytes() == ours.read_bytes()
    assert 0 < store.counts.bytes_sent <= _model_bytes(name)


def test_a_model_in_a_subfolder_is_read(store, runner):
    url = store.url(f"nested/deeper/{ARCHIVE.name}")
    assert _same_output(runner, ["layers", str(ARCHIVE)], ["layers", url]).exit_code == 0


def test_the_python_api_opens_the_url(store):
    with embcli.open(store.url(ARCHIVE.name)) as remote, embcli.open(ARCHIVE) as local:
        assert list(remote.tables) == list(local.tables)
        np.testing.assert_array_equal(
            remote.read("words", slice(0, 50)), local.read("words", slice(0, 50))
        )
    assert transfer_stats().requests >= 1
    assert 0 < transfer_stats().bytes == store.counts.bytes_sent <= ARCHIVE.stat().st_size


def test_a_remote_model_is_edited_into_a_local_copy(store, tmp_path):
    local, remote = tmp_path / "local.keras", tmp_path / "remote.keras"
    embcli.resize(ARCHIVE, "words", rows=64, output=local)
    embcli.resize(store.url(ARCHIVE.name), "words", rows=64, output=remote)
    with embcli.open(remote) as resized, embcli.open(local) as expected:
        np.testing.assert_array_equal(
            resized.read("words", slice(0, 64)), expected.read("words", slice(0, 64))
        )


MISSING = {
    "gs": [f"gs://{BUCKET}/absent.keras", "gs://no-such-bucket/m.keras"],
    "hf": [
        f"hf://{REPO}/absent.keras",
        f"hf://{REPO}/nested/absent/m.keras",
        f"hf://{REPO}-absent/k3_functional.keras",
        f"hf://{REPO}@no-such-rev/k3_functional.keras",
    ],
}


def test_a_missing_object_is_one_error_line(store, runner):
    for url in MISSING[store.base.split(":")[0]]:
        result = runner.invoke(cli, ["layers", url])
        assert (result.exit_code, result.output) == (1, f"Error: {url}: no such file or folder\n")


def test_credentials_are_sent_but_never_shown(store, runner, monkeypatch):
    if isinstance(store.server, FakeHub):
        secret = SECRET  # HF_TOKEN, which the fake Hub requires of every request
    else:
        import fsspec.config

        # A raw access token, as `FSSPEC_GS_TOKEN` gives it; gcsfs would ask Google for
        # its expiry unless told not to.
        secret = "ya29.gs-topsecret-access-token"
        monkeypatch.setitem(fsspec.config.conf, "gs", {"token": secret})
        monkeypatch.setenv("FETCH_RAW_TOKEN_EXPIRY", "false")
    outputs = [
        runner.invoke(cli, ["layers", store.url(ARCHIVE.name)]),
        runner.invoke(cli, ["rows", store.url(LEGACY.name), "-l", _first_table(LEGACY), "0"]),
        runner.invoke(cli, ["layers", store.url("absent.keras")]),
        runner.invoke(cli, ["assign", store.url(ARCHIVE.name), "--fill", "zeros", "--in-place"]),
    ]
    assert [result.exit_code for result in outputs] == [0, 0, 1, 1]
    assert all(secret not in result.output for result in outputs)
    assert store.counts.requests > 0
    if not isinstance(store.server, FakeHub):
        assert set(store.server.authorizations) == {f"Bearer {secret}"}  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory):
    """A `.keras` archive of ~10 MB (a 100,000-row table and its Adam slots)."""
    path = tmp_path_factory.mktemp("big") / "big.keras"
    embcli.resize(ARCHIVE, "words", rows=BIG_ROWS, init="normal:0.1", seed=7, output=path)
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


def test_reading_a_large_model_fetches_little_of_it(store, runner, big_archive):
    assert big_archive.stat().st_size > 9 * MB
    _put(store, "big.keras", big_archive)
    store.counts.reset()
    url = store.url("big.keras")
    _same_output(runner, ["layers", str(big_archive), "--json"], ["layers", url, "--json"])
    assert store.counts.bytes_sent <= MB
    listed = store.counts.bytes_sent
    store.counts.reset()
    reset_transfer_stats()
    rows = ["rows", "-l", "words", "0", "50000:50010", "-1", "--json"]
    _same_output(runner, [rows[0], str(big_archive), *rows[1:]], [rows[0], url, *rows[1:]])
    assert listed + store.counts.bytes_sent <= 2 * MB


def test_a_replaced_model_is_read_anew(store, tmp_path):
    _put(store, "replaced.keras", ARCHIVE)
    with embcli.open(store.url("replaced.keras")) as model:
        assert model.tables["words"].shape[0] == 50
    embcli.resize(ARCHIVE, "words", rows=70, output=tmp_path / "bigger.keras")
    _put(store, "replaced.keras", tmp_path / "bigger.keras")
    with embcli.open(store.url("replaced.keras")) as model:
        assert model.tables["words"].shape[0] == 70


# --- Hub revisions -----------------------------------------------------------------------


def test_an_hf_revision_is_read(hub, runner):
    url = f"{hub.base}@v1/only-in-v1.keras"
    assert _same_output(runner, ["layers", str(ARCHIVE)], ["layers", url]).exit_code == 0
    missing = runner.invoke(cli, ["layers", hub.url("only-in-v1.keras")])
    assert missing.output == f"Error: {hub.url('only-in-v1.keras')}: no such file or folder\n"


def test_a_sharded_model_at_an_hf_revision_finds_its_shards(hub, runner):
    url = f"{hub.base}@v1/{SHARDED.name}"
    result = _same_output(runner, ["layers", str(SHARDED), "--json"], ["layers", url, "--json"])
    assert result.exit_code == 0, result.output


# --- A fresh process, configured by its environment alone ---------------------------------

GUARD = """
import ipaddress, socket, sys
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
def _loopback(host):
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%", 1)[0]).is_loopback
    except ValueError:
        return False
def _refuse(what, error):
    print(f"test guard refused {what}", file=sys.stderr)
    raise error(f"test guard: {what} is not on loopback")
def connect(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
        _refuse(address, ConnectionRefusedError)
    return _connect(sock, address)
def getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name is not None and not _loopback(name):
        _refuse(name, socket.gaierror)
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
"""


def _embcli_process(tmp_path: Path, environment: dict[str, str], *args: str):
    """`python -m embcli ARGS` in a new process whose store settings are `environment`
    alone, with the loopback guard installed by a `sitecustomize` module."""
    guard = tmp_path / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(GUARD)
    paths = [str(guard), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    stores = ("HF_", "HUGGINGFACE", "STORAGE_EMULATOR", "FSSPEC_", "GCSFS_", "GOOGLE_", "AWS_")
    env = {name: value for name, value in os.environ.items() if not name.startswith(stores)}
    env.update(environment, PYTHONPATH=os.pathsep.join(paths))
    return subprocess.run(
        [sys.executable, "-m", "embcli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("scheme", ["gs", "hf"])
def test_a_fresh_process_takes_the_store_from_its_environment(request, tmp_path, scheme):
    if scheme == "gs":
        server = request.getfixturevalue("gcs_server")
        url = f"gs://{BUCKET}/{ARCHIVE.name}"
        environment = {
            "STORAGE_EMULATOR_HOST": server.host,
            "FSSPEC_GS_TOKEN": "anon",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "NO_GCE_CHECK": "true",
        }
    else:
        server = request.getfixturevalue("hub_server")
        url = f"hf://{REPO}/{ARCHIVE.name}"
        environment = hub_environment(server.endpoint, tmp_path / "hf-home")
        server.unauthorized.clear()
        server.unexpected.clear()
    server.counts.reset()
    local = _embcli_process(tmp_path, {}, "layers", str(ARCHIVE), "--json")
    remote = _embcli_process(tmp_path, environment, "layers", url, "--json")
    assert (remote.returncode, remote.stdout) == (0, local.stdout), remote.stderr
    assert "test guard refused" not in remote.stderr
    assert 0 < server.counts.bytes_sent <= ARCHIVE.stat().st_size
    if scheme == "hf":
        assert SECRET not in remote.stdout + remote.stderr
        assert server.unauthorized == [] and server.unexpected == []


def test_a_rejected_hf_token_is_one_error_line_without_it(hub, runner, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_secret_token")
    url = hub.url(ARCHIVE.name)
    result = runner.invoke(cli, ["layers", url])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {url}: ") and result.output.count("\n") == 1
    assert "401" in result.output and "hf_wrong_secret_token" not in result.output
    assert hub.server.unauthorized  # type: ignore[attr-defined]
    hub.server.unauthorized.clear()  # type: ignore[attr-defined]
