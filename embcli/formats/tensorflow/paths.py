"""Where a SavedModel's and a checkpoint's files lie, and the checks made before reading them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from embcli.errors import MalformedFile, UnsafeFile, UnsupportedFormat

SAVED_MODEL_FILENAME = "saved_model.pb"
KERAS_METADATA_FILENAME = "keras_metadata.pb"
FINGERPRINT_FILENAME = "fingerprint.pb"
VARIABLES_DIRNAME = "variables"
VARIABLES_FILENAME = "variables"
ASSETS_DIRNAME = "assets"
CHECKPOINT_STATE_FILENAME = "checkpoint"
INDEX_SUFFIX = ".index"
DATA_INFIX = ".data-"

MAX_STATE_BYTES = 1 << 20


def checkpoint_prefix(path: Path) -> Path:
    """The prefix a checkpoint path names: `ckpt` for `ckpt`, `ckpt.index` or a data file."""
    name = path.name
    if name.endswith(INDEX_SUFFIX):
        return path.with_name(name[: -len(INDEX_SUFFIX)])
    if DATA_INFIX in name:
        return path.with_name(name.rpartition(DATA_INFIX)[0])
    return path


def index_file(prefix: Path) -> Path:
    """The index of the checkpoint at `prefix`."""
    return Path(f"{prefix}{INDEX_SUFFIX}")


def data_files(prefix: Path) -> list[Path]:
    """A checkpoint's data shards, as they lie beside its index."""
    start = prefix.name + DATA_INFIX
    try:
        entries = sorted(prefix.parent.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.name.startswith(start)]


def shard_names(prefix: Path, count: int) -> list[Path]:
    """The data shards TensorFlow writes for a checkpoint of `count` shards at `prefix`."""
    return [Path(f"{prefix}{DATA_INFIX}{i:05d}-of-{count:05d}") for i in range(count)]


def check_regular(path: Path) -> None:
    """Refuse a path that is missing, a symbolic link or anything but a regular file."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        raise UnsupportedFormat(f"{path}: no such file") from None
    if stat.S_ISLNK(mode):
        raise UnsafeFile(f"{path}: symbolic links are refused")
    if not stat.S_ISREG(mode):
        raise UnsafeFile(f"{path}: not a regular file")


def check_tree(folder: Path) -> None:
    """Refuse a SavedModel folder that links or points outside itself."""
    if folder.is_symlink():
        raise UnsafeFile(f"{folder}: symbolic links are refused")
    for current, dirs, files in os.walk(folder):
        for name in dirs + files:
            entry = Path(current) / name
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise UnsafeFile(f"{entry}: symbolic links are refused")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UnsafeFile(f"{entry}: not a regular file")


def prefix_from_state(folder: Path) -> Path:
    """The checkpoint a folder's `checkpoint` state file names, which must lie in the folder.

    Raises:
        UnsafeFile: the state file is a link, too large, or names a checkpoint elsewhere.
        MalformedFile: the state file cannot be parsed or names no checkpoint.
    """
    from google.protobuf import text_format
    from tensorflow.python.training import checkpoint_state_pb2

    state_path = folder / CHECKPOINT_STATE_FILENAME
    check_regular(state_path)
    if state_path.stat().st_size > MAX_STATE_BYTES:
        raise UnsafeFile(f"{state_path}: too large for a checkpoint state file")
    state = checkpoint_state_pb2.CheckpointState()
    try:
        text_format.Parse(state_path.read_text(encoding="utf-8"), state)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise MalformedFile(f"{state_path}: not a checkpoint state file ({exc})") from None
    if not state.model_checkpoint_path:
        raise MalformedFile(f"{state_path}: names no checkpoint")
    named = Path(state.model_checkpoint_path)
    prefix = named if named.is_absolute() else folder / named
    if prefix.absolute().parent.resolve() != folder.absolute().resolve():
        raise UnsafeFile(
            f"{state_path}: names a checkpoint outside its folder; give the checkpoint's prefix"
        )
    return prefix


def state_text(name: str) -> bytes:
    """A `checkpoint` state file that names the checkpoint `name` beside it."""
    from google.protobuf import text_format
    from tensorflow.python.training import checkpoint_state_pb2

    state = checkpoint_state_pb2.CheckpointState(
        model_checkpoint_path=name, all_model_checkpoint_paths=[name]
    )
    return str(text_format.MessageToString(state)).encode("utf-8")
