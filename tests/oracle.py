"""Ask real Keras what a saved file holds, in a subprocess so that Keras 3, tf_keras and
an old Keras never share one interpreter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

OLD_KERAS_PYTHON = os.environ.get("EMBCLI_OLD_KERAS_PYTHON", "/work/oldk/bin/python")

_SCRIPT = r"""
import json, sys, os
import numpy as np
flavour, path, names, arch = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
if flavour == "tf_keras":
    import tf_keras as keras
else:
    import keras
try:
    import keras_hub  # noqa: F401  (registers keras-hub layers for their fixtures)
except Exception:
    pass

def find(model, name):
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if layer.name == name:
            return layer
    raise KeyError(name)

if arch:
    model = keras.models.load_model(arch, compile=False, **({} if flavour == "tf_keras" else {"safe_mode": False}))
    model.load_weights(path)
else:
    kwargs = {"compile": False}
    if flavour != "tf_keras":
        kwargs["safe_mode"] = False
    model = keras.models.load_model(path, **kwargs)
out = {}
for name in names:
    layer = find(model, name)
    if getattr(layer, "quantization_mode", None):
        values = layer(np.arange(layer.input_dim))
    else:
        values = layer.embeddings
    array = np.asarray(keras.ops.convert_to_numpy(values) if hasattr(keras, "ops") else values.numpy())
    out[name] = array.astype(np.float32) if array.dtype.name == "bfloat16" else array
np.savez(sys.argv[5], **out)
"""


def keras_tables(
    path: Path,
    names: list[str],
    flavour: str = "keras",
    architecture: Path | None = None,
    scratch: Path | None = None,
) -> dict[str, np.ndarray]:
    """The named layers' tables as Keras computes them after loading `path`.

    `flavour` is "keras" (current Keras 3), "tf_keras", or "old" (Keras 3.0 on JAX).
    A weights-only file is loaded into the model saved at `architecture`.
    """
    python = OLD_KERAS_PYTHON if flavour == "old" else sys.executable
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["KERAS_BACKEND"] = "jax" if flavour == "old" else "tensorflow"
    scratch = scratch or Path(path).parent
    target = scratch / f"oracle-{os.getpid()}.npz"
    _run(python, flavour, path, names, architecture, target, env)
    try:
        with np.load(target) as loaded:
            return dict(loaded)
    finally:
        target.unlink(missing_ok=True)


def _run(python, flavour, path, names, architecture, target, env) -> None:
    result = subprocess.run(
        [
            python,
            "-c",
            _SCRIPT,
            flavour,
            str(path),
            json.dumps(names),
            str(architecture or ""),
            str(target),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise AssertionError(f"Keras could not load {path}:\n{result.stderr[-3000:]}")


def old_keras_available() -> bool:
    return Path(OLD_KERAS_PYTHON).exists()
