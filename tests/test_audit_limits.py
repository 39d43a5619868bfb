"""The numbers the audits take are checked in both layers: NaN (and, for a tolerance, Inf)
or a negative limit is a usage error on the command line and `BadArgument` in the library;
and the commands reach the library through one function each (`diff_pairs`, `query_row`)."""

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES
from hypothesis import given
from hypothesis import strategies as st

from embcli import audit
from embcli.cli import cli
from embcli.edit import assign
from embcli.errors import BadArgument, BadRowSpec, NoSuchTable, NoVocabulary, UnknownToken
from embcli.formats.base import Table
from embcli.model import find_table, open_model

FUNCTIONAL = FIXTURES / "k3_functional.keras"
VOCAB = FIXTURES / "k3_vocab.keras"
BAD_NUMBERS = ["nan", "NaN", "-nan", "+nan"]


@pytest.fixture(scope="module")
def long_row(tmp_path_factory) -> str:
    """k3_functional.keras with row 7 of `words` set to 400 in every value (norm 400 * sqrt 8)."""
    target = tmp_path_factory.mktemp("limits") / "long.keras"
    with open_model(FUNCTIONAL) as model:
        assign(model, find_table(model, "words"), np.array([7]), np.full((1, 8), 400.0), target)
    return str(target)


def usage_error(option: str, value: str, reason: str) -> str:
    return f"Error: Invalid value for '{option}': {value!r} {reason}\n"


# ---------------------------------------------------------------------------- command line


@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_check_max_norm_nan_is_a_usage_error(runner, long_row, value):
    result = runner.invoke(cli, ["check", long_row, "--max-norm", value])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr.endswith(usage_error("--max-norm", value, "is not a number."))


def test_check_max_norm_still_finds_the_long_row(runner, long_row):
    result = runner.invoke(cli, ["check", long_row, "--max-norm", "400"])
    assert (result.exit_code, result.stdout) == (
        1,
        "words: 1 row has an L2 norm above 400 (largest 1131.37)\n",
    )
    unlimited = runner.invoke(cli, ["check", long_row, "--max-norm", "inf"])
    assert (unlimited.exit_code, unlimited.stdout) == (0, "ok: 2 tables, 80 rows checked\n")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        *((v, "is not a number.") for v in BAD_NUMBERS),
        ("inf", "is not a finite number."),
        ("Infinity", "is not a finite number."),
    ],
)
def test_diff_atol_must_be_a_finite_number(runner, value, reason):
    result = runner.invoke(
        cli, ["diff", str(FUNCTIONAL), str(FIXTURES / "k3_int8.keras"), "--atol", value]
    )
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr.endswith(usage_error("--atol", value, reason))


@pytest.mark.parametrize(("command", "option"), [("check", "--max-norm"), ("diff", "--atol")])
@pytest.mark.parametrize("value", ["-1", "-inf", "-0.001", "x"])
def test_negative_or_unparsable_limits_are_usage_errors(runner, command, option, value):
    models = [str(FUNCTIONAL)] * (2 if command == "diff" else 1)
    result = runner.invoke(cli, [command, *models, option, value])
    assert (result.exit_code, result.stdout) == (2, "")
    assert f"Invalid value for '{option}'" in result.stderr


def test_diff_atol_zero_and_large_still_work(runner, long_row):
    exact = runner.invoke(cli, ["diff", str(FUNCTIONAL), long_row, "--atol", "0"])
    assert exact.exit_code == 1
    assert exact.stdout.startswith("words: 1 of 50 rows changed: 7; max abs diff ")
    loose = runner.invoke(cli, ["diff", str(FUNCTIONAL), long_row, "--atol", "1e6"])
    assert (loose.exit_code, loose.stdout) == (0, "same: 2 tables, 80 rows compared\n")


def test_diff_errors_word_the_remedy_for_the_command_line(runner, monkeypatch):
    def no_tables(model, all_weights=False):
        raise NoSuchTable("the model holds no embedding table", remedy="any_weight")

    monkeypatch.setattr(audit.comparison, "list_tables", no_tables)
    result = runner.invoke(cli, ["diff", str(FUNCTIONAL), str(FUNCTIONAL)])
    assert (result.exit_code, result.stdout, result.stderr) == (
        2,
        "",
        "Error: the model holds no embedding table; use --all with `layers` to see its "
        "2-D weights and pick one with --layer\n",
    )


def test_diff_command_output_is_the_library_result(runner, long_row):
    import json

    result = runner.invoke(cli, ["diff", str(FUNCTIONAL), long_row, "--json"])
    with open_model(FUNCTIONAL) as a, open_model(long_row) as b:
        library = [r.record() for r in audit.diff(a, b)]
    assert json.loads(result.stdout) == json.loads(json.dumps(library))


# ---------------------------------------------------------------------------- library


@pytest.mark.parametrize("bad", [math.nan, -math.nan, np.float32("nan"), -1.0, -math.inf])
def test_library_limits_refuse_nan_and_negatives(bad):
    with open_model(FUNCTIONAL) as model:
        tables = audit.audited_tables(model, None)
        with pytest.raises(BadArgument, match="max_norm must be a number at least 0"):
            audit.check(model, tables, max_norm=bad)
        with pytest.raises(BadArgument, match="max_norm"):
            audit.table_stats(model, tables[0], max_norm=bad)
        found = audit.table_stats(model, tables[0])
        with pytest.raises(BadArgument, match="max_norm"):
            audit.table_problems(found, max_norm=bad)
        for call in (
            lambda: audit.diff(model, model, atol=bad),
            lambda: audit.diff_tables(model, tables[0], model, tables[0], atol=bad),
            lambda: audit.compare_blocks(np.zeros((2, 2)), np.zeros((2, 2)), atol=bad),
        ):
            with pytest.raises(BadArgument, match="atol must be a finite number at least 0"):
                call()


def test_library_limits_messages_name_no_flag():
    with pytest.raises(BadArgument) as caught:
        audit.compare_blocks(np.zeros((1, 1)), np.zeros((1, 1)), atol=math.inf)
    assert str(caught.value) == "atol must be a finite number at least 0, not inf"
    assert "--" not in str(caught.value)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_library_max_zero_rows_must_be_a_count(bad):
    with open_model(FUNCTIONAL) as model:
        with pytest.raises(BadArgument, match="max_zero_rows must be a whole number"):
            audit.check(model, audit.audited_tables(model, None), max_zero_rows=bad)


def test_library_max_norm_inf_means_no_limit(long_row):
    with open_model(long_row) as model:
        report = audit.check(model, audit.audited_tables(model, None), max_norm=math.inf)
    assert report.ok


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_compare_blocks_accepts_exactly_the_finite_tolerances(atol):
    block = np.array([[0.0, 1.0], [2.0, 3.0]])
    if math.isfinite(atol) and atol >= 0:
        rows, _, _ = audit.compare_blocks(block, block + 1.0, atol)
        assert rows.tolist() == ([0, 1] if atol < 1.0 else [])
    else:
        with pytest.raises(BadArgument):
            audit.compare_blocks(block, block, atol)


def test_diff_tables_needs_a_table():
    with pytest.raises(BadArgument):
        audit.diff_tables(None, None, None, None)


@pytest.mark.parametrize(("k", "metric"), [(0, "cosine"), (-3, "l2"), (2.5, "dot"), (3, "l1")])
def test_nearest_refuses_bad_k_and_metric(k, metric):
    with pytest.raises(BadArgument):
        audit.nearest([(0, np.eye(3))], np.ones(3), k, metric)


# ---------------------------------------------------------------------------- neighbors query


def test_query_row_by_index():
    table = Table("t", "t", "Embedding", (50, 8), "float32", "t")
    assert [audit.query_row(table, row) for row in (0, 7, -1, -50)] == [0, 7, 49, 0]
    for row in (50, -51):
        with pytest.raises(BadRowSpec, match=f"row {row} is out of range for a table of 50 rows"):
            audit.query_row(table, row)
    for row, token in ((None, None), (1, "cat")):
        with pytest.raises(BadArgument):
            audit.query_row(table, row, token)


def test_query_by_token_uses_the_models_vocabulary():
    with open_model(VOCAB) as model:
        table = find_table(model, "tok_emb")
        vocabulary = audit.query_vocabulary(model, table, "cat")
        assert audit.query_row(table, token="cat", vocabulary=vocabulary) == 3
        with pytest.raises(UnknownToken):
            audit.query_row(table, token="dog", vocabulary=vocabulary)
    with open_model(FUNCTIONAL) as model:
        words = find_table(model, "words")
        assert audit.query_vocabulary(model, words) is None
        with pytest.raises(NoVocabulary, match="no vocabulary is known for words"):
            audit.query_vocabulary(model, words, "cat")
        with pytest.raises(NoVocabulary):
            audit.query_row(words, token="cat")


def test_query_vocabulary_from_a_file(tmp_path: Path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(f"w{i}" for i in range(50)))
    with open_model(FUNCTIONAL) as model:
        words = find_table(model, "words")
        vocabulary = audit.query_vocabulary(model, words, "w9", str(tokens))
        assert audit.query_row(words, token="w9", vocabulary=vocabulary) == 9


def test_library_neighbors_take_negative_rows():
    with open_model(FUNCTIONAL) as model:
        words = find_table(model, "words")
        assert audit.neighbors(model, words, -1, 3) == audit.neighbors(model, words, 49, 3)
        with pytest.raises(BadRowSpec):
            audit.neighbors(model, words, 50, 3)


def test_neighbors_warns_before_failing_on_a_short_vocabulary(runner, tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(f"w{i}" for i in range(60)))
    result = runner.invoke(
        cli, ["neighbors", str(FUNCTIONAL), "-l", "words", "--token", "w55", "--vocab", str(tokens)]
    )
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        f"warning: words: the vocabulary (file:{tokens}) has 60 tokens but the table has 50 rows\n"
        "Error: 'w55' is row 55 of the vocabulary, beyond the 50 rows of words\n"
    )
