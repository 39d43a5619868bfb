"""TensorFlow SavedModel folders and checkpoints. The only module that imports TensorFlow,
and only when such an artifact is opened."""

from __future__ import annotations

from pathlib import Path

from embcli.errors import MissingDependency, UnsupportedFormat
from embcli.formats.base import ModelFile

INSTALL_HINT = "reading TensorFlow SavedModels and checkpoints needs TensorFlow: pip install 'embcli[tensorflow]'"


def import_tensorflow():
    try:
        import tensorflow as tf  # noqa: PLC0415
    except ImportError:
        raise MissingDependency(INSTALL_HINT) from None
    return tf


def open_tensorflow(path: Path, kind: str) -> ModelFile:
    import_tensorflow()
    raise UnsupportedFormat(f"{path}: TensorFlow {kind} artifacts are not supported yet")
