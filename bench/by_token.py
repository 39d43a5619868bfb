"""The `by-token` case: `assign --by-token` from a GloVe text file, against gensim loading
the same file. Not part of the default run (gensim takes about 100 s a load)."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from environment import Interpreter, machine_info
from measure import Series, remove, rss_floor, run_rounds, slug, warm
from models import LAYER
from report import (
    AT_LEAST_SPEEDUP,
    HEADERS,
    UNDER_MB,
    Case,
    Goal,
    goal_lines,
    render_markdown,
    render_text,
    table_rows,
    write_results,
)

BENCH = Path(__file__).resolve().parent
WORK = BENCH / "work"
GLOVE_TOKENS = 400_000
GLOVE_DIM = 300
VOCAB_SIZE = 20_000
VOCAB_ABSENT = 1_000

# The by-token case: a GloVe text file and a model whose StringLookup feeds its Embedding.
# Every 97th token is non-ASCII; the vocabulary holds VOCAB_SIZE - VOCAB_ABSENT tokens of
# the file and VOCAB_ABSENT that it lacks, in random order.
BY_TOKEN_GENERATE_SCRIPT = f"""\
import os, sys
import numpy as np
import keras
count, dim, vocab_size, absent = (int(a) for a in sys.argv[1:5])
glove_path, model_path = sys.argv[5], sys.argv[6]
def token(i):
    return f"w\u00e9{{i}}" if i % 97 == 0 else f"w{{i}}"
scale = 100_000
text = [f"{{s / scale:.5f}}" for s in range(-4 * scale, 4 * scale)]
rng = np.random.default_rng(3)
partial = glove_path + ".partial"
with open(partial, "w", encoding="utf-8", newline="\\n") as handle:
    for start in range(0, count, 2000):
        block = rng.standard_normal((min(2000, count - start), dim)) * (0.4 * scale)
        block = (np.rint(block).clip(-4 * scale, 4 * scale - 1) + 4 * scale).astype(np.int64)
        handle.write("".join(
            token(start + i) + " " + " ".join(map(text.__getitem__, row)) + "\\n"
            for i, row in enumerate(block.tolist())))
vocab = [token(int(i)) for i in rng.choice(count, vocab_size - absent, replace=False)]
vocab += [f"absent{{i}}" if i % 2 else f"fehlt\u00e4{{i}}" for i in range(absent)]
vocab = [vocab[i] for i in rng.permutation(vocab_size)]
inputs = keras.Input(shape=(None,), dtype="string")
ids = keras.layers.StringLookup(vocabulary=vocab, num_oov_indices=1, name="lookup")(inputs)
outputs = keras.layers.Embedding(vocab_size + 1, dim, name={LAYER!r})(ids)
model = keras.Model(inputs, outputs, name="by_token")
stem, suffix = os.path.splitext(model_path)
model.save(stem + ".partial" + suffix)
os.replace(stem + ".partial" + suffix, model_path)
os.replace(partial, glove_path)
"""

GENSIM_SCRIPT = """\
import sys
from gensim.models import KeyedVectors
KeyedVectors.load_word2vec_format(sys.argv[1], binary=False, no_header=True)
"""

# The vocabulary comes from config.json as Keras wrote it (row 0 is the OOV row), the
# vectors from the GloVe text cast to float32, the tables through embcli's library.
BY_TOKEN_VERIFY_SCRIPT = f"""\
import json, sys, zipfile
import numpy as np
from embcli.model import find_table, open_model, read_rows
original, edited, glove = sys.argv[1:4]
with zipfile.ZipFile(original) as archive:
    layers = json.loads(archive.read("config.json"))["config"]["layers"]
vocab = next(l["config"]["vocabulary"] for l in layers if l["class_name"] == "StringLookup")
row_of = {{token: row for row, token in enumerate(vocab, start=1)}}
def table(path):
    with open_model(path) as model:
        found = find_table(model, {LAYER!r})
        return read_rows(model, found, np.arange(found.rows))
before, after = table(original), table(edited)
expected = before.copy()
matched = set()
with open(glove, "rb") as handle:
    for line in handle:
        token, _, values = line.decode("utf-8").rstrip("\\n").partition(" ")
        if token in row_of:
            expected[row_of[token]] = np.array(values.split(" "), dtype=np.float64)
            matched.add(token)
np.testing.assert_array_equal(after, expected)
wide = sum(not t.isascii() for t in matched)
print(f"{{len(matched)}} matched rows ({{wide}} with non-ASCII tokens) hold the GloVe vectors "
      f"cast to float32; the other {{len(before) - len(matched)}} rows are unchanged")
"""


def ensure_files(keras: Interpreter) -> tuple[Path, Path]:
    """The GloVe text and the model with a vocabulary, generated once with Keras."""
    glove = WORK / f"glove-{GLOVE_TOKENS}x{GLOVE_DIM}.txt"
    model = WORK / f"vocab-model-{VOCAB_SIZE}x{GLOVE_DIM}.keras"
    if glove.is_file() and model.is_file():
        return glove, model
    WORK.mkdir(parents=True, exist_ok=True)
    print(
        f"generating a {GLOVE_TOKENS} x {GLOVE_DIM} GloVe file and a model with a "
        f"{VOCAB_SIZE}-token vocabulary with Keras ...",
        flush=True,
    )
    argv = [
        keras.python,
        "-c",
        BY_TOKEN_GENERATE_SCRIPT,
        str(GLOVE_TOKENS),
        str(GLOVE_DIM),
        str(VOCAB_SIZE),
        str(VOCAB_ABSENT),
        str(glove),
        str(model),
    ]
    subprocess.run(argv, env=keras.env, check=True)
    return glove, model


def gensim_interpreter(requested: str | None, keras: Interpreter) -> Interpreter | None:
    """`requested`, which must have gensim, else the Keras side if it has gensim, else None."""
    python = Interpreter(requested or keras.python, keras.env, "gensim side")
    found = subprocess.run(
        [python.python, "-c", "import gensim"], env=python.env, capture_output=True
    )
    if found.returncode != 0:
        if requested:
            raise SystemExit(f"--gensim-python {requested} cannot import gensim")
        return None
    return python.probe(("gensim",))


def verify(embcli: Interpreter, model: Path, edited: Path, glove: Path) -> str:
    argv = [embcli.python, "-c", BY_TOKEN_VERIFY_SCRIPT, str(model), str(edited), str(glove)]
    found = subprocess.run(argv, env=embcli.env, capture_output=True, text=True)
    if found.returncode != 0:
        return "embcli's output, read back with embcli's library: FAILED: " + found.stderr[-500:]
    return f"embcli's output, read back with embcli's library: {found.stdout.strip()}: ok"


def coverage_notes(log: Path) -> list[str]:
    """embcli's coverage report, from the stderr of its last run."""
    err = log.with_suffix(".err")
    lines = err.read_text(errors="replace").splitlines() if err.exists() else []
    return [
        f"embcli reported: {line}" for line in lines if line.startswith(("matched ", "skipped "))
    ]


def by_token_benchmark(
    args: argparse.Namespace, sides: tuple[Interpreter, Interpreter]
) -> tuple[int, dict]:
    """Times both sides, checks embcli's output, and writes the `by-token` section."""
    embcli, keras = sides
    gensim = gensim_interpreter(args.gensim_python, keras)
    glove, model = ensure_files(keras)
    out = WORK / "out"
    out.mkdir(parents=True, exist_ok=True)
    edited = out / "embcli-by-token.keras"
    argv = [
        embcli.python,
        "-m",
        "embcli",
        "assign",
        str(model),
        "-l",
        LAYER,
        "--by-token",
        "--from",
        str(glove),
        "-o",
        str(edited),
        "--force",
    ]
    mine = Series("embcli", argv, [edited], env=embcli.env)
    theirs = None
    notes = []
    if gensim:
        argv = [gensim.python, "-c", GENSIM_SCRIPT, str(glove)]
        theirs = Series("gensim", argv, env=gensim.env)
        notes.append(f"gensim {(gensim.versions or {}).get('gensim')} ran with {gensim.python}.")
    else:
        notes.append(
            "gensim comparison skipped: the Keras side cannot import gensim; give "
            "--gensim-python PATH of an interpreter that can."
        )
    goals = [Goal(">= 3x gensim", AT_LEAST_SPEEDUP, 3, [theirs])] if theirs else []
    goals.append(Goal("< 300 MB", UNDER_MB, 300))
    case = Case("assign --by-token", mine, theirs, None, goals)
    info = machine_info(WORK, BENCH.parent)
    logs = WORK / "logs"
    info["rss_floor_mb"] = round(rss_floor(keras.env, logs), 1)
    for path in (glove, model):
        warm(path)
    size = glove.stat().st_size / 1e9
    print(
        f"by-token x {args.repeat} runs; {GLOVE_TOKENS} x {GLOVE_DIM} GloVe text "
        f"({size:.2f} GB), {VOCAB_SIZE}-token vocabulary",
        flush=True,
    )
    run_rounds([(case.name, s) for s in case.series()], args.repeat, embcli.env, logs)
    notes.extend(coverage_notes(logs / slug(f"{case.name}-embcli")))
    if not args.no_verify and mine.ok:
        notes.append(verify(embcli, model, edited, glove))
    if not args.keep_outputs:
        remove(edited)
    rows = table_rows([case], [])
    goals_text = goal_lines([case])
    print()
    print(render_text(rows, HEADERS))
    for line in goals_text + [f"note: {note}" for note in notes]:
        print(line)
    report = {
        "machine": info,
        "embcli_side": embcli.record(),
        "gensim_side": gensim.record() if gensim else None,
        "glove": {"tokens": GLOVE_TOKENS, "dim": GLOVE_DIM, "bytes": glove.stat().st_size},
        "vocabulary": VOCAB_SIZE,
        "repeat": args.repeat,
        "notes": notes,
        "cases": [case.record()],
    }
    if not args.no_results:
        body = "\n\n".join(
            [
                f"## assign --by-token: {GLOVE_TOKENS} x {GLOVE_DIM} GloVe text ({size:.2f} GB), "
                f"{VOCAB_SIZE}-token vocabulary, median of {args.repeat}",
                f"- Date: {info['date']}\n- embcli side ({embcli.origin}): {embcli.versions_line()}"
                f"\n- embcli commit: {info['commit']}\n- Load average at start: "
                f"{info['load_average']}",
                render_markdown(rows, HEADERS),
                "\n".join(f"- {line}" for line in goals_text + notes),
                f"embcli runs `assign MODEL -l {LAYER} --by-token --from GLOVE -o OUT --force` "
                "on a "
                f".keras whose StringLookup (vocabulary in its config, {VOCAB_SIZE - VOCAB_ABSENT} "
                f"of the tokens in the file) feeds an Embedding of {VOCAB_SIZE + 1} x {GLOVE_DIM}, "
                "and writes the edited model. gensim runs `KeyedVectors.load_word2vec_format("
                "GLOVE, binary=False, no_header=True)` and writes nothing.",
            ]
        )
        write_results("by-token", body)
    return (0 if mine.ok else 1), report
