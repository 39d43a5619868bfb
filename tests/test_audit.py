"""stats, check, diff and neighbors: exact output, exit codes and JSON keys on models edited
with `embcli.edit.assign`, and every number against brute-force numpy over the values Keras
reported for the fixtures (fixtures/expected/*.npz)."""

import io
import json
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from conftest import FIXTURES, MANIFEST, fixture_names
from hypothesis import given, settings
from hypothesis import strategies as st

from embcli import audit
from embcli.cli import cli
from embcli.commands.audit import COMMANDS, diff_line
from embcli.edit import assign, quantize_rows
from embcli.formats.base import ModelFile, Table
from embcli.model import find_table, open_model

FUNCTIONAL = FIXTURES / "k3_functional.keras"
STATS_KEYS = {
    "name",
    "class",
    "weight",
    "quantized",
    "rows",
    "dim",
    "dtype",
    "nan_rows",
    "inf_rows",
    "zero_rows",
    "duplicate_rows",
    "norm_min",
    "norm_mean",
    "norm_max",
    "mean",
    "std",
}
DIFF_KEYS = {
    "name",
    "status",
    "shape_a",
    "shape_b",
    "dtype_a",
    "dtype_b",
    "changed_count",
    "changed_rows",
    "max_abs_diff",
    "min_cosine",
}
# Keras 3.0 weights files carry no layer names, so the manifest's names cannot find them.
ORACLE_FIXTURES = [f for f in fixture_names() if f != "k30.weights.h5"]
SMALL_BLOCKS = 64


# ---------------------------------------------------------------------------- helpers


def expected_tables(fixture: str) -> dict[str, np.ndarray]:
    """The values Keras computed for each table, keyed by its `outer/inner` path."""
    entry = MANIFEST[fixture]
    arrays = np.load(FIXTURES / entry["expected"])
    return {"/".join(t["path"]): arrays["/".join(t["path"])] for t in entry["tables"]}


def oracle_table(model: ModelFile, key: str) -> Table:
    """The table Keras knows by `key` (`outer/inner`); files that do not record the outer
    layers still name it by its own layer name."""
    from embcli.errors import NoSuchTable

    try:
        return find_table(model, key)
    except NoSuchTable:
        return find_table(model, key.rsplit("/", 1)[-1])


def brute_stats(values: np.ndarray) -> dict:
    wide = values.astype(np.float64)
    nan = np.isnan(wide).any(axis=1)
    inf = np.isinf(wide).any(axis=1)
    finite_rows = wide[~(nan | inf)]
    seen: set[bytes] = set()
    duplicates = 0
    for row in np.ascontiguousarray(values):
        duplicates += row.tobytes() in seen
        seen.add(row.tobytes())
    norms = np.array([np.sqrt(sum(float(x) ** 2 for x in row)) for row in finite_rows])
    finite = wide[np.isfinite(wide)]
    return {
        "rows": values.shape[0],
        "dim": values.shape[1],
        "nan_rows": int(nan.sum()),
        "inf_rows": int(inf.sum()),
        "zero_rows": int((wide == 0).all(axis=1).sum()),
        "duplicate_rows": duplicates,
        "norm_min": float(norms.min()) if len(norms) else None,
        "norm_mean": float(norms.mean()) if len(norms) else None,
        "norm_max": float(norms.max()) if len(norms) else None,
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
    }


def assert_stats(got: dict, want: dict) -> None:
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-300), key
        else:
            assert got[key] == value, key


def computed(values: np.ndarray, table: Table) -> np.ndarray:
    """What the model computes with after `values` are assigned to the table's rows."""
    if table.quantized == "int8":
        quantized, scale = quantize_rows(values)
        return quantized.astype(np.float32) / scale[:, None]
    if table.dtype == "bfloat16":
        return values.astype(ml_dtypes.bfloat16).astype(np.float32)
    return values.astype(table.dtype)


def write_copy(source: Path, target: Path, edits: list[tuple[str, list[int], np.ndarray]]) -> Path:
    """Apply `(layer, rows, values)` edits one after another with `assign`; the last writes
    `target`."""
    current = source
    for step, (layer, rows, values) in enumerate(edits):
        out = target if step == len(edits) - 1 else target.with_name(f"step{step}_{target.name}")
        with open_model(current) as model:
            assign(
                model, find_table(model, layer), np.asarray(rows), values, out, allow_nonfinite=True
            )
        current = out
    return target


def copy_name(fixture: str, stem: str) -> str:
    for suffix in (".weights.h5", ".keras", ".h5"):
        if fixture.endswith(suffix):
            return stem + suffix
    raise ValueError(fixture)


def brute_neighbors(values: np.ndarray, row: int, metric: str) -> list[tuple[int, float]]:
    wide = values.astype(np.float64)
    query = wide[row]
    scores = []
    for index, vector in enumerate(wide):
        if index == row or not np.isfinite(vector).all():
            continue
        if metric == "dot":
            score = float(np.dot(vector, query))
        elif metric == "l2":
            score = float(np.sqrt(np.sum((vector - query) ** 2)))
        else:
            norms = np.linalg.norm(vector) * np.linalg.norm(query)
            score = float(np.dot(vector, query) / norms) if norms else 0.0
        scores.append((index, score))
    return sorted(scores, key=lambda item: (item[1] if metric == "l2" else -item[1], item[0]))


def assert_neighbors(got: list, want: list[tuple[int, float]], k: int) -> None:
    """The best k scores, up to float64 rounding, each the brute-force score of its row."""
    by_row = dict(want)
    assert len(got) == min(k, len(want))
    assert [n.score for n in got] == pytest.approx([s for _, s in want[:k]], rel=1e-9, abs=1e-12)
    assert [n.score for n in got] == pytest.approx(
        [by_row[n.index] for n in got], rel=1e-9, abs=1e-12
    )


class ArrayModel(ModelFile):
    """An in-memory table behind the ModelFile interface, for property tests."""

    format_name = "array"

    def __init__(self, values: np.ndarray) -> None:
        super().__init__(Path("memory"))
        self.values = values
        self.table = Table("t", "t", "Embedding", values.shape, values.dtype.name, "t")

    def tables(self, all_weights: bool = False) -> list[Table]:
        return [self.table]

    def weight_info(self, weight):
        return self.values.shape, self.values.dtype

    def read(self, weight, rows):
        return self.values[rows]

    def plan_write(self, output, patches, in_place):
        raise NotImplementedError


# ---------------------------------------------------------------------------- models

WORDS = np.zeros((50, 8), np.float32)
WORDS[:, 0] = np.arange(1, 51)
POSITIONS = np.array([[i % 3 - 1, i % 5 - 2, i % 7 - 3, 1] for i in range(30)], np.float32)
DIRTY_ROWS = [3, 5, 7, 10, 20, 30, 31, 40]


def dirty_words() -> np.ndarray:
    values = WORDS[DIRTY_ROWS].copy()
    values[0, 1] = np.nan
    values[1, 2] = np.inf
    values[2, 0], values[2, 3] = np.nan, -np.inf
    values[3] = values[4] = 0.0
    values[5] = values[6] = WORDS[1]
    values[7] = -0.0
    return values


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, str]:
    """Copies of k3_functional.keras with known tables: clean, dirty (NaN, Inf, zero and
    duplicate rows in `words`) and moved (two rows of `words` changed)."""
    root = tmp_path_factory.mktemp("audit")
    everything = [("words", list(range(50)), WORDS), ("positions", list(range(30)), POSITIONS)]
    clean = write_copy(FUNCTIONAL, root / "clean.keras", everything)
    dirty = write_copy(clean, root / "dirty.keras", [("words", DIRTY_ROWS, dirty_words())])
    moved_rows = WORDS[[2, 4]].copy()
    moved_rows[0, 1] = 0.5
    moved_rows[1] *= -1
    moved = write_copy(clean, root / "moved.keras", [("words", [2, 4], moved_rows)])
    return {"clean": str(clean), "dirty": str(dirty), "moved": str(moved)}


# (fixture, Keras path, --layer) of tables edited into an unhealthy copy, over the formats
# assign writes
EDIT_CASES = [
    ("k3_functional.keras", "words", "words"),
    ("k3.weights.h5", "positions", "positions"),
    ("k3_legacy.h5", "subnet/leaf/leaf_emb", "leaf_emb"),
    ("k3_legacy.h5", "tower/emb", "tower/emb"),
    ("tfk_full.h5", "word_emb", "word_emb"),
    ("tfk_weights.h5", "tower/inner_emb", "inner_emb"),
    ("k3_dtypes.keras", "emb_f16", "emb_f16"),
    ("k3_dtypes.keras", "emb_bf16", "emb_bf16"),
    ("k3_int8.keras", "words", "words"),
]


def unhealthy_edit(original: np.ndarray, table: Table) -> tuple[list[int], np.ndarray]:
    """Rows 1-2 get NaN/Inf (not for int8), 3-4 zeros, 5 a copy of row 0, 6 negative zeros."""
    rows = [3, 4, 5, 6] if table.quantized else [1, 2, 3, 4, 5, 6]
    values = original[rows].astype(np.float32)
    for at, row in enumerate(rows):
        if row == 1:
            values[at, 0] = np.nan
        elif row == 2:
            values[at, -1] = -np.inf
        elif row in (3, 4):
            values[at] = 0.0
        elif row == 5:
            values[at] = original[0]
        else:
            values[at] = -0.0
    return rows, values


@pytest.fixture(scope="session")
def unhealthy(tmp_path_factory) -> dict:
    """Per EDIT_CASES entry: the edited copy's path, and the values it should hold."""
    root = tmp_path_factory.mktemp("unhealthy")
    made = {}
    for number, (fixture, key, layer) in enumerate(EDIT_CASES):
        original = expected_tables(fixture)[key]
        with open_model(FIXTURES / fixture) as model:
            table = find_table(model, layer)
        rows, values = unhealthy_edit(original, table)
        target = write_copy(
            FIXTURES / fixture, root / copy_name(fixture, f"u{number}"), [(layer, rows, values)]
        )
        want = original.copy()
        want[rows] = computed(values, table)
        made[(fixture, layer)] = (str(target), want)
    return made


# ---------------------------------------------------------------------------- stats


@pytest.mark.parametrize("fixture", ORACLE_FIXTURES)
def test_stats_match_brute_force_on_keras_values(fixture):
    with open_model(FIXTURES / fixture) as model:
        for key, values in expected_tables(fixture).items():
            table = oracle_table(model, key)
            got = audit.table_stats(model, table, block_bytes=SMALL_BLOCKS)
            assert_stats(got.record(), brute_stats(values))


@pytest.mark.tensorflow
@pytest.mark.parametrize("fixture", fixture_names({"savedmodel", "checkpoint", "export"}))
def test_audits_read_tensorflow_artifacts(runner, fixture):
    pytest.importorskip("tensorflow")
    test_stats_match_brute_force_on_keras_values(fixture)
    with open_model(FIXTURES / fixture) as model:
        for key, values in expected_tables(fixture).items():
            table = oracle_table(model, key)
            got = audit.neighbors(model, table, 0, 3, "l2", block_bytes=SMALL_BLOCKS)
            assert_neighbors(got, brute_neighbors(values, 0, "l2"), 3)
    twin = {"tfk_ckpt/ckpt": "tfk_full.h5", "tfk_savedmodel": "tfk.keras"}.get(fixture)
    if twin is None:
        return
    result = runner.invoke(cli, ["diff", str(FIXTURES / fixture), str(FIXTURES / twin), "--json"])
    shared = [r for r in json.loads(result.stdout) if r["status"] not in ("only_in_a", "only_in_b")]
    assert shared and all(r["status"] == "same" for r in shared)


@pytest.mark.parametrize(("fixture", "key", "layer"), EDIT_CASES)
def test_stats_of_edited_tables(unhealthy, runner, fixture, key, layer):
    path, want = unhealthy[(fixture, layer)]
    result = runner.invoke(cli, ["stats", path, "-l", layer, "--json"])
    assert result.exit_code == 0, result.output
    [record] = json.loads(result.stdout)
    assert set(record) == STATS_KEYS
    expected = brute_stats(want)
    assert_stats(record, expected)
    nonfinite = 0 if fixture == "k3_int8.keras" else 1
    assert (record["nan_rows"], record["inf_rows"]) == (nonfinite, nonfinite)
    assert record["zero_rows"] == 3
    # float tables: rows 4 and 5 repeat rows 3 and 0; row 6 holds -0.0, other bits than 0.0.
    # int8: -0.0 quantizes to 0, so row 6 repeats row 3, but row 5 requantized is no longer
    # bit-equal to row 0 as Keras quantized it.
    assert record["duplicate_rows"] == 2


def test_stats_text(runner, models):
    result = runner.invoke(cli, ["stats", models["dirty"]])
    assert result.exit_code == 0
    assert result.stderr == ""
    assert result.stdout == (
        "name       rows  dim  dtype    nan  inf  zero  dup  norm_min  norm_mean  norm_max"
        "      mean      std\n"
        "words        50    8  float32    2    2     3    3       0.0    23.9362      50.0"
        "   2.86616  9.45322\n"
        "positions    30    4  float32    0    0     0    0   1.41421    2.71378   3.87298"
        "  0.208333  1.38381\n"
    )


def test_stats_json(runner, models):
    result = runner.invoke(cli, ["stats", models["dirty"], "--json"])
    records = json.loads(result.stdout)
    assert [r["name"] for r in records] == ["words", "positions"]
    words = np.zeros((50, 8), np.float32)
    words[:] = WORDS
    words[DIRTY_ROWS] = dirty_words()
    assert_stats(records[0], brute_stats(words))
    assert_stats(records[1], brute_stats(POSITIONS))
    assert records[0] == {
        **records[0],
        "class": "Embedding",
        "weight": "layers/embedding/vars/0",
        "quantized": None,
        "rows": 50,
        "dim": 8,
        "dtype": "float32",
        "nan_rows": 2,
        "inf_rows": 2,
        "zero_rows": 3,
        "duplicate_rows": 3,
        "norm_min": 0.0,
        "norm_max": 50.0,
    }


def test_stats_layer_and_errors(runner, models):
    one = runner.invoke(cli, ["stats", models["clean"], "-l", "positions", "--json"])
    assert [r["name"] for r in json.loads(one.stdout)] == ["positions"]
    missing = runner.invoke(cli, ["stats", models["clean"], "-l", "nope"])
    assert missing.exit_code == 1
    assert missing.stderr.startswith("Error: no table named 'nope'")
    assert runner.invoke(cli, ["stats"]).exit_code == 2


def test_stats_reports_progress_per_block():
    values = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    model = ArrayModel(values)
    calls: list[int] = []
    audit.table_stats(model, model.table, block_bytes=12 * 7, progress=calls.append)
    assert calls == [7] * 5 + [5]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 30),
    st.integers(1, 6),
    st.sampled_from([np.float16, np.float32, np.float64]),
    st.data(),
    st.integers(1, 200),
)
def test_stats_property(rows, dim, dtype, data, block_bytes):
    pool = [0.0, -0.0, 1.0, -2.5, 0.125, np.nan, np.inf, -np.inf, 6e4]
    flat = data.draw(st.lists(st.sampled_from(pool), min_size=rows * dim, max_size=rows * dim))
    values = np.array(flat, dtype=np.float64).reshape(rows, dim).astype(dtype)
    model = ArrayModel(values)
    got = audit.table_stats(model, model.table, block_bytes=block_bytes)
    assert_stats(got.record(), brute_stats(values))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(audit.duplicates, "row_hashes", lambda block: np.zeros(len(block), np.uint64))
        colliding = audit.table_stats(model, model.table, block_bytes=block_bytes)
    assert colliding.duplicate_rows == got.duplicate_rows


def test_duplicates_over_several_passes():
    rng = np.random.default_rng(3)
    values = rng.integers(0, 40, size=(300, 1)).astype(np.float32) * np.ones((1, 4), np.float32)
    model = ArrayModel(values)
    want = brute_stats(values)["duplicate_rows"]
    for block_bytes in (1, 4, 16, 100, 10**6):
        assert audit.count_duplicates(model, model.table, block_bytes=block_bytes) == want
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(audit.duplicates, "row_hashes", lambda block: np.zeros(len(block), np.uint64))
        assert audit.count_duplicates(model, model.table, block_bytes=4) == want


def test_progress_bar_only_on_a_terminal(monkeypatch):
    from embcli.commands import audit as commands

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    table = Table("t", "t", None, (10, 2), "float32", "t")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(commands, "PROGRESS_VALUES", 5)
    with commands.progress([table], "stats") as update:
        update(10)
    assert "stats" in terminal.getvalue()
    monkeypatch.setattr(commands, "PROGRESS_VALUES", 20)
    with commands.progress([table], "stats") as update:
        assert update is None
    monkeypatch.setattr(commands, "PROGRESS_VALUES", 5)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with commands.progress([table], "stats") as update:
        assert update is None


def test_row_hashes_depend_on_every_byte():
    rng = np.random.default_rng(0)
    block = rng.standard_normal((200, 5)).astype(np.float32)
    hashes = audit.row_hashes(block)
    assert len(set(hashes.tolist())) == 200
    for column in range(5):
        changed = block.copy()
        changed[:, column] = np.nextafter(changed[:, column], np.float32(np.inf))
        assert (audit.row_hashes(changed) != hashes).all()
    assert (audit.row_hashes(block[::-1])[::-1] == hashes).all()


# ---------------------------------------------------------------------------- check


def test_check_ok(runner, models):
    result = runner.invoke(
        cli,
        ["check", models["clean"], "--max-norm", "50", "--max-zero-rows", "0", "--no-duplicates"],
    )
    assert (result.exit_code, result.stdout, result.stderr) == (
        0,
        "ok: 2 tables, 80 rows checked\n",
        "",
    )
    one = runner.invoke(cli, ["check", models["dirty"], "-l", "positions"])
    assert (one.exit_code, one.stdout) == (0, "ok: 1 table, 30 rows checked\n")


def test_check_nonfinite_rows_fail_without_options(runner, models):
    result = runner.invoke(cli, ["check", models["dirty"]])
    assert (result.exit_code, result.stdout, result.stderr) == (
        1,
        "words: 3 rows hold NaN or Inf\n",
        "",
    )


def test_check_limits(runner, models):
    result = runner.invoke(
        cli,
        ["check", models["dirty"], "--max-norm", "49.5", "--max-zero-rows", "2", "--no-duplicates"],
    )
    assert result.exit_code == 1
    assert result.stdout == (
        "words: 3 rows hold NaN or Inf\n"
        "words: 1 row has an L2 norm above 49.5 (largest 50)\n"
        "words: 3 all-zero rows, more than the 2 allowed\n"
        "words: 3 rows duplicate an earlier row\n"
    )
    within = runner.invoke(cli, ["check", models["dirty"], "--max-zero-rows", "3"])
    assert within.stdout == "words: 3 rows hold NaN or Inf\n"


def test_check_json(runner, models):
    result = runner.invoke(cli, ["check", models["dirty"], "--no-duplicates", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "ok": False,
        "tables": 2,
        "rows": 80,
        "problems": [
            {
                "table": "words",
                "kind": "nonfinite",
                "count": 3,
                "message": "words: 3 rows hold NaN or Inf",
            },
            {
                "table": "words",
                "kind": "duplicates",
                "count": 3,
                "message": "words: 3 rows duplicate an earlier row",
            },
        ],
    }
    ok = runner.invoke(cli, ["check", models["clean"], "--json"])
    assert (ok.exit_code, json.loads(ok.stdout)) == (
        0,
        {"ok": True, "tables": 2, "rows": 80, "problems": []},
    )


@pytest.mark.parametrize(("fixture", "key", "layer"), EDIT_CASES)
def test_check_edited_tables(unhealthy, runner, fixture, key, layer):
    path, _ = unhealthy[(fixture, layer)]
    result = runner.invoke(cli, ["check", path, "-l", layer, "--no-duplicates"])
    assert result.exit_code == 1
    with open_model(path) as model:
        name = find_table(model, layer).name
    lines = [f"{name}: 2 rows duplicate an earlier row"]
    if fixture != "k3_int8.keras":
        lines.insert(0, f"{name}: 2 rows hold NaN or Inf")
    assert result.stdout.splitlines() == lines


@pytest.mark.parametrize(
    "fixture",
    [
        "k3_functional.keras",
        "k3_legacy.h5",
        "tfk_full.h5",
        "k3_sharded.weights.json",
        "k3_folder",
        "k3_int8.keras",
    ],
)
def test_check_fixtures_are_healthy(runner, fixture):
    result = runner.invoke(cli, ["check", str(FIXTURES / fixture)])
    tables = expected_tables(fixture)
    rows = sum(len(v) for v in tables.values())
    assert (result.exit_code, result.stdout) == (
        0,
        f"ok: {len(tables)} tables, {rows} rows checked\n".replace("ok: 1 tables", "ok: 1 table"),
    )


def test_check_usage_errors(runner, models):
    assert runner.invoke(cli, ["check", models["clean"], "--max-norm", "-1"]).exit_code == 2
    assert runner.invoke(cli, ["check", models["clean"], "--max-zero-rows", "x"]).exit_code == 2
    bad = runner.invoke(cli, ["check", "/nonexistent/model.keras"])
    assert bad.exit_code == 1
    assert bad.stderr.startswith("Error: ")


# ---------------------------------------------------------------------------- diff


def test_diff_same_across_formats(runner):
    for other in ("k3.weights.h5", "k3_folder", "k3_sharded.weights.json"):
        result = runner.invoke(cli, ["diff", str(FUNCTIONAL), str(FIXTURES / other)])
        assert (result.exit_code, result.stdout) == (0, "same: 2 tables, 80 rows compared\n")
    result = runner.invoke(
        cli, ["diff", str(FIXTURES / "tfk_full.h5"), str(FIXTURES / "tfk.keras")]
    )
    assert (result.exit_code, result.stdout) == (0, "same: 2 tables, 60 rows compared\n")


def test_diff_changed_rows(runner, models):
    result = runner.invoke(cli, ["diff", models["clean"], models["moved"]])
    assert (result.exit_code, result.stderr) == (1, "")
    assert result.stdout == (
        "words: 2 of 50 rows changed: 2, 4; max abs diff 10.0, min cosine -1.0\n"
        "1 of 2 tables differ\n"
    )


def test_diff_atol(runner, models):
    half = runner.invoke(cli, ["diff", models["clean"], models["moved"], "--atol", "0.5"])
    assert half.stdout.splitlines()[0] == (
        "words: 1 of 50 rows changed: 4; max abs diff 10.0, min cosine -1.0"
    )
    wide = runner.invoke(cli, ["diff", models["clean"], models["moved"], "--atol", "10"])
    assert (wide.exit_code, wide.stdout) == (0, "same: 2 tables, 80 rows compared\n")


def test_diff_json(runner, models):
    result = runner.invoke(cli, ["diff", models["clean"], models["moved"], "--json"])
    assert result.exit_code == 1
    records = json.loads(result.stdout)
    assert all(set(r) == DIFF_KEYS for r in records)
    words, positions = records
    assert words == {
        "name": "words",
        "status": "changed",
        "shape_a": [50, 8],
        "shape_b": [50, 8],
        "dtype_a": "float32",
        "dtype_b": "float32",
        "changed_count": 2,
        "changed_rows": [2, 4],
        "max_abs_diff": 10.0,
        "min_cosine": -1.0,
    }
    assert positions["status"] == "same"
    assert (positions["changed_rows"], positions["changed_count"]) == ([], 0)
    assert (positions["max_abs_diff"], positions["min_cosine"]) == (0.0, None)


def test_diff_nan_and_signed_zero(runner, models):
    result = runner.invoke(cli, ["diff", models["clean"], models["dirty"], "-l", "words", "--json"])
    [words] = json.loads(result.stdout)
    assert words["changed_rows"] == DIRTY_ROWS
    assert words["max_abs_diff"] is None  # JSON has no infinity: null (RFC 8259)
    assert words["min_cosine"] == 0.0
    against_itself = runner.invoke(cli, ["diff", models["dirty"], models["dirty"]])
    assert against_itself.exit_code == 0
    loose = runner.invoke(
        cli, ["diff", models["clean"], models["dirty"], "-l", "words", "--atol", "100", "--json"]
    )
    assert json.loads(loose.stdout)[0]["changed_rows"] == [3, 5, 7]


@pytest.mark.parametrize(("fixture", "key", "layer"), EDIT_CASES)
def test_diff_edited_tables_match_brute_force(unhealthy, fixture, key, layer):
    path, want = unhealthy[(fixture, layer)]
    original = expected_tables(fixture)[key]
    with open_model(FIXTURES / fixture) as a, open_model(path) as b:
        [result] = audit.diff(a, b, layer, block_bytes=SMALL_BLOCKS)
    bits = (
        np.ascontiguousarray(original).view(np.uint8).reshape(len(original), -1)
        != np.ascontiguousarray(want).view(np.uint8).reshape(len(want), -1)
    ).any(axis=1)
    assert result.changed_rows == np.flatnonzero(bits).tolist()
    assert result.status == "changed"


def test_diff_tables_only_in_one_and_dtype(runner):
    int8 = str(FIXTURES / "k3_int8.keras")
    result = runner.invoke(cli, ["diff", str(FUNCTIONAL), int8])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        "words: dtype float32 -> int8; 50 of 50 rows changed: "
        "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 40 more; max abs diff "
    )
    assert lines[1:] == ["positions: only in A", "2 of 2 tables differ"]
    swapped = json.loads(runner.invoke(cli, ["diff", int8, str(FUNCTIONAL), "--json"]).stdout)
    assert [(r["name"], r["status"]) for r in swapped] == [
        ("words", "dtype_changed"),
        ("positions", "only_in_b"),
    ]
    assert swapped[1]["changed_rows"] == [] and swapped[1]["changed_count"] is None
    keras_values = expected_tables("k3_int8.keras")["words"]
    float_values = expected_tables("k3_functional.keras")["words"]
    assert swapped[0]["max_abs_diff"] == pytest.approx(
        float(np.abs(keras_values.astype(np.float64) - float_values).max()), rel=1e-12
    )


def test_diff_layer_missing_from_one_model(runner):
    result = runner.invoke(
        cli, ["diff", str(FUNCTIONAL), str(FIXTURES / "k3_vocab.keras"), "-l", "words"]
    )
    assert (result.exit_code, result.stdout) == (1, "words: only in A\n1 of 1 table differ\n")


def test_diff_shape_changed():
    with open_model(FUNCTIONAL) as model:
        words, positions = find_table(model, "words"), find_table(model, "positions")
        result = audit.diff_tables(model, words, model, positions, name="t")
    assert (result.status, result.compared) == ("shape_changed", False)
    assert result.record()["shape_a"] == [50, 8] and result.record()["shape_b"] == [30, 4]
    assert diff_line(result) == "t: shape 50x8 -> 30x4"


def test_diff_dtype_changed_library():
    fixture = "k3_dtypes.keras"
    values = expected_tables(fixture)
    with open_model(FIXTURES / fixture) as model:
        f16, f32 = find_table(model, "emb_f16"), find_table(model, "emb_f32")
        result = audit.diff_tables(model, f16, model, f32, name="emb")
    assert result.status == "dtype_changed"
    a, b = values["emb_f16"].astype(np.float64), values["emb_f32"].astype(np.float64)
    assert result.changed_rows == np.flatnonzero((a != b).any(axis=1)).tolist()
    assert result.max_abs_diff == float(np.abs(a - b).max())
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert result.min_cosine == pytest.approx(float(cosines.min()), rel=1e-12)


def test_diff_errors_exit_2(runner, tmp_path, models):
    garbage = tmp_path / "garbage.keras"
    garbage.write_text("not a model")
    for args in (
        [models["clean"], str(tmp_path / "missing.keras")],
        [models["clean"], str(garbage)],
        [models["clean"], models["moved"], "-l", "nope"],
    ):
        result = runner.invoke(cli, ["diff", *args])
        assert result.exit_code == 2, args
        assert result.stdout == ""
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert runner.invoke(cli, ["diff", models["clean"]]).exit_code == 2
    assert (
        runner.invoke(cli, ["diff", models["clean"], models["clean"], "--atol", "-1"]).exit_code
        == 2
    )


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 25),
    st.integers(1, 5),
    st.integers(0, 2**32 - 1),
    st.integers(1, 100),
    st.sampled_from([0.0, 0.1, 1.0]),
)
def test_diff_property(rows, dim, seed, block_bytes, atol):
    rng = np.random.default_rng(seed)
    a = rng.choice([0.0, -0.0, 1.0, 2.0, np.nan, np.inf], size=(rows, dim)).astype(np.float32)
    b = a.copy()
    picks = rng.random((rows, dim)) < 0.2
    b[picks] = rng.choice([0.0, -0.0, 1.05, 3.0, np.nan, -np.inf], size=int(picks.sum()))
    result = audit.diff_tables(
        ArrayModel(a),
        ArrayModel(a).table,
        ArrayModel(b),
        ArrayModel(b).table,
        atol=atol,
        block_bytes=block_bytes,
    )
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    nan_differs = np.isnan(a64) ^ np.isnan(b64)
    with np.errstate(invalid="ignore"):
        moved = np.where((a64 == b64) | np.isnan(a64) | np.isnan(b64), 0.0, np.abs(a64 - b64))
    if atol == 0:
        changed = (a.view(np.uint32) != b.view(np.uint32)).any(axis=1)
    else:
        changed = (nan_differs | (moved > atol)).any(axis=1)
    assert result.changed_rows == np.flatnonzero(changed).tolist()
    assert result.max_abs_diff == float(moved.max())
    assert result.status == ("changed" if changed.any() else "same")


# ---------------------------------------------------------------------------- neighbors


def test_neighbors_ties_go_to_lower_rows(runner, models):
    result = runner.invoke(cli, ["neighbors", models["clean"], "-l", "words", "0", "-k", "3"])
    assert (result.exit_code, result.stdout, result.stderr) == (
        0,
        "row  cosine\n  1     1.0\n  2     1.0\n  3     1.0\n",
        "",
    )
    last = runner.invoke(cli, ["neighbors", models["clean"], "-l", "words", "-1", "-k", "2"])
    assert last.stdout == "row  cosine\n  0     1.0\n  1     1.0\n"


def test_neighbors_metrics(runner, models):
    dot = runner.invoke(
        cli, ["neighbors", models["clean"], "-l", "words", "0", "-k", "3", "--metric", "dot"]
    )
    assert dot.stdout == "row   dot\n 49  50.0\n 48  49.0\n 47  48.0\n"
    l2 = runner.invoke(
        cli, ["neighbors", models["clean"], "-l", "words", "10", "-k", "4", "--metric", "l2"]
    )
    assert l2.stdout == "row   l2\n  9  1.0\n 11  1.0\n  8  2.0\n 12  2.0\n"


def test_neighbors_json(runner, models):
    result = runner.invoke(
        cli, ["neighbors", models["clean"], "-l", "positions", "7", "-k", "29", "--json"]
    )
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert list(data) == ["layer", "query", "metric", "neighbors"]
    assert (data["layer"], data["query"], data["metric"]) == ("positions", 7, "cosine")
    assert all(set(n) == {"index", "score"} for n in data["neighbors"])
    want = brute_neighbors(POSITIONS, 7, "cosine")
    assert [n["index"] for n in data["neighbors"]] == [i for i, _ in want]
    assert [n["score"] for n in data["neighbors"]] == pytest.approx([s for _, s in want], rel=1e-12)


def test_neighbors_skip_nonfinite_rows(runner, models):
    result = runner.invoke(
        cli,
        ["neighbors", models["dirty"], "-l", "words", "0", "-k", "6", "--metric", "l2", "--json"],
    )
    found = [n["index"] for n in json.loads(result.stdout)["neighbors"]]
    assert found == [1, 10, 20, 30, 31, 40]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("3", "Error: row 3 of words holds NaN or Inf\n"),
        (
            "10",
            "Error: row 10 of words is all zeros; its cosine similarity is undefined "
            "(try --metric l2)\n",
        ),
        ("50", "Error: row 50 is out of range for a table of 50 rows\n"),
    ],
)
def test_neighbors_unusable_query(runner, models, row, message):
    result = runner.invoke(cli, ["neighbors", models["dirty"], "-l", "words", row])
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", message)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["1", "--token", "cat"],
        ["1:3"],
        ["1,2"],
        ["--bogus"],
        ["1", "-k", "0"],
        ["1", "--metric", "manhattan"],
        ["1", "2"],
        ["1", "--vocab-column", "word"],
    ],
)
def test_neighbors_usage_errors(runner, models, args):
    result = runner.invoke(cli, ["neighbors", models["clean"], "-l", "words", *args])
    assert result.exit_code == 2, result.output


def test_neighbors_by_token(runner):
    vocab = str(FIXTURES / "k3_vocab.keras")
    result = runner.invoke(
        cli, ["neighbors", vocab, "-l", "tok_emb", "--token", "cat", "-k", "3", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["query"], data["token"]) == (3, "cat")
    values = expected_tables("k3_vocab.keras")["tok_emb"]
    tokens = ["", "[UNK]", "the", "cat", "café", "日本", "naïve", "über", "straße", "東京"]
    want = brute_neighbors(values, 3, "cosine")[:3]
    assert [(n["index"], n["token"]) for n in data["neighbors"]] == [
        (i, tokens[i]) for i, _ in want
    ]
    by_row = runner.invoke(cli, ["neighbors", vocab, "-l", "tok_emb", "3", "-k", "3"])
    assert by_row.stdout.splitlines()[0].split() == ["row", "token", "cosine"]
    assert [line.split()[1] for line in by_row.stdout.splitlines()[1:]] == [
        tokens[i] for i, _ in want
    ]


def test_neighbors_token_errors(runner, tmp_path):
    unknown = runner.invoke(
        cli, ["neighbors", str(FIXTURES / "k3_vocab.keras"), "-l", "tok_emb", "--token", "dog"]
    )
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith("Error: 'dog' is not in the vocabulary")
    none = runner.invoke(cli, ["neighbors", str(FUNCTIONAL), "-l", "words", "--token", "cat"])
    assert (none.exit_code, none.stderr) == (
        1,
        "Error: no vocabulary is known for words; give one with --vocab FILE\n",
    )
    words = tmp_path / "words.txt"
    words.write_text("\n".join(f"w{i}" for i in range(50)))
    given_file = runner.invoke(
        cli,
        [
            "neighbors",
            str(FUNCTIONAL),
            "-l",
            "words",
            "--token",
            "w7",
            "--vocab",
            str(words),
            "-k",
            "2",
            "--json",
        ],
    )
    data = json.loads(given_file.stdout)
    assert (data["query"], data["token"]) == (7, "w7")
    assert [n["token"] for n in data["neighbors"]] == [f"w{n['index']}" for n in data["neighbors"]]


@pytest.mark.parametrize(
    "fixture",
    [
        "k3_functional.keras",
        "k3.weights.h5",
        "k3_legacy.h5",
        "tfk_full.h5",
        "k3_dtypes.keras",
        "k3_int8.keras",
        "k3_nested.keras",
    ],
)
@pytest.mark.parametrize("metric", audit.METRICS)
def test_neighbors_match_brute_force_on_keras_values(fixture, metric):
    with open_model(FIXTURES / fixture) as model:
        for key, values in expected_tables(fixture).items():
            table = oracle_table(model, key)
            for row in (0, table.rows - 1):
                got = audit.neighbors(model, table, row, 5, metric, block_bytes=SMALL_BLOCKS)
                want = brute_neighbors(values, row, metric)
                assert [n.index for n in got] == [i for i, _ in want[:5]]
                assert_neighbors(got, want, 5)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(2, 60),
    st.integers(1, 9),
    st.integers(0, 2**32 - 1),
    st.integers(1, 12),
    st.sampled_from(audit.METRICS),
    st.sampled_from(["normal", "grid", "scaled"]),
)
def test_screened_neighbors_equal_float64_scoring(rows, dim, seed, k, metric, kind):
    rng = np.random.default_rng(seed)
    if kind == "grid":
        values = rng.integers(-2, 3, size=(rows, dim)).astype(np.float32)
    else:
        values = rng.standard_normal((rows, dim)).astype(np.float32)
    if kind == "scaled":
        values *= rng.choice([1e-20, 1e-3, 1.0, 1e15], size=(rows, 1)).astype(np.float32)
    values[rng.random(rows) < 0.1, 0] = np.nan
    row = int(rng.integers(rows))
    values[row] = np.where(np.isnan(values[row]), 1.0, values[row])
    query = values[row].astype(np.float64)
    if metric == "cosine" and not query.any():
        query[0] = values[row, 0] = 1.0
    step = int(rng.integers(1, 8))
    blocks = [(s, values[s : s + step]) for s in range(0, rows, step)]
    wide = [(s, b.astype(np.float64)) for s, b in blocks]
    got = audit.nearest(blocks, query, k, metric, exclude=row)
    assert got == audit.nearest(wide, query, k, metric, exclude=row)
    assert_neighbors(got, brute_neighbors(values, row, metric), k)


# ---------------------------------------------------------------------------- docs


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_help_has_an_example(runner, command):
    assert "\b\n    Example:\n" in command.callback.__doc__
    result = runner.invoke(cli, [command.name, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and f"embcli {command.name} " in result.output


def test_command_metrics_are_the_library_metrics():
    from embcli.commands.audit import METRIC_NAMES

    assert METRIC_NAMES == audit.METRICS
