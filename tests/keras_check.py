"""Ask real Keras (in a subprocess) what an edited model is: the layer's size and table,
its optimizer's state, predictions on given inputs, and whether one step of `fit` runs.

The tests of resize use it as the oracle: what Keras loads and runs is what counts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

_SCRIPT = r"""
import json, sys
import numpy as np
flavour, path, name, inputs_path, out_path, do_fit = sys.argv[1:7]
if flavour == "tf_keras":
    import tf_keras as keras
else:
    import keras
try:
    import keras_hub  # noqa: F401
except Exception:
    pass
kwargs = {} if flavour == "tf_keras" else {"safe_mode": False}
try:
    model = keras.models.load_model(path, **kwargs)
except Exception:  # a legacy file whose training config no longer deserializes
    model = keras.models.load_model(path, compile=False, **kwargs)

def find(model, name):
    layers = model._flatten_layers(include_self=False, recursive=True)
    for layer in layers:
        if layer.name == name:
            return layer
    raise KeyError(name)

layer = find(model, name)
report = {"input_dim": int(getattr(layer, "input_dim", -1))}
table = layer.embeddings
values = np.asarray(keras.ops.convert_to_numpy(table) if hasattr(keras, "ops") else table.numpy())
if getattr(layer, "quantization_mode", None):
    ids = np.arange(layer.input_dim)
    values = np.asarray(layer(ids))
out = {"table": values.astype(np.float32)}
reverse = getattr(layer, "reverse_embeddings", None)
if reverse is not None and not getattr(layer, "tie_weights", True):
    out["reverse"] = np.asarray(reverse).astype(np.float32)
optimizer = getattr(model, "optimizer", None)
slots = []
if optimizer is not None and getattr(optimizer, "variables", None):
    for variable in optimizer.variables:
        array = np.asarray(variable)
        if array.ndim >= 1 and report["input_dim"] in array.shape:
            slots.append([getattr(variable, "path", variable.name), list(array.shape)])
            out["slot:" + str(len(slots) - 1)] = array.astype(np.float32)
    iterations = optimizer.iterations
    report["iterations"] = int(np.asarray(iterations))
report["slots"] = slots
if inputs_path:
    with np.load(inputs_path) as data:
        inputs = {k: data[k] for k in data.files}
    if len(model.inputs) == 1:
        inputs = next(iter(inputs.values()))
    out["predictions"] = np.asarray(model.predict(inputs, verbose=0)).astype(np.float32)
    if do_fit == "1":
        target = np.zeros_like(out["predictions"])
        model.fit(inputs, target, epochs=1, batch_size=len(target), verbose=0)
        report["iterations_after_fit"] = int(np.asarray(model.optimizer.iterations))
np.savez(out_path, **out)
print(json.dumps(report))
"""


def keras_check(
    path: Path,
    layer: str,
    *,
    flavour: str = "keras",
    inputs: dict[str, np.ndarray] | None = None,
    fit: bool = False,
    scratch: Path,
) -> tuple[dict, dict[str, np.ndarray]]:
    """`(report, arrays)` for `layer` of the model at `path`, as Keras loads it."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    inputs_path = ""
    if inputs is not None:
        inputs_path = str(scratch / "keras-check-inputs.npz")
        np.savez(inputs_path, **inputs)
    out = scratch / "keras-check.npz"
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, flavour, str(path), layer, inputs_path, str(out),
         "1" if fit else "0"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(f"Keras could not load or run {path}:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    with np.load(out) as data:
        arrays = {k: data[k] for k in data.files}
    return report, arrays
