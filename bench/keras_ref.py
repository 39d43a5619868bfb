"""The Keras way of doing what each embcli command does, and Keras checking embcli's outputs.

Each script gets the model as argv[1], then the case's arguments. It loads the model the
ordinary way (`keras.models.load_model`) and finds the table as users do, through the layer.
"""

from __future__ import annotations

from models import LAYER

KERAS_PRELUDE = f"""\
import os, sys, json
import numpy as np
import keras
model = keras.models.load_model(sys.argv[1])
layer = model.get_layer({LAYER!r})
"""

KERAS_SCRIPTS = {
    "layers": """\
for l in model.layers:
    if type(l).__name__.endswith("Embedding"):
        v = l.embeddings
        print(l.name, type(l).__name__, *v.shape, v.dtype, v.path)
""",
    "rows": """\
rows = [int(a) for a in sys.argv[2:]]
print(keras.ops.convert_to_numpy(keras.ops.take(layer.embeddings, rows, axis=0)))
""",
    "export": """\
np.save(sys.argv[2], keras.ops.convert_to_numpy(layer.embeddings))
""",
    "assign": """\
rows = [int(a) for a in sys.argv[4].split(",")]
table = keras.ops.convert_to_numpy(layer.embeddings).copy()
table[rows] = np.load(sys.argv[3])
layer.embeddings.assign(table)
model.save(sys.argv[2])
""",
    "stats": """\
w = keras.ops.convert_to_numpy(layer.embeddings)
finite = np.isfinite(w).all(axis=1)
norms = np.linalg.norm(w[finite], axis=1)
unique = np.unique(np.ascontiguousarray(w).view(np.dtype((np.void, w.shape[1] * w.itemsize))))
print(json.dumps({"rows": len(w), "nan_rows": int(np.isnan(w).any(axis=1).sum()),
                  "inf_rows": int(np.isinf(w).any(axis=1).sum()),
                  "zero_rows": int((w == 0).all(axis=1).sum()),
                  "duplicate_rows": len(w) - len(unique),
                  "norm_min": float(norms.min()), "norm_mean": float(norms.mean()),
                  "norm_max": float(norms.max())}))
""",
    "neighbors": """\
row, k = int(sys.argv[2]), int(sys.argv[3])
w = keras.ops.convert_to_numpy(layer.embeddings)
scores = (w @ w[row]) / (np.linalg.norm(w, axis=1) * np.linalg.norm(w[row]) + 1e-12)
scores[row] = -np.inf
best = np.argpartition(-scores, k)[:k]
best = best[np.argsort(-scores[best])]
print(json.dumps([{"index": int(i), "score": float(scores[i])} for i in best]))
""",
}

# argv[1] is a JSON list of checks, each {"name", "kind", "original", ...}; prints one
# JSON object {name: "ok" or the failure}. Tables come from Keras loading each file.
VERIFY_SCRIPT = f"""\
import json, sys
import numpy as np
import keras
checks = json.loads(sys.argv[1])
loaded = {{}}
def table(path):
    if path not in loaded:
        layer = keras.models.load_model(path).get_layer({LAYER!r})
        loaded[path] = keras.ops.convert_to_numpy(layer.embeddings)
    return loaded[path]
verdicts = {{}}
for check in checks:
    try:
        before = table(check["original"])
        kind = check["kind"]
        if kind == "export":
            after = np.load(check["output"], mmap_mode="r")
            expected = before
        else:
            after = table(check["output"])
        if kind == "assign":
            expected = before.copy()
            expected[check["rows"]] = np.load(check["vectors"])
        elif kind == "resize":
            assert after.shape == (before.shape[0] + check["add"], before.shape[1]), after.shape
            after, expected = after[: before.shape[0]], before
        elif kind == "remap":
            expected = before[:: check["keep_every"]]
        np.testing.assert_array_equal(after, expected)
        verdicts[check["name"]] = "ok"
    except Exception as exc:
        verdicts[check["name"]] = f"FAILED: {{type(exc).__name__}}: {{str(exc)[:300]}}"
    loaded.pop(check["output"], None)
print(json.dumps(verdicts))
"""


def keras_argv(python: str, case: str, *args: object) -> list[str]:
    """The command line of the Keras way of `case`, with its arguments."""
    return [python, "-c", KERAS_PRELUDE + KERAS_SCRIPTS[case], *map(str, args)]
