"""TensorFlow, imported only when a TensorFlow artifact is opened, and quietly."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from embcli.errors import MissingDependency

INSTALL_HINT = (
    "reading TensorFlow SavedModels and checkpoints needs TensorFlow: "
    "pip install 'embcli[tensorflow]'"
)
LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
ERRORS_ONLY = "3"


def import_tensorflow() -> Any:
    """TensorFlow, imported on first use with its start-up chatter kept off stderr.

    Raises:
        MissingDependency: TensorFlow is not installed; the message says how to install it.
    """
    os.environ.setdefault(LOG_LEVEL_VARIABLE, ERRORS_ONLY)
    if sys.modules.get("tensorflow") is not None:
        return sys.modules["tensorflow"]
    try:
        with quiet_stderr():
            import tensorflow as tf  # noqa: PLC0415
    except ImportError:
        raise MissingDependency(INSTALL_HINT) from None
    return tf


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to the null device for the duration, where it can be."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
