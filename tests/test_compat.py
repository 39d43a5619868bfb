"""Files written by older releases (fixtures/compat/<env>/, made by
fixtures/make_compat_fixtures.py in the virtual environments its docstring lists):
Keras 3.12 (per-channel int4 and int8 Embedding, sharded weights), Keras 3.8 with
keras-hub 0.20, and Keras 3.3 with keras-nlp 0.12. embcli lists and reads them as that
Keras reported, and edited copies load in current Keras with the new rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import FIXTURES

from embcli.cli import cli

COMPAT = FIXTURES / "compat"
GENERATOR = FIXTURES / "make_compat_fixtures.py"
ENVS = sorted(p.name for p in COMPAT.iterdir() if (p / "manifest.json").exists())
MANIFESTS = {env: json.loads((COMPAT / env / "manifest.json").read_text()) for env in ENVS}
FILES = [(env, name) for env in ENVS for name in sorted(MANIFESTS[env]["entries"])]
TABLES = [
    (env, name, "/".join(table["path"]))
    for env, name in FILES
    for table in MANIFESTS[env]["entries"][name]["tables"]
]
# Files from before Keras 3.6 record no layer names. A weights-only file has no config to
# find them in, and a subclassed model's config lists no layers: their tables are named
# by their storage groups.
UNNAMED = {
    ("k33", "functional.weights.h5"): {
        "words": "layers/embedding",
        "positions": "layers/embedding_1",
    },
    ("k33", "subclassed.keras"): {
        "table": "layers/embedding",
        "extra_a": "extras/embedding",
        "extra_b": "extras/embedding_1",
    },
}
TOLERANCE = {"float16": 1e-3, "bfloat16": 1e-2}
# Current Keras cannot load these at all (checked by hand: the unedited files fail the
# same way), since Keras 3.12's int4 Dense kernels have another layout; their tables are
# read above, and `int4_words.keras` (only the Embedding quantized) is reloaded instead.
NOT_LOADABLE_NOW = {("k312", "int4.keras"), ("k312", "gpt2_int4.keras")}


@pytest.fixture(scope="module")
def expected():
    values = {}
    for env in ENVS:
        with np.load(COMPAT / env / "expected.npz") as archive:
            values.update({f"{env}/{key}": archive[key] for key in archive.files})
    return values


def entry_of(env: str, name: str) -> dict:
    return MANIFESTS[env]["entries"][name]


def table_of(env: str, name: str, path: str) -> dict:
    return next(t for t in entry_of(env, name)["tables"] if "/".join(t["path"]) == path)


def logical_shape(table: dict) -> list[int]:
    return table["logical"] if table["quantized"] == "int4" else table["shape"]


def listed(runner, path) -> list[dict]:
    result = runner.invoke(cli, ["layers", str(path), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def embcli_name(runner, env: str, name: str, path: str) -> str:
    """The name embcli lists a manifest table under (qualified where names repeat)."""
    table = table_of(env, name, path)
    renamed = UNNAMED.get((env, name), {})
    if table["name"] in renamed:
        return renamed[table["name"]]
    own = table["name"]
    candidates = [
        t["qualified"]
        for t in listed(runner, COMPAT / env / name)
        if t["qualified"].split("/")[-1] == own and t["class"] == table["class"]
    ]
    # the longest qualified name that is a suffix of the layer's path
    fitting = [c for c in candidates if table["path"][-len(c.split("/")) :] == c.split("/")]
    return max(fitting or candidates, key=lambda c: len(c.split("/")))


@pytest.mark.parametrize(("env", "name"), FILES)
def test_layers_json_matches_what_that_keras_reported(runner, env, name):
    entry = entry_of(env, name)
    renamed = UNNAMED.get((env, name), {})
    want = sorted(
        (
            renamed.get(t["name"], t["name"]),
            t["class"],
            logical_shape(t),
            t["dtype"],
            t["quantized"],
        )
        for t in entry["tables"]
    )
    got = listed(runner, COMPAT / env / name)
    have = sorted(
        (
            t["name"] if renamed else t["name"].split("/")[-1],
            t["class"],
            t["shape"],
            t["dtype"],
            t["quantized"],
        )
        for t in got
        if t["embedding"]
    )
    assert have == want


@pytest.mark.parametrize(("env", "name", "path"), TABLES)
def test_export_gives_the_values_that_keras_computes(runner, expected, env, name, path, tmp_path):
    table = table_of(env, name, path)
    out = tmp_path / "table.npy"
    layer = embcli_name(runner, env, name, path)
    result = runner.invoke(cli, ["export", str(COMPAT / env / name), "-l", layer, "-o", str(out)])
    assert result.exit_code == 0, result.output
    got = np.load(out)
    want = expected[f"{env}/{name}:{path}"]
    assert got.shape == want.shape
    if table["quantized"]:
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
    result = runner.invoke(cli, ["rows", str(COMPAT / env / name), "-l", layer, "-1", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)["rows"][0]["vector"]
    np.testing.assert_allclose(np.asarray(row, np.float32), want[-1], rtol=1e-6, atol=1e-7)


def unpack_int4(packed: np.ndarray, dim: int) -> np.ndarray:
    """Keras's `unpack_int4` along the last axis: low nibble first, signed."""
    low = (packed.astype(np.int16) << 12 >> 12).astype(np.int8)
    high = (packed.astype(np.int16) << 8 >> 12).astype(np.int8)
    both = np.stack([low, high], axis=-1).reshape(*packed.shape[:-1], -1)
    return both[..., :dim]


INT4 = [(env, name, path) for env, name, path in TABLES if table_of(env, name, path)["quantized"]]


@pytest.mark.parametrize(("env", "name", "path"), INT4)
def test_raw_gives_one_stored_integer_per_value(runner, expected, env, name, path, tmp_path):
    table = table_of(env, name, path)
    layer = embcli_name(runner, env, name, path)
    out = tmp_path / "raw.npy"
    source = str(COMPAT / env / name)
    result = runner.invoke(cli, ["export", source, "-l", layer, "--raw", "-o", str(out)])
    assert result.exit_code == 0, result.output
    stored = expected[f"{env}/{name}:{path}:raw"]
    want = unpack_int4(stored, table["logical"][1]) if table["quantized"] == "int4" else stored
    got = np.load(out)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, want)
    result = runner.invoke(cli, ["rows", source, "-l", layer, "0", "--raw", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"][0]["vector"] == want[0].tolist()


VOCABS = [(env, name) for env, name in FILES if entry_of(env, name).get("vocabulary")]


def vocabulary_of(env: str, name: str) -> tuple[list[str], list[str]]:
    vocab = entry_of(env, name)["vocabulary"]
    if isinstance(vocab, dict):
        ((layer, tokens),) = vocab.items()
        return ["-l", layer], tokens
    return ["-l", "token_embedding"], vocab  # a keras-hub tokenizer feeds the token table


@pytest.mark.parametrize(("env", "name"), VOCABS)
def test_vocab_is_what_the_tokenizer_or_lookup_reported(runner, env, name):
    layer, tokens = vocabulary_of(env, name)
    source = str(COMPAT / env / name)
    result = runner.invoke(cli, ["vocab", source, *layer, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tokens"] == tokens
    token = tokens[3]
    result = runner.invoke(cli, ["rows", source, *layer, "--token", token, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"][0]["index"] == 3


def reload_in_current_keras(env: str, name: str, path, tmp_path) -> dict:
    """The generator's `--reload` in this interpreter: the edited file's tables and its
    output on the manifest's sample, as current Keras (TensorFlow backend) loads it."""
    entry = dict(entry_of(env, name))
    if entry.get("architecture"):
        entry["architecture"] = str(COMPAT / env / entry["architecture"])
    env_vars = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, str(GENERATOR), "--reload", str(path), "--entry", json.dumps(entry)],
        capture_output=True,
        text=True,
        env=env_vars,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def suffix_of(name: str) -> str:
    return "" if (FIXTURES / name).is_dir() or "." not in name else "." + name.split(".", 1)[1]


EDITABLE = [
    (env, name)
    for env, name in FILES
    if entry_of(env, name)["tables"] and (env, name) not in NOT_LOADABLE_NOW
]


@pytest.mark.keras
@pytest.mark.parametrize(("env", "name"), EDITABLE)
def test_an_assigned_copy_loads_in_current_keras_with_the_new_rows(
    runner, expected, env, name, tmp_path
):
    entry = entry_of(env, name)
    path = "/".join(entry["tables"][0]["path"])
    table = table_of(env, name, path)
    rows, dim = logical_shape(table)
    new = np.linspace(-0.5, 0.5, 2 * dim, dtype=np.float32).reshape(2, dim)
    np.save(tmp_path / "new.npy", new)
    out = tmp_path / f"edited{suffix_of(name)}"
    args = ["assign", str(COMPAT / env / name), "-l", embcli_name(runner, env, name, path)]
    args += ["--rows", "1,3", "--from", str(tmp_path / "new.npy"), "-o", str(out)]
    result = runner.invoke(cli, [*args, "--allow-lossy"])
    assert result.exit_code == 0, result.output
    got = reload_in_current_keras(env, name, out, tmp_path)
    want = expected[f"{env}/{name}:{path}"].astype(np.float32).copy()
    want[[1, 3]] = new
    tolerance = 0.05 if table["quantized"] else TOLERANCE.get(table["dtype"], 0)
    np.testing.assert_allclose(np.asarray(got["tables"][path]), want, rtol=0, atol=tolerance)
    if entry.get("sample") is not None:
        assert got["output"] is not None


RESIZABLE = [
    (env, name)
    for env, name in EDITABLE
    if entry_of(env, name)["kind"] in ("keras_archive", "preset", "legacy_h5")
    # the subclassed model's config records its size as its own `rows`, which embcli
    # refuses to guess at; hub_layers sums two tables' logits, so one cannot grow alone
    and "subclassed" not in name
    and "hub_layers" not in name
]


@pytest.mark.keras
@pytest.mark.parametrize(("env", "name"), RESIZABLE)
def test_a_resized_copy_loads_in_current_keras(runner, expected, env, name, tmp_path):
    entry = entry_of(env, name)
    path = "/".join(entry["tables"][0]["path"])
    rows = logical_shape(table_of(env, name, path))[0]
    out = tmp_path / f"resized{suffix_of(name)}"
    layer = embcli_name(runner, env, name, path)
    args = ["resize", str(COMPAT / env / name), "-l", layer, "--add", "3", "-o", str(out)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    got = np.asarray(reload_in_current_keras(env, name, out, tmp_path)["tables"][path])
    assert got.shape[0] == rows + 3
    want = expected[f"{env}/{name}:{path}"].astype(np.float32)
    np.testing.assert_allclose(
        got[:rows], want, rtol=0, atol=0.05 if entry["tables"][0]["quantized"] else 0
    )


def test_a_resized_old_preset_keeps_the_task_files_backbone_copy_in_shape(runner, tmp_path):
    """keras-hub 0.20's `task.weights.h5` holds a copy of the backbone, never read but
    loaded by shape: it is hidden from `layers`, and it grows with the table, or that
    release could not load the task (checked by hand in Keras 3.8 + keras-hub 0.20)."""
    import h5py

    source = COMPAT / "k38" / "bert"
    names = [t["name"] for t in listed(runner, source)]
    assert sorted(names) == ["position_embedding", "segment_embedding", "token_embedding"]
    out = tmp_path / "resized"
    args = ["resize", str(source), "-l", "token_embedding", "--add", "2", "-o", str(out)]
    result = runner.invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    copy = "layers/bert_backbone/layers/reversible_embedding/vars/0"
    assert f"task/{copy}" in json.loads(result.output)["resized"]
    with (
        h5py.File(out / "model.weights.h5") as backbone,
        h5py.File(out / "task.weights.h5") as task,
    ):
        table = backbone["layers/reversible_embedding/vars/0"][()]
        assert table.shape == (166, 8)
        np.testing.assert_array_equal(task[copy][()], table)


@pytest.mark.keras
def test_a_resized_old_preset_task_loads_in_current_keras_hub(runner, tmp_path):
    out = tmp_path / "resized"
    args = ["resize", str(COMPAT / "k38" / "bert"), "-l", "token_embedding"]
    result = runner.invoke(
        cli, [*args, "--add-token", "zzqx", "--add-token", "qqzx", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    script = (
        "import sys, numpy as np, keras_hub\n"
        "task = keras_hub.models.BertMaskedLM.from_preset(sys.argv[1])\n"
        "table = task.backbone.get_layer('token_embedding').embeddings\n"
        "task.predict(['a b c'], verbose=0)\n"
        "print(table.shape[0], task.preprocessor.tokenizer.vocabulary_size())\n"
    )
    env_vars = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env_vars
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["166", "166"]
