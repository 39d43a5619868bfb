"""Every artifact kind embcli reads, found by what a path holds.

A format module describes each kind it handles with an `ArtifactKind`: how to recognise
it from a `Probe` of the path, how to open it, and how a copy must be named. Adding a
kind means one module and one entry in `FORMAT_MODULES`; nothing else dispatches on
formats.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from embcli.errors import MalformedFile, UnsupportedFormat
from embcli.formats.base import ModelFile
from embcli.guarded import HDF5_SIGNATURE, h5_root_names, sniff
from embcli.locations import LocalFolder, Location

# Modules that declare `KINDS`, a list of `ArtifactKind`. Imported on first use only.
FORMAT_MODULES = (
    "embcli.formats.tf_kinds",
    "embcli.formats.preset",
    "embcli.formats.keras3",
    "embcli.formats.legacy_h5",
)
HDF5_USERBLOCK_OFFSETS = (512, 1024, 2048, 4096)


class Probe:
    """What a path holds, read lazily and at most once: enough to tell its kind."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @cached_property
    def exists(self) -> bool:
        return self.path.exists()

    @cached_property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    @cached_property
    def head(self) -> bytes:
        """The first 8 bytes of a file; empty for a folder."""
        if not self.exists or self.is_dir:
            return b""
        return sniff(self.path)

    @cached_property
    def is_hdf5(self) -> bool:
        if self.head.startswith(HDF5_SIGNATURE):
            return True
        if not self.exists or self.is_dir:
            return False
        with open(self.path, "rb") as handle:
            for offset in HDF5_USERBLOCK_OFFSETS:
                handle.seek(offset)
                if handle.read(8) == HDF5_SIGNATURE:
                    return True
        return False

    @cached_property
    def h5_root_names(self) -> set[str]:
        return h5_root_names(self.path)

    @cached_property
    def folder(self) -> Location:
        """The folder the path names, where `is_dir`."""
        return LocalFolder(self.path)

    def has_file(self, name: str) -> bool:
        """Whether the folder holds a regular file `name` (a symbolic link does not count)."""
        return self.is_dir and self.folder.is_file(name)

    def has_sibling(self, suffix: str) -> bool:
        """Whether a regular file named as the path with `suffix` added exists beside it
        (a TensorFlow checkpoint prefix's `.index`)."""
        return Path(str(self.path) + suffix).is_file()


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of artifact.

    Attributes:
        name: the kind as users read it: "keras archive", "legacy h5", ...
        order: kinds are tried lowest first; a folder kind that is more specific than
            another (a SavedModel, a keras-hub preset) comes before it.
        recognises: whether a probed path is of this kind.
        opener: opens a path of this kind read-only.
        output_suffix: what a copy's name must end with, where Keras requires it.
        editable: whether copies can be written at all.
    """

    name: str
    order: int
    recognises: Callable[[Probe], bool]
    opener: Callable[[Path], ModelFile]
    output_suffix: str | None = None
    editable: bool = True


_kinds: list[ArtifactKind] | None = None


def kinds() -> list[ArtifactKind]:
    """Every registered kind, in the order they are tried."""
    global _kinds
    if _kinds is None:
        found: list[ArtifactKind] = []
        for module in FORMAT_MODULES:
            found.extend(importlib.import_module(module).KINDS)
        _kinds = sorted(found, key=lambda kind: kind.order)
    return _kinds


def detect(path: str | os.PathLike) -> ArtifactKind:
    """The kind of artifact `path` holds, judged by its content more than by its name."""
    return kind_of(Probe(Path(path)), str(path))


def kind_of(probe: Probe, path: str | None = None) -> ArtifactKind:
    """The kind of artifact a probe (of a local path, or of an object at a URL) shows."""
    path = str(probe.path) if path is None else path
    for kind in kinds():
        if kind.recognises(probe):
            return kind
    if not probe.exists:
        raise UnsupportedFormat(f"{path}: no such file or folder")
    if probe.is_dir:
        raise UnsupportedFormat(f"{path}: a folder that holds no Keras or TensorFlow model")
    if not probe.head:
        raise MalformedFile(f"{path}: the file is empty")
    raise UnsupportedFormat(f"{path}: not a Keras or TensorFlow model file")
