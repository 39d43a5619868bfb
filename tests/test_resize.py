"""resize: the table gets its new row count, old rows stay bit for bit, new rows follow
--init, and everything else in the file is unchanged except what must follow the table
(config sizes, the untied output table, optimizer slots, the vocabulary). Keras reloads
every resized model, reports the new size, keeps its predictions on old ids, and trains.
"""

import json
import zipfile

import numpy as np
import pytest
from conftest import FIXTURES
from digest import artifact_digest, changed_keys
from keras_check import keras_check
from oracle import keras_tables, old_keras_available

import embcli
from embcli import errors
from embcli.cli import cli
from embcli.edit import quantize_rows
from embcli.model import find_table, open_model, read_rows

ADD = 7


def ids(shape, high=3, seed=0):
    return np.random.default_rng(seed).integers(0, high, size=shape).astype(np.int32)


FUNCTIONAL_INPUTS = {"word_ids": ids((4, 5)), "pos_ids": ids((4, 5), seed=1)}
NESTED_INPUTS = {"a": ids((4, 4)), "b": ids((4, 3), seed=1), "d": ids((4, 4), seed=2)}

# fixture, --layer, Keras's layer name, flavour, inputs (None: no prediction), fit one step
CASES = [
    ("k3_functional.keras", "words", "words", "keras", FUNCTIONAL_INPUTS, True),
    ("k3_functional.keras", "positions", "positions", "keras", FUNCTIONAL_INPUTS, True),
    ("k3_folder", "words", "words", "keras", FUNCTIONAL_INPUTS, True),
    ("k30_functional.keras", "words", "words", "keras", FUNCTIONAL_INPUTS, False),
    ("k3_nested.keras", "inner_table", "inner_table", "keras", NESTED_INPUTS, False),
    ("k3_legacy.h5", "leaf_emb", "leaf_emb", "keras", NESTED_INPUTS, False),
    ("k3_dtypes.keras", "emb_bf16", "emb_bf16", "keras", {"ids": ids((4, 5))}, False),
    ("k3_dtypes.keras", "emb_f16", "emb_f16", "keras", {"ids": ids((4, 5))}, False),
    ("k3_int8.keras", "words", "words", "keras", {"ids": ids((4, 5))}, False),
    ("k3_hub.keras", "rev", "rev", "keras", {"ids": ids((4, 6))}, False),
    ("k3_hub.keras", "token_embedding", "token_embedding", "keras", {"ids": ids((4, 6))}, False),
    ("tfk_full.h5", "inner_emb", "inner_emb", "tf_keras", None, False),
    ("tfk.keras", "word_emb", "word_emb", "tf_keras", None, False),
]


def output_name(fixture: str) -> str:
    if (FIXTURES / fixture).is_dir():
        return "resized_folder"
    for suffix in (".weights.json", ".weights.h5", ".keras", ".h5"):
        if fixture.endswith(suffix):
            return "resized" + suffix
    raise AssertionError(fixture)


def stored_values(path, layer):
    with open_model(path) as model:
        table = find_table(model, layer)
        return table, model.read(table.weight, slice(None))


def computed(path, layer):
    with open_model(path) as model:
        table = find_table(model, layer)
        return read_rows(model, table, np.arange(table.rows))


def expected_mean_row(original: np.ndarray, table) -> np.ndarray:
    """The `mean` init as the model would store it: float64 mean, cast (or quantized)."""
    mean = original.astype(np.float64).mean(axis=0)[None, :]
    if table.quantized == "int8":
        quantized, scale = quantize_rows(mean)
        return (quantized.astype(np.float32) / scale[:, None])[0]
    if table.dtype == "bfloat16":
        import ml_dtypes

        return mean.astype(ml_dtypes.bfloat16).astype(np.float32)[0]
    return mean.astype(table.dtype)[0]


def allowed_changes(before_keys, result_record, fixture) -> set[str]:
    """Digest keys a resize may change: the resized weights, the config, vocab assets."""
    resized = set(result_record["resized"])
    keys = set()
    for key in before_keys:
        path = key.split(":", 1)[-1]
        if path in resized or path.split("@")[0] in resized:
            keys.add(key)
        if path.startswith("@model_config") or key.endswith("/@model_config"):
            keys.add(key)
        if key in ("zip:config.json", "config.json") or "vocabulary" in key:
            keys.add(key)
    return keys


@pytest.mark.keras
@pytest.mark.parametrize(("fixture", "layer", "name", "flavour", "inputs", "fit"), CASES)
def test_resize_grows_the_table_and_keras_agrees(
    tmp_path, runner, fixture, layer, name, flavour, inputs, fit
):
    source = FIXTURES / fixture
    output = tmp_path / output_name(fixture)
    table, stored_before = stored_values(source, layer)
    original = computed(source, layer)
    before = artifact_digest(source)

    result = runner.invoke(
        cli, ["resize", str(source), "-l", layer, "--add", str(ADD), "-o", str(output), "--json"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert (record["old_rows"], record["new_rows"]) == (table.rows, table.rows + ADD)
    assert record["config"], "a model with a config must have its size changed there"

    resized, stored_after = stored_values(output, layer)
    assert resized.shape == (table.rows + ADD, table.dim)
    assert stored_after[: table.rows].tobytes() == stored_before.tobytes()
    values = computed(output, layer)
    np.testing.assert_array_equal(values[: table.rows], original)
    want = expected_mean_row(original, table)
    for row in values[table.rows :]:
        np.testing.assert_array_equal(row, want)

    after = artifact_digest(output)
    assert changed_keys(before, after) <= allowed_changes(
        before.keys() | after.keys(), record, fixture
    )
    assert artifact_digest(source) == before

    report, arrays = keras_check(
        output, name, flavour=flavour, inputs=inputs, fit=fit, scratch=tmp_path
    )
    assert report["input_dim"] == table.rows + ADD
    np.testing.assert_array_equal(arrays["table"], values.astype(np.float32))
    if "reverse" in arrays:
        assert arrays["reverse"].shape == (table.dim, table.rows + ADD)
    if inputs is not None:
        _, old = keras_check(source, name, flavour=flavour, inputs=inputs, scratch=tmp_path)
        new, old = arrays["predictions"], old["predictions"]
        if new.shape != old.shape:  # logits over the vocabulary grow with it
            assert new.shape[:-1] == old.shape[:-1] and new.shape[-1] == old.shape[-1] + ADD
            new = new[..., : old.shape[-1]]
        np.testing.assert_array_equal(new, old)
    for index, (_, shape) in enumerate(report["slots"]):
        assert table.rows + ADD in shape
        slot = arrays[f"slot:{index}"]
        axis = shape.index(table.rows + ADD)
        assert not np.take(slot, range(table.rows, table.rows + ADD), axis=axis).any()
    if fit:
        assert report["slots"], "the optimizer's slots were restored"
        assert report["iterations_after_fit"] == report["iterations"] + 1


@pytest.mark.keras
def test_untied_output_table_grows_its_columns_with_the_same_init(tmp_path):
    output = tmp_path / "r.keras"
    embcli.resize(FIXTURES / "k3_hub.keras", "rev", add=3, output=output)
    with open_model(FIXTURES / "k3_hub.keras") as model:
        reverse = model.read("layers/reversible_embedding/vars/1", slice(None))
    with open_model(output) as model:
        grown = model.read("layers/reversible_embedding/vars/1", slice(None))
    assert grown.shape == (4, 33)
    assert grown[:, :30].tobytes() == reverse.tobytes()
    mean = reverse.astype(np.float64).mean(axis=1).astype(np.float32)
    for column in grown[:, 30:].T:
        np.testing.assert_array_equal(column, mean)
    _, arrays = keras_check(output, "rev", inputs={"ids": ids((4, 6))}, scratch=tmp_path)
    np.testing.assert_array_equal(arrays["reverse"], grown)


@pytest.mark.parametrize("fixture", ["k3.weights.h5", "k3_sharded.weights.json"])
def test_weights_only_files_are_resized_with_a_note(tmp_path, runner, fixture):
    output = tmp_path / ("w.weights.json" if fixture.endswith(".json") else "w.weights.h5")
    result = runner.invoke(
        cli, ["resize", str(FIXTURES / fixture), "-l", "words", "--add", "3", "-o", str(output)]
    )
    assert result.exit_code == 0, result.output
    assert "note: the file holds no config: build the model with 53 rows" in result.stderr
    with open_model(output) as model:
        table = find_table(model, "words")
        assert table.shape == (53, 8)
        slots = model.optimizer_slots(table)
        assert len(slots) == 2
        for slot in slots:
            assert not model.read(slot, slice(50, 53)).any()
    if fixture == "k3.weights.h5":
        architecture = tmp_path / "arch.keras"
        embcli.resize(
            FIXTURES / "k3_functional.keras", "words", add=3, init="zeros", output=architecture
        )
        reloaded = keras_tables(output, ["words"], architecture=architecture, scratch=tmp_path)
        np.testing.assert_array_equal(reloaded["words"], computed(output, "words"))


@pytest.mark.keras
def test_shrinking_drops_rows_from_the_end(tmp_path):
    output = tmp_path / "small.keras"
    result = embcli.resize(FIXTURES / "k3_functional.keras", "words", rows=20, output=output)
    assert (result.old_rows, result.new_rows) == (50, 20)
    original = computed(FIXTURES / "k3_functional.keras", "words")
    np.testing.assert_array_equal(computed(output, "words"), original[:20])
    report, arrays = keras_check(
        output, "words", inputs=FUNCTIONAL_INPUTS, fit=True, scratch=tmp_path
    )
    assert report["input_dim"] == 20
    assert [shape for _, shape in report["slots"]] == [[20, 8], [20, 8]]


@pytest.mark.keras
def test_added_tokens_map_to_new_rows_through_the_models_own_lookup(tmp_path):
    output = tmp_path / "v.keras"
    result = embcli.resize(
        FIXTURES / "k3_vocab.keras", "lookup_emb", add_tokens=["violet", "red", "violet", "indigo"],
        init="zeros", output=output,
    )  # fmt: skip
    assert result.added_tokens == ["violet", "indigo"]
    assert result.skipped_tokens == ["red", "violet"]
    with embcli.open(output) as model:
        assert model.vocabulary("lookup_emb")[-2:] == ["violet", "indigo"]
        assert model.tables["lookup_emb"].rows == 8
    with zipfile.ZipFile(output) as archive:
        asset = archive.read("assets/layers/string_lookup/vocabulary.txt").decode()
    assert asset.split("\n")[-2:] == ["violet", "indigo"]
    script = (
        "import sys, numpy as np, keras\n"
        "m = keras.models.load_model(sys.argv[1])\n"
        "lookup = m.get_layer('lookup')\n"
        "print(lookup(np.array(['violet', 'indigo', 'red', 'nope'])).numpy().tolist())\n"
    )
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", script, str(output)], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[6, 7, 1, 0]"


@pytest.mark.keras
def test_added_tokens_in_an_inline_text_vectorization_vocabulary(tmp_path):
    output = tmp_path / "t.keras"
    embcli.resize(FIXTURES / "k3_vocab.keras", "tok_emb", add_tokens=["zebra"], output=output)
    script = (
        "import sys, numpy as np, keras\n"
        "m = keras.models.load_model(sys.argv[1])\n"
        "tv = m.get_layer('tv')\n"
        "print(tv(np.array(['zebra the cat'])).numpy().tolist()[0][:3])\n"
        "print(m.get_layer('tok_emb').input_dim)\n"
    )
    import subprocess
    import sys

    out = (
        subprocess.run(
            [sys.executable, "-c", script, str(output)], capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()
    )
    assert out[-2:] == ["[10, 2, 3]", "11"]


@pytest.mark.parametrize(
    "init, check",
    [
        ("zeros", lambda rows: not rows.any()),
        ("normal:0.5", lambda rows: 0.3 < rows.std() < 0.7),
    ],
)
def test_init_methods(tmp_path, init, check):
    output = tmp_path / "i.keras"
    embcli.resize(
        FIXTURES / "k3_functional.keras", "words", add=400, init=init, seed=1, output=output
    )
    assert check(computed(output, "words")[50:])


def test_mean_cov_is_seeded_and_close_to_the_mean(tmp_path):
    outputs = []
    for attempt in range(2):
        output = tmp_path / f"m{attempt}.keras"
        embcli.resize(
            FIXTURES / "k3_functional.keras", "words", add=3, init="mean-cov", seed=7, output=output
        )
        outputs.append(computed(output, "words")[50:])
    assert outputs[0].tobytes() == outputs[1].tobytes()
    mean = computed(FIXTURES / "k3_functional.keras", "words").astype(np.float64).mean(axis=0)
    assert np.abs(outputs[0] - mean).max() < 1e-3
    assert not np.array_equal(outputs[0][0], outputs[0][1])


def test_explicit_vectors_for_new_rows(tmp_path):
    vectors = np.arange(16, dtype=np.float32).reshape(2, 8)
    np.save(tmp_path / "v.npy", vectors)
    output = tmp_path / "e.keras"
    embcli.resize(
        FIXTURES / "k3_functional.keras", "words", add=2, values=tmp_path / "v.npy", output=output
    )
    np.testing.assert_array_equal(computed(output, "words")[50:], vectors)


def test_pad_to_multiple(tmp_path):
    output = tmp_path / "p.keras"
    result = embcli.resize(
        FIXTURES / "k3_functional.keras", "words", add=1, pad_to_multiple=8, output=output
    )
    assert result.new_rows == 56


def test_in_place_replaces_the_model(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes((FIXTURES / "k3_functional.keras").read_bytes())
    embcli.resize(model, "words", add=2, in_place=True)
    assert find_table(open_model(model), "words").rows == 52
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def refusal_cases(tmp_path):
    source = FIXTURES / "k3_functional.keras"
    taken = tmp_path / "taken.keras"
    taken.write_bytes(b"x")
    np.save(tmp_path / "three.npy", np.zeros((3, 8), dtype=np.float32))
    yield errors.OutputExists, dict(path=source, name="words", add=1, output=taken)
    yield errors.BadArgument, dict(path=source, name="words", rows=0, output=tmp_path / "a.keras")
    yield errors.BadArgument, dict(path=source, name="words", add=-2, output=tmp_path / "a.keras")
    yield (
        errors.BadVectors,
        dict(
            path=source,
            name="words",
            add=2,
            values=tmp_path / "three.npy",
            output=tmp_path / "a.keras",
        ),
    )
    yield (
        errors.NoVocabulary,
        dict(path=source, name="words", add_tokens=["x"], output=tmp_path / "a.keras"),
    )
    yield (
        errors.BadArgument,
        dict(path=source, name="words", add=1, init="uniform", output=tmp_path / "a.keras"),
    )


def test_refusals_change_nothing_and_leave_no_output(tmp_path):
    before = artifact_digest(FIXTURES / "k3_functional.keras")
    for error, arguments in refusal_cases(tmp_path):
        with pytest.raises(error) as caught:
            embcli.resize(**arguments)
        assert "--" not in str(caught.value)
    assert artifact_digest(FIXTURES / "k3_functional.keras") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.keras", "three.npy"]
    assert (tmp_path / "taken.keras").read_bytes() == b"x"


@pytest.mark.tensorflow
def test_saved_model_is_refused(tmp_path, runner):
    result = runner.invoke(
        cli,
        [
            "resize",
            str(FIXTURES / "tfk_savedmodel"),
            "-l",
            "word_emb",
            "--add",
            "1",
            "-o",
            str(tmp_path / "x"),
        ],
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "SavedModel" in result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--add", "0"], "0 is not in the range x>=1"),
        (["--add", "1", "--rows", "3"], "give exactly one of --rows, --add and --add-token"),
        ([], "give exactly one of --rows, --add and --add-token"),
        (
            ["--add", "1", "--in-place", "-o", "x.keras"],
            "give exactly one of -o OUTPUT and --in-place",
        ),
    ],
)
def test_usage_errors_exit_2(runner, arguments, message):
    result = runner.invoke(
        cli, ["resize", str(FIXTURES / "k3_functional.keras"), "-l", "words", *arguments]
    )
    assert result.exit_code == 2
    assert message in result.output


def test_text_summary(runner, tmp_path):
    output = tmp_path / "s.keras"
    result = runner.invoke(
        cli,
        [
            "resize",
            str(FIXTURES / "k3_functional.keras"),
            "-l",
            "words",
            "--add",
            "2",
            "-o",
            str(output),
        ],
    )
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"resized words from 50 to 52 rows (init mean); wrote {output}",
        "config /config/layers/2/config/input_dim: 50 -> 52",
    ]


@pytest.mark.keras
@pytest.mark.skipif(not old_keras_available(), reason="no Keras 3.0 interpreter on this machine")
def test_keras_30_reloads_its_resized_file(tmp_path):
    output = tmp_path / "old.keras"
    embcli.resize(FIXTURES / "k30_functional.keras", "words", add=ADD, output=output)
    reloaded = keras_tables(output, ["words", "positions"], "old", scratch=tmp_path)
    np.testing.assert_array_equal(reloaded["words"], computed(output, "words"))
    assert reloaded["words"].shape == (50 + ADD, 8)
    np.testing.assert_array_equal(
        reloaded["positions"], computed(FIXTURES / "k30_functional.keras", "positions")
    )


@pytest.mark.tensorflow
def test_checkpoint_table_and_slots_are_resized(tmp_path):
    import tensorflow as tf

    output = tmp_path / "ckpt"
    result = embcli.resize(FIXTURES / "tfk_ckpt" / "ckpt", "word_emb", add=3, output=output)
    assert result.notes and result.new_rows == result.old_rows + 3
    reader = tf.train.load_checkpoint(str(output))
    before = tf.train.load_checkpoint(str(FIXTURES / "tfk_ckpt" / "ckpt"))
    grown = [k for k in result.resized]
    assert len(grown) == 3  # the table and Adam's two slots
    for key in grown:
        old, new = before.get_tensor(key), reader.get_tensor(key)
        assert new.shape == (old.shape[0] + 3, old.shape[1])
        assert new[: old.shape[0]].tobytes() == old.tobytes()
    for key in before.get_variable_to_shape_map():
        if key not in grown:
            old, new = before.get_tensor(key), reader.get_tensor(key)
            assert np.asarray(old).tobytes() == np.asarray(new).tobytes(), key


@pytest.mark.keras
def test_keras3_legacy_writer_names_weights_under_the_model(tmp_path):
    """Keras 3's legacy `.h5` writer files `words` as `model_weights/words/<model>/words/...`."""
    script = (
        "import sys, keras\n"
        "m = keras.Sequential([keras.Input((3,), dtype='int32'), keras.layers.Embedding(20, 4, name='words')], name='bench')\n"
        "m.save(sys.argv[1])\n"
    )
    import subprocess
    import sys

    source = tmp_path / "bench.h5"
    subprocess.run([sys.executable, "-c", script, str(source)], check=True, capture_output=True)
    with embcli.open(source) as model:
        assert model.tables["words"].qualified == "words"
    output = tmp_path / "r.h5"
    embcli.resize(source, "words", add=5, output=output)
    report, arrays = keras_check(output, "words", scratch=tmp_path)
    assert report["input_dim"] == 25 and arrays["table"].shape == (25, 4)
