"""TensorFlow SavedModel folders and checkpoints. The only package that imports TensorFlow,
and only when such an artifact is opened.

Variables are read with TensorFlow's checkpoint reader alone: a SavedModel's graph is a
program and is never loaded or run. Its protobufs are parsed as data to name the tables:

- `keras_metadata.pb` (tf_keras `model.save("dir")`) tells each layer's name and class;
- the checkpoint's object graph tells a variable's `layer/variable` name;
- in a Keras 3 `model.export()`, whose keys are positional, a variable that a function of
  `saved_model.pb` gathers rows from is a table. Such an export stores each variable twice,
  under `variables/N` and `_all_variables/M`; both keys are one table and edited together.

A write rebuilds the checkpoint with TensorFlow's own `SaveV2` op from every tensor the
reader returns, the edited rows (or, in a checkpoint, whole resized tensors) replaced, then
compares every tensor of the result with what was meant. A SavedModel's `fingerprint.pb` is
recomputed by TensorFlow's fingerprinting code from the written folder.

Modules: `runtime` imports TensorFlow; `paths` knows the files; `proto` reads protobuf wire
data; `graph` reads what `saved_model.pb`'s functions do; `variables` reads the object graph;
`tables` names tables and tells their classes; `reader` opens artifacts; `writer` writes.
"""

from embcli.formats.tensorflow.paths import checkpoint_prefix
from embcli.formats.tensorflow.proto import read_keras_metadata
from embcli.formats.tensorflow.reader import TensorFlowFile, open_tensorflow
from embcli.formats.tensorflow.runtime import INSTALL_HINT, import_tensorflow

__all__ = [
    "INSTALL_HINT",
    "TensorFlowFile",
    "checkpoint_prefix",
    "import_tensorflow",
    "open_tensorflow",
    "read_keras_metadata",
]
