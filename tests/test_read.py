"""The read side against the oracle: what Keras itself reported for each fixture."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import FIXTURES, MANIFEST, fixture_names

from embcli.cli import cli
from embcli.model import find_table, iter_blocks, list_tables, open_model, read_rows

READABLE = fixture_names()


def expected_values(name: str) -> dict:
    return dict(np.load(FIXTURES / MANIFEST[name]["expected"]))


def match(tables, wanted: dict):
    """The embcli table for a Keras-reported table: by name, or by qualified path."""
    qualified = "/".join(wanted["path"])
    by_path = [t for t in tables if qualified in (t.qualified, t.name)]
    by_name = [t for t in tables if t.name == wanted["name"]]
    return (by_path or by_name or [None])[0]


def has_names(name: str) -> bool:
    """Whether the file records layer names at all (old weights-only files do not)."""
    return not (MANIFEST[name]["kind"] == "weights_h5" and "3.0" in MANIFEST[name]["writer"])


@pytest.mark.parametrize("name", READABLE)
def test_tables_match_keras(name):
    wanted = MANIFEST[name]["tables"]
    with open_model(FIXTURES / name) as model:
        tables = list_tables(model)
        assert len(tables) == len(wanted)
        if not has_names(name):
            assert sorted(t.shape for t in tables) == sorted(tuple(w["shape"]) for w in wanted)
            return
        for entry in wanted:
            table = match(tables, entry)
            assert table is not None, f"{entry['name']} not found in {[t.name for t in tables]}"
            assert table.qualified == "/".join(entry["path"])
            assert table.shape == tuple(entry["shape"])
            assert table.dtype == entry["dtype"]
            assert table.quantized == entry["quantized"]
            assert table.class_name in (entry["class"], None)


@pytest.mark.parametrize(
    "name",
    [n for n in READABLE if n.endswith((".keras", "legacy.h5", "full.h5")) and "custom" not in n],
)
def test_classes_come_from_the_config(name):
    with open_model(FIXTURES / name) as model:
        tables = list_tables(model)
        for entry in MANIFEST[name]["tables"]:
            assert match(tables, entry).class_name == entry["class"]


@pytest.mark.parametrize("name", READABLE)
def test_values_match_keras(name):
    expected = expected_values(name)
    with open_model(FIXTURES / name) as model:
        tables = list_tables(model)
        for entry in MANIFEST[name]["tables"]:
            want = expected["/".join(entry["path"])]
            if has_names(name):
                table = match(tables, entry)
            else:
                table = next(
                    t
                    for t in tables
                    if t.shape == want.shape
                    and np.array_equal(read_rows(model, t, np.arange(t.rows)), want)
                )
            got = read_rows(model, table, np.arange(table.rows))
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
            streamed = np.concatenate([b for _, b in iter_blocks(model, table, block_bytes=64)])
            np.testing.assert_array_equal(streamed, want)


def test_int8_raw_and_scale_match_keras():
    expected = expected_values("k3_int8.keras")
    with open_model(FIXTURES / "k3_int8.keras") as model:
        table = find_table(model, "words")
        rows = np.arange(table.rows)
        np.testing.assert_array_equal(
            read_rows(model, table, rows, raw=True), expected["words:raw"]
        )
        np.testing.assert_array_equal(model.read(table.scale, rows), expected["words:scale"])


def test_rows_in_any_order_with_repeats():
    want = expected_values("k3_functional.keras")["words"]
    with open_model(FIXTURES / "k3_functional.keras") as model:
        table = find_table(model, "words")
        picks = np.array([7, 0, 7, 49, 3])
        np.testing.assert_array_equal(read_rows(model, table, picks), want[picks])


def test_names_without_name_attributes_follow_the_config():
    """Keras 3.0 wrote no layer names into the weights; the config walk must recover
    them, duplicate class suffixes and nesting included."""
    with open_model(FIXTURES / "k30_sequential.keras") as model:
        assert [(t.name, t.weight) for t in list_tables(model)] == [
            ("embedding_1", "layers/embedding/vars/0"),
            ("embedding_2", "layers/embedding_1/vars/0"),
        ]


def test_weight_path_and_group_path_are_accepted():
    with open_model(FIXTURES / "k3_nested.keras") as model:
        by_path = find_table(model, "layers/sequential/layers/embedding/vars/0")
        assert by_path.name == "tower/emb"
        assert find_table(model, "/layers/sequential/layers/embedding").name == "tower/emb"
        assert find_table(model, "tower/emb") == by_path
        assert find_table(model, "inner_table").qualified == "subnet/inner_table"


def test_compressed_archive_still_reads(tmp_path):
    rezipped = tmp_path / "deflated.keras"
    with (
        zipfile.ZipFile(FIXTURES / "k3_functional.keras") as source,
        zipfile.ZipFile(rezipped, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
    want = expected_values("k3_functional.keras")["words"]
    with open_model(rezipped) as model:
        table = find_table(model, "words")
        np.testing.assert_array_equal(read_rows(model, table, np.arange(table.rows)), want)


def test_all_lists_other_matrices():
    with open_model(FIXTURES / "k3_hub.keras") as model:
        names = {t.name: t for t in list_tables(model, all_weights=True)}
    assert names["rev:1"].shape == (4, 30)
    assert not names["rev:1"].is_embedding
    with open_model(FIXTURES / "k3_functional.keras") as model:
        head = find_table(model, "head")
    assert (head.class_name, head.shape, head.is_embedding) == ("Dense", (12, 3), False)


def test_reading_a_keras_file_imports_no_tensorflow():
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from embcli.cli import cli\n"
        f"for args in (['layers', {str(FIXTURES / 'k3_functional.keras')!r}],"
        f" ['rows', {str(FIXTURES / 'tfk_full.h5')!r}, '-l', 'word_emb', '0'],"
        f" ['layers', {str(FIXTURES / 'k3_sharded.weights.json')!r}]):\n"
        "    result = CliRunner().invoke(cli, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'jax', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_json_matches_the_manifest(runner):
    result = runner.invoke(cli, ["layers", str(FIXTURES / "k3_dtypes.keras"), "--json"])
    assert result.exit_code == 0
    listed = json.loads(result.output)
    assert [(t["name"], t["class"], t["shape"], t["dtype"]) for t in listed] == [
        (t["name"], t["class"], t["shape"], t["dtype"])
        for t in MANIFEST["k3_dtypes.keras"]["tables"]
    ]
