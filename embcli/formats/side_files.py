"""Small files beside a model's weights, read only when asked for: a folder's tokenizer
configs and assets (a keras-hub preset's, an unzipped model's). Symbolic links are never
followed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from embcli.errors import UnsafeFile

ASSETS_DIRNAME = "assets"
TOKENIZER_CONFIG_FILE = "tokenizer.json"
# The tokenizer's own config, and the preprocessor's and task's that serialize it too.
TOKENIZER_CONFIGS = (TOKENIZER_CONFIG_FILE, "preprocessor.json", "task.json")
SMALL_FILE_LIMIT = 256 * 1024 * 1024


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


def is_plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def folder_tokenizer_files(folder: Path) -> LazyFiles:
    """A model folder's tokenizer configs (its own, and the preprocessor's and task's that
    serialize it too) and assets; symbolic links are left out."""
    names = [name for name in TOKENIZER_CONFIGS if is_plain_file(folder / name)]
    assets = folder / ASSETS_DIRNAME
    if assets.is_dir() and not assets.is_symlink():
        for item in sorted(assets.rglob("*")):
            relative = item.relative_to(folder)
            if is_plain_file(item) and not any(
                (folder / Path(*relative.parts[:end])).is_symlink()
                for end in range(1, len(relative.parts))
            ):
                names.append(relative.as_posix())
    return LazyFiles(names, lambda name: read_small(folder / name))


def read_small(path: Path, limit: int = SMALL_FILE_LIMIT) -> bytes:
    """A file's bytes, refused when it is larger than `limit`."""
    if path.stat().st_size > limit:
        raise UnsafeFile(f"{path} is larger than {limit} bytes")
    return path.read_bytes()
