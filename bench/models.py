"""The model files the benchmark reads and edits, generated once into bench/work/.

Each generator runs as a subprocess of the Keras interpreter, so that run.py itself never
imports numpy, h5py or Keras.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from environment import Interpreter

LAYER = "words"
FORMATS = {"keras": ".keras", "h5": ".h5"}
OOV_TOKEN = "[UNK]"

# argv: rows, dim, then the .keras and .h5 paths. One Embedding named LAYER, random
# float32 values, saved with Keras 3's own writers (the .h5 with its legacy writer).
GENERATE_SCRIPT = f"""\
import os, sys
import numpy as np
import keras
rows, dim = int(sys.argv[1]), int(sys.argv[2])
model = keras.Sequential(
    [keras.Input(shape=(None,), dtype="int32"), keras.layers.Embedding(rows, dim, name={LAYER!r})],
    name="bench",
)
rng = np.random.default_rng(0)
model.get_layer({LAYER!r}).set_weights([rng.standard_normal((rows, dim), dtype=np.float32)])
for final in sys.argv[3:]:
    stem, suffix = os.path.splitext(final)
    temp = stem + ".partial" + suffix
    model.save(temp)
    os.replace(temp, final)
"""

# argv: rows, dim, the .keras path, the token file. A StringLookup whose vocabulary (in
# its config) is rows - 1 tokens, with one OOV index, feeds an Embedding of `rows` rows,
# so that embcli knows the table's vocabulary; the token file gets the tokens in row
# order, OOV first, one a line.
VOCAB_MODEL_SCRIPT = f"""\
import os, sys
import numpy as np
import keras
rows, dim, path, tokens_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
vocab = [f"t{{i}}" for i in range(1, rows)]
inputs = keras.Input(shape=(None,), dtype="string")
ids = keras.layers.StringLookup(vocabulary=vocab, num_oov_indices=1, oov_token={OOV_TOKEN!r},
                                name="lookup")(inputs)
outputs = keras.layers.Embedding(rows, dim, name={LAYER!r})(ids)
model = keras.Model(inputs, outputs, name="bench_vocab")
rng = np.random.default_rng(4)
model.get_layer({LAYER!r}).set_weights([rng.standard_normal((rows, dim), dtype=np.float32)])
stem, suffix = os.path.splitext(path)
model.save(stem + ".partial" + suffix)
with open(tokens_path + ".partial", "w", encoding="utf-8", newline="\\n") as handle:
    handle.write("\\n".join([{OOV_TOKEN!r}] + vocab) + "\\n")
os.replace(tokens_path + ".partial", tokens_path)
os.replace(stem + ".partial" + suffix, path)
"""

VECTORS_SCRIPT = """\
import sys
import numpy as np
path, count, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
np.save(path, np.random.default_rng(1).standard_normal((count, dim), dtype=np.float32))
"""


def model_paths(work: Path, rows: int, dim: int) -> dict[str, Path]:
    return {fmt: work / f"model-{rows}x{dim}{suffix}" for fmt, suffix in FORMATS.items()}


def ensure_models(work: Path, rows: int, dim: int, keras: Interpreter) -> dict[str, Path]:
    """The benchmark's `.keras` and `.h5` models, generated with Keras if missing."""
    paths = model_paths(work, rows, dim)
    if all(p.is_file() for p in paths.values()):
        return paths
    work.mkdir(parents=True, exist_ok=True)
    size = rows * dim * 4 / 1024**2
    print(f"generating a {rows} x {dim} float32 model ({size:.0f} MiB) with Keras ...", flush=True)
    argv = [keras.python, "-c", GENERATE_SCRIPT, str(rows), str(dim), *map(str, paths.values())]
    subprocess.run(argv, env=keras.env, check=True)
    return paths


def ensure_vocab_model(work: Path, rows: int, dim: int, keras: Interpreter) -> tuple[Path, Path]:
    """A `.keras` whose table has a vocabulary (for `remap`), and its tokens in row order."""
    path = work / f"vocab-model-{rows}x{dim}.keras"
    tokens = work / f"vocab-model-{rows}x{dim}.tokens.txt"
    if path.is_file() and tokens.is_file():
        return path, tokens
    work.mkdir(parents=True, exist_ok=True)
    print(f"generating a {rows} x {dim} model with a StringLookup vocabulary ...", flush=True)
    argv = [keras.python, "-c", VOCAB_MODEL_SCRIPT, str(rows), str(dim), str(path), str(tokens)]
    subprocess.run(argv, env=keras.env, check=True)
    return path, tokens


def half_vocab(tokens: Path) -> Path:
    """A NEW_VOCAB for `remap` keeping every other row (half the table), in order.

    Streamed a line at a time: run.py's own peak RSS is every child's floor.
    """
    half = tokens.parent / (tokens.stem + ".half.txt")
    partial = half.with_suffix(".partial")
    with open(tokens, "rb") as source, open(partial, "wb") as target:
        for number, line in enumerate(source):
            if number % 2 == 0:
                target.write(line)
    partial.replace(half)
    return half


def ensure_vectors(work: Path, count: int, dim: int, keras: Interpreter) -> Path:
    """`count` random float32 vectors of width `dim` in a `.npy`, for `assign --from`."""
    path = work / f"vectors-{count}x{dim}.npy"
    if not path.is_file():
        argv = [keras.python, "-c", VECTORS_SCRIPT, str(path), str(count), str(dim)]
        subprocess.run(argv, env=keras.env, check=True)
    return path


def spread_rows(rows: int, count: int) -> list[int]:
    """`count` row indices spread evenly over a table of `rows`, first and last included."""
    return sorted({(i * (rows - 1)) // max(1, count - 1) for i in range(count)})
