"""embcli: read and edit the embedding tables of saved Keras and TensorFlow models.

Example:
    >>> import embcli
    >>> with embcli.open("model.keras") as model:
    ...     print(list(model.tables))
    ...     vectors = model.read("words", [0, 5, -1])
    >>> embcli.assign("model.keras", "words", rows=[3], values=vectors[:1], output="new.keras")

Importing embcli is cheap: the library (numpy, h5py) loads on first use of a name below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embcli.errors import EmbcliError

__version__ = "0.2.0"

__all__ = [
    "AssignResult",
    "EmbcliError",
    "Model",
    "OutputBias",
    "Table",
    "__version__",
    "assign",
    "errors",
    "open",
    "recover",
    "remap",
    "rename_tokens",
    "resize",
]

_LAZY = {
    "open": "embcli.api",
    "assign": "embcli.api",
    "recover": "embcli.api",
    "Model": "embcli.api",
    "AssignResult": "embcli.api",
    "OutputBias": "embcli.model",
    "Table": "embcli.formats.base",
    "resize": "embcli.resizing",
    "remap": "embcli.remapping",
    "rename_tokens": "embcli.remapping",
}

if TYPE_CHECKING:
    from embcli.api import AssignResult, Model, assign, open, recover
    from embcli.formats.base import Table
    from embcli.model import OutputBias
    from embcli.remapping import remap, rename_tokens
    from embcli.resizing import resize


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'embcli' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
