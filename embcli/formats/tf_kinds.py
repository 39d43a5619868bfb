"""The TensorFlow artifact kinds. Telling them apart needs no TensorFlow; opening them
imports it, through `embcli.formats.tensorflow`."""

from __future__ import annotations

from pathlib import Path

from embcli.formats.base import ModelFile
from embcli.formats.registry import ArtifactKind, Probe

SAVED_MODEL_FILENAME = "saved_model.pb"
CHECKPOINT_STATE_FILENAME = "checkpoint"
INDEX_SUFFIX = ".index"
DATA_MARKER = ".data-"


def _is_saved_model_folder(probe: Probe) -> bool:
    return probe.has_file(SAVED_MODEL_FILENAME)


def _is_saved_model_file(probe: Probe) -> bool:
    return probe.exists and not probe.is_dir and probe.path.name == SAVED_MODEL_FILENAME


def _is_checkpoint_prefix(probe: Probe) -> bool:
    """A prefix names no file itself; its `.index` beside it does."""
    return not probe.exists and probe.has_sibling(INDEX_SUFFIX)


def _is_checkpoint(probe: Probe) -> bool:
    if probe.is_dir:
        return probe.has_file(CHECKPOINT_STATE_FILENAME)
    if not probe.exists:
        return False
    name = probe.path.name
    return name.endswith(INDEX_SUFFIX) or DATA_MARKER in name or name == CHECKPOINT_STATE_FILENAME


def _open(kind: str):
    def opener(path: Path) -> ModelFile:
        from embcli.formats.tensorflow import open_tensorflow

        return open_tensorflow(path, kind)

    return opener


KINDS = [
    ArtifactKind("tensorflow checkpoint", 0, _is_checkpoint_prefix, _open("checkpoint")),
    ArtifactKind("tensorflow savedmodel", 20, _is_saved_model_folder, _open("savedmodel")),
    ArtifactKind("tensorflow checkpoint", 60, _is_checkpoint, _open("checkpoint")),
    ArtifactKind("tensorflow savedmodel", 61, _is_saved_model_file, _open("savedmodel")),
]
