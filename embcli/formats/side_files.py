"""Small files beside a model's weights, read only when asked for: a folder's tokenizer
configs and assets (a keras-hub preset's, an unzipped model's). Symbolic links are never
followed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from embcli.locations import LocalFolder, Location

ASSETS_DIRNAME = "assets"
TOKENIZER_CONFIG_FILE = "tokenizer.json"
# The tokenizer's own config, and the preprocessor's and task's that serialize it too.
TOKENIZER_CONFIGS = (TOKENIZER_CONFIG_FILE, "preprocessor.json", "task.json")
# Where keras-hub's `save_to_preset` puts a tokenizer's vocabulary (the directory is
# named after the tokenizer's `config_file`, `tokenizer.json` by default).
PRESET_TOKENIZER_ASSETS = tuple(
    f"{ASSETS_DIRNAME}/tokenizer/{name}"
    for name in ("vocabulary.spm", "vocabulary.json", "vocabulary.txt", "merges.txt")
)


class LazyFiles(Mapping[str, bytes]):
    """File names known up front, contents read on first look-up."""

    def __init__(self, names: list[str], read: Callable[[str], bytes]) -> None:
        self._names = list(dict.fromkeys(names))
        self._read = read
        self._cache: dict[str, bytes] = {}

    def __getitem__(self, name: str) -> bytes:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._cache:
            self._cache[name] = self._read(name)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class ProbedFiles(Mapping[str, bytes]):
    """The side files of a folder that cannot be listed (one at a URL): a name is looked
    for when it is asked about, and read when it is looked up. Iterating gives the
    `expected` names that are there."""

    def __init__(self, folder: Location, expected: list[str]) -> None:
        self._folder = folder
        self._expected = list(dict.fromkeys(expected))
        self._cache: dict[str, bytes] = {}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._folder.is_file(name)

    def __getitem__(self, name: str) -> bytes:
        if name not in self:
            raise KeyError(name)
        if name not in self._cache:
            self._cache[name] = self._folder.read(name)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter([name for name in self._expected if name in self])

    def __len__(self) -> int:
        return len(list(iter(self)))


def folder_tokenizer_files(folder: Location | Path) -> Mapping[str, bytes]:
    """A model folder's tokenizer configs (its own, and the preprocessor's and task's that
    serialize it too) and assets; symbolic links are left out. A folder that cannot be
    listed gives keras-hub's own names for the tokenizer's assets, looked for when asked."""
    if isinstance(folder, Path):
        folder = LocalFolder(folder)
    assets = folder.files_under(ASSETS_DIRNAME)
    if assets is None:
        return ProbedFiles(folder, [*TOKENIZER_CONFIGS, *PRESET_TOKENIZER_ASSETS])
    names = [name for name in TOKENIZER_CONFIGS if folder.is_file(name)]
    at = folder
    return LazyFiles(names + assets, lambda name: at.read(name))
