"""`embcli resize` of keras-hub presets and task archives, checked by keras-hub itself.

Each fixture is resized twice through the CLI, once by `--add 5` and once by `--add-token`
given twice, and each result reloaded with keras-hub in a subprocess (`Backbone.from_preset`,
`Task.from_preset`, `keras.models.load_model` for archives): the backbone's
`vocabulary_size`, old rows bit for bit, new rows the old rows' mean, a `MaskedLMHead`'s
output bias grown with its mean, the same logits over the old ids for the same input, and
the new preset's tokenizer giving each added token its new row, whole.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import embcli
from embcli.cli import cli
from embcli.model import list_tables

HUB = Path(__file__).resolve().parent.parent / "fixtures" / "hub"
MANIFEST = json.loads((HUB / "manifest.json").read_text(encoding="utf-8"))
CASES = [
    "bert_masked_lm",
    "gpt2_causal_lm",
    "llama_backbone",
    "gemma_causal_lm",
    "llama3_sharded",
    "gpt2_causal_lm.keras",
]
TOKENS = ["zqxw", "<new_tok>"]
TABLE = "token_embedding"
WORD_BOUNDARY = "\u2581"

CHECK = r"""
import json, os, sys
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import keras
import keras_hub

old_path, new_path, tokens = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

def load(path):
    if path.endswith(".keras"):
        task = keras.models.load_model(path, compile=False)
        return task.backbone, task, task.preprocessor.tokenizer
    backbone = keras_hub.models.Backbone.from_preset(path)
    task = None
    task_file = os.path.join(path, "task.json")
    if os.path.exists(task_file):
        with open(task_file) as handle:
            task_class = getattr(keras_hub.models, json.load(handle)["class_name"])
        task = task_class.from_preset(path)
    return backbone, task, keras_hub.models.Tokenizer.from_preset(path)

def to_numpy(x):
    array = keras.ops.convert_to_numpy(x)
    return array.astype(np.float32) if array.dtype.name == "bfloat16" else array

def logits(backbone, task, ids):
    if task is not None and hasattr(task, "mlm_head"):
        batch = {
            "token_ids": ids,
            "segment_ids": np.zeros_like(ids),
            "padding_mask": np.ones_like(ids),
            "mask_positions": np.array([[1, 2]], dtype="int32"),
        }
        return to_numpy(task(batch))
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    if "Bert" in type(backbone).__name__:
        inputs["segment_ids"] = np.zeros_like(ids)
    hidden = backbone(inputs)
    if isinstance(hidden, dict):
        hidden = hidden["sequence_output"]
    return to_numpy(backbone.token_embedding(hidden, reverse=True))

old_backbone, old_task, _ = load(old_path)
backbone, task, tokenizer = load(new_path)
ids = np.array([[1, 3, 5, 7]], dtype="int32")
report = {
    "vocabulary_size": backbone.vocabulary_size,
    "old_table": to_numpy(old_backbone.token_embedding.embeddings).tolist(),
    "table": to_numpy(backbone.token_embedding.embeddings).tolist(),
    "old_logits": logits(old_backbone, old_task, ids).tolist(),
    "logits": logits(backbone, task, ids).tolist(),
    "tokenizer_size": int(tokenizer.vocabulary_size()),
}
if tokens:
    report["token_to_id"] = {t: int(tokenizer.token_to_id(t)) for t in tokens}
    pieces = {t: np.asarray(tokenizer(t)).tolist() for t in tokens}
    report["tokenized"] = {t: [tokenizer.id_to_token(i) for i in p] for t, p in pieces.items()}
    report["tokenized_ids"] = pieces
    if task is not None and getattr(task, "preprocessor", None) is not None:
        inner = task.preprocessor.tokenizer
        report["task_tokenized"] = {t: np.asarray(inner(t)).tolist() for t in tokens}
reverse = getattr(backbone.token_embedding, "reverse_embeddings", None)
if reverse is not None:
    report["old_reverse"] = to_numpy(old_backbone.token_embedding.reverse_embeddings).tolist()
    report["reverse"] = to_numpy(reverse).tolist()
if task is not None and hasattr(task, "mlm_head"):
    report["old_bias"] = to_numpy(old_task.mlm_head._output_bias if hasattr(old_task.mlm_head, "_output_bias") else old_task.mlm_head.output_bias).tolist()
    report["bias"] = to_numpy(task.mlm_head._output_bias if hasattr(task.mlm_head, "_output_bias") else task.mlm_head.output_bias).tolist()
print(json.dumps(report))
"""


def resize(runner, source: Path, output: Path, *arguments: str) -> dict:
    result = runner.invoke(
        cli, ["resize", str(source), "-l", TABLE, *arguments, "-o", str(output), "--json"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def keras_hub_report(old: Path, new: Path, tokens: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(old), str(new), json.dumps(tokens)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def mean_row(table: np.ndarray, dtype: str) -> np.ndarray:
    mean = table.astype(np.float64).mean(axis=0)
    if dtype == "bfloat16":
        import ml_dtypes

        return mean.astype(ml_dtypes.bfloat16).astype(np.float32)
    return mean.astype(np.float32)


def file_bytes(folder: Path) -> dict[str, bytes]:
    if folder.is_file():
        return {folder.name: folder.read_bytes()}
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def resized(tmp_path_factory):
    """Each case resized by `--add 5`, and apart by `--add-token` twice."""
    from click.testing import CliRunner

    runner = CliRunner()
    made = {}
    for name in CASES:
        folder = tmp_path_factory.mktemp(name.replace(".", "_"))
        suffix = ".keras" if name.endswith(".keras") else ""
        grown = folder / f"grown{suffix}"
        tokens = folder / f"tokens{suffix}"
        first = resize(runner, HUB / name, grown, "--add", "5")
        second = resize(
            runner, HUB / name, tokens, *[x for t in TOKENS for x in ("--add-token", t)]
        )
        made[name] = (grown, tokens, first, second)
    return made


@pytest.mark.parametrize("name", CASES)
def test_resize_reports_the_sizes(resized, name):
    _, _, first, second = resized[name]
    rows = MANIFEST[name]["vocabulary_size"]
    assert (first["old_rows"], first["new_rows"]) == (rows, rows + 5)
    assert (second["old_rows"], second["new_rows"]) == (rows, rows + 2)
    assert second["added_tokens"] == TOKENS
    paths = [change["path"] for change in second["config"]]
    if (HUB / name / "task.json").exists():
        assert {
            "path": "task.json:/config/backbone/config/vocabulary_size",
            "old": rows,
            "new": rows + 5,
        } in first["config"]
    if MANIFEST[name]["tokenizer"]["kind"] == "bpe" and not name.endswith(".keras"):
        assert "tokenizer.json:/config/unsplittable_tokens" in paths


@pytest.mark.parametrize("name", [n for n in CASES if not n.endswith(".keras")])
def test_only_the_files_the_edit_owns_change(resized, name):
    grown, tokens, _, _ = resized[name]
    before, after = file_bytes(HUB / name), file_bytes(grown)
    assert set(before) == set(after)
    changed = {n for n in before if before[n] != after[n]}
    weights = {n for n in before if n.endswith(".h5")}
    owned = {"config.json"} | weights
    if (HUB / name / "task.json").exists():
        owned.add("task.json")
    assert changed <= owned and "config.json" in changed
    assert "metadata.json" not in changed and "tokenizer.json" not in changed
    stored = [
        s["file"] for t in MANIFEST[name]["tables"] if t["name"] == TABLE for s in t["stored"]
    ]
    assert set(stored) <= changed
    again = file_bytes(tokens)
    token_changes = {n for n in before if before[n] != again[n]}
    assert "metadata.json" not in token_changes
    assert any(n.startswith("assets/tokenizer/vocabulary") for n in token_changes)


@pytest.mark.parametrize("name", [n for n in CASES if not n.endswith(".keras")])
def test_task_json_keeps_the_backbone_of_config_json(resized, name):
    _, tokens, _, _ = resized[name]
    if not (tokens / "task.json").exists():
        pytest.skip("no task")
    task = json.loads((tokens / "task.json").read_text())
    config = json.loads((tokens / "config.json").read_text())
    assert task["config"]["backbone"] == config
    assert config["config"]["vocabulary_size"] == MANIFEST[name]["vocabulary_size"] + 2


def test_the_masked_lm_bias_grows_with_its_mean(resized):
    grown, _, first, _ = resized["bert_masked_lm"]
    old = np.load(HUB / MANIFEST["bert_masked_lm"]["expected"])["output_bias"]
    assert "task/layers/masked_lm_head/vars/0" in first["resized"]
    with embcli.open(grown) as model:
        bias = model.artifact.read("task/layers/masked_lm_head/vars/0", slice(None))
    np.testing.assert_array_equal(bias[: len(old)], old)
    np.testing.assert_allclose(bias[len(old) :], np.float32(old.astype(np.float64).mean()))


def test_the_resized_preset_lists_the_added_tokens(resized):
    _, tokens, _, _ = resized["gpt2_causal_lm"]
    with embcli.open(tokens) as model:
        vocabulary = model.table_vocabulary(TABLE)
        rows = MANIFEST["gpt2_causal_lm"]["vocabulary_size"]
        assert [vocabulary.row_of(t) for t in TOKENS] == [rows, rows + 1]
        assert len([t for t in list_tables(model.artifact) if t.name == TABLE]) == 1


@pytest.mark.keras
@pytest.mark.tensorflow
@pytest.mark.parametrize("name", CASES)
def test_keras_hub_loads_the_resized_model(resized, name):
    grown, tokens, _, _ = resized[name]
    rows = MANIFEST[name]["vocabulary_size"]
    dtype = next(t["dtype"] for t in MANIFEST[name]["tables"] if t["name"] == TABLE)
    for output, added, given in ((grown, 5, []), (tokens, 2, TOKENS)):
        report = keras_hub_report(HUB / name, output, given)
        check_grown(report, rows, added, dtype)
        if given:
            assert report["token_to_id"] == {TOKENS[0]: rows, TOKENS[1]: rows + 1}
            assert report["tokenizer_size"] == rows + 2
            for token, row in report["token_to_id"].items():
                # SentencePiece puts its word-boundary piece before the first word.
                pieces = [p for p in report["tokenized"][token] if p != WORD_BOUNDARY]
                assert pieces == [token], report["tokenized"][token]
                assert report["tokenized_ids"][token][-1] == row
                if "task_tokenized" in report:
                    assert report["task_tokenized"][token] == report["tokenized_ids"][token]


def check_grown(report: dict, rows: int, added: int, dtype: str) -> None:
    assert report["vocabulary_size"] == rows + added
    old, table = np.asarray(report["old_table"]), np.asarray(report["table"])
    assert table.shape == (rows + added, old.shape[1])
    np.testing.assert_array_equal(table[:rows], old)
    np.testing.assert_array_equal(table[rows:], np.tile(mean_row(old, dtype), (added, 1)))
    if "reverse" in report:
        old_reverse, reverse = np.asarray(report["old_reverse"]), np.asarray(report["reverse"])
        assert reverse.shape == (old_reverse.shape[0], rows + added)
        np.testing.assert_array_equal(reverse[:, :rows], old_reverse)
    if "bias" in report:
        old_bias, bias = np.asarray(report["old_bias"]), np.asarray(report["bias"])
        np.testing.assert_array_equal(bias[:rows], old_bias)
        np.testing.assert_allclose(bias[rows:], old_bias.astype(np.float64).mean(), rtol=1e-6)
    old_logits, logits = np.asarray(report["old_logits"]), np.asarray(report["logits"])
    assert logits.shape[-1] == rows + added
    np.testing.assert_allclose(logits[..., :rows], old_logits, rtol=1e-5, atol=1e-6)


TRAINED = r"""
import json, os, sys
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import keras
import keras_hub

keras.utils.set_random_seed(1)
backbone = keras_hub.models.BertBackbone(
    vocabulary_size=30, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
    max_sequence_length=8,
)
task = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
task.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
ids = np.array([[1, 2, 3, 4]] * 2, dtype="int32")
x = {
    "token_ids": ids,
    "segment_ids": np.zeros_like(ids),
    "padding_mask": np.ones_like(ids),
    "mask_positions": np.array([[1, 2]] * 2, dtype="int32"),
}
task.fit(x, np.array([[5, 6]] * 2), epochs=1, verbose=0)
task.save(sys.argv[1])
# Keras saves the optimizer's variables as optimizer/vars/0, 1, ... in this order.
print(json.dumps([[v.path, keras.ops.convert_to_numpy(v).tolist()] for v in task.optimizer.variables]))
"""


@pytest.mark.keras
@pytest.mark.tensorflow
def test_a_trained_task_archive_keeps_its_optimizer_in_step(runner, tmp_path):
    """Adam's slots for the table and for the MaskedLMHead's bias grow with them (new
    entries zero); every other slot stays. Which slot is which comes from Keras."""
    source, output = tmp_path / "trained.keras", tmp_path / "grown.keras"
    done = subprocess.run(
        [sys.executable, "-c", TRAINED, str(source)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    slots = json.loads(done.stdout.strip().splitlines()[-1])
    record = resize(runner, source, output, "--add", "3")
    assert "layers/masked_lm_head/vars/0" in record["resized"]
    grown = set()
    with embcli.open(output) as model:
        for index, (path, old) in enumerate(slots):
            old = np.asarray(old)
            if old.ndim == 0:
                continue
            new = np.asarray(model.artifact.read(f"optimizer/vars/{index}", slice(None)))
            leaf = path.rsplit("/", 1)[-1]
            if leaf.startswith(("token_embedding_embeddings_", "mlm_head_output_bias_")):
                grown.add(leaf)
                assert new.shape == (33,) + old.shape[1:]
                np.testing.assert_array_equal(new[:30], old)
                np.testing.assert_array_equal(new[30:], 0)
            else:
                np.testing.assert_array_equal(new, old)
    assert len(grown) == 4, grown
