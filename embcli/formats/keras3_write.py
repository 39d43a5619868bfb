"""Writing Keras 3 artifacts: row patches in place of the bytes they replace (with the
archive member's CRC-32), and rewrites for edits that reshape weights, change the config
or replace assets. `Keras3File` (in `keras3`) mixes this in."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embcli.errors import MalformedFile, UnsafeFile, UnsupportedEdit
from embcli.formats.base import (
    Edit,
    FilePlan,
    H5Source,
    NewWeight,
    WritePlan,
    ZipMemberChecksums,
)

if TYPE_CHECKING:
    from embcli.formats.keras3_tables import _Owner

CONFIG_FILENAME = "config.json"
WEIGHTS_FILENAME = "model.weights.h5"
ASSETS_DIRNAME = "assets"
SHARD_MAP_KEY = "weight_map"
SHARDED_SUFFIX = ".weights.json"


class Keras3Writing:
    """The write side of `Keras3File`."""

    path: Path
    kind: str
    _fd: int | None
    _archive: zipfile.ZipFile | None
    _member: zipfile.ZipInfo | None
    _member_offset: int | None
    _spill: Any
    _config_indent: int | None
    _shard_map: dict | None
    _sources: dict[str, H5Source]
    _location: dict[str, str]
    _owners: dict[str, _Owner]

    def _source(self, weight: str) -> tuple[H5Source, str]:
        raise NotImplementedError

    @property
    def _zip(self) -> zipfile.ZipFile:
        if self._archive is None:
            raise UnsupportedEdit(f"{self.path} is not an archive")
        return self._archive

    @property
    def _zip_member(self) -> zipfile.ZipInfo:
        if self._member is None:
            raise UnsupportedEdit(f"{self.path} is not an archive")
        return self._member

    @property
    def _open_fd(self) -> int:
        if self._fd is None:
            raise UnsupportedEdit(f"{self.path} is not open")
        return self._fd

    def plan_write(self, output, patches, in_place) -> WritePlan:
        by_source: dict[str, list[tuple[int, bytes]]] = {}
        checks: dict[str, list] = {}
        for weight, (rows, values) in patches.items():
            source, path = self._source(weight)
            key = self._location[weight.strip("/")]
            by_source.setdefault(key, []).extend(source.patches(path, rows, values))
            checks.setdefault(key, []).append((path, rows, values))
        if self.kind == "archive":
            return self._plan_archive(output, by_source.get("", []), checks.get("", []))
        if self.kind == "weights":
            plan = FilePlan(
                output, self.path, patches=by_source.get("", []), checks=checks.get("", [])
            )
            return WritePlan(output, [plan])
        if self.kind in ("folder", "preset"):
            return self._plan_folder(output, by_source, checks, in_place)
        return self._plan_sharded(output, by_source, checks, in_place)

    def plan_edit(self, output: Path, edit: Edit, in_place: bool) -> WritePlan:
        if edit.only_rows:
            return self.plan_write(output, edit.rows, in_place)
        if edit.rows:
            raise UnsupportedEdit("an edit that reshapes weights rewrites them whole")
        by_source: dict[str, dict[str, NewWeight]] = {}
        for weight, new in edit.weights.items():
            path = weight.strip("/")
            key = self._location.get(path)
            if key is None:
                key = self._shard_for_new_weight(path)
            by_source.setdefault(key, {})[self._in_file(path)] = new
        checks: dict[str, list] = {}
        for weight, rows, expected in edit.checks:
            key = self._location.get(weight.strip("/"), next(iter(by_source), ""))
            checks.setdefault(key, []).append((self._in_file(weight), rows, expected))
        config = self._config_bytes(edit.config) if edit.config is not None else None
        if self.kind == "archive":
            rebuild = self._rewrite_archive(by_source.get("", {}), config, edit.assets)
            return WritePlan(
                output, [FilePlan(output, self.path, checks=checks.get("", []), rebuild=rebuild)]
            )
        if self.kind == "weights":
            plan = FilePlan(
                output,
                self.path,
                checks=checks.get("", []),
                rebuild=self._rewrite("", by_source.get("", {})),
            )
            return WritePlan(output, [plan])
        if self.kind in ("folder", "preset"):
            return self._plan_folder_edit(output, by_source, config, edit, checks)
        return self._plan_sharded_edit(output, by_source, checks, in_place)

    def _shard_for_new_weight(self, path: str) -> str:
        """The file that gets a weight the edit adds: the one holding its siblings."""
        parent = path.rsplit("/", 1)[0]
        for existing, key in self._location.items():
            if existing.rsplit("/", 1)[0] == parent:
                return key
        raise UnsupportedEdit(f"{path}: embcli can only add a weight beside others")

    def _rewrite(self, key: str, weights: dict[str, NewWeight]):
        source = self._sources[key]

        def write(target: Path) -> None:
            from embcli.formats.h5rewrite import rewrite_h5

            rewrite_h5(source.handle, target, weights)

        return write

    def _config_bytes(self, config: dict) -> bytes:
        """The new config.json, laid out as the old one was (Keras writes it on one line;
        keras-hub indents it)."""
        indent = self._config_indent
        return json.dumps(config, indent=indent).encode() if indent else json.dumps(config).encode()

    def _rewrite_archive(self, weights: dict[str, NewWeight], config: bytes | None, assets):
        """Write a new archive: every member in its order and with its metadata, the
        weights member rewritten, config.json and the edited assets replaced."""
        replaced = {f"{ASSETS_DIRNAME}/{name}": data for name, data in assets.items()}
        if config is not None:
            replaced[CONFIG_FILENAME] = config
        for name in replaced:
            if name not in self._zip.namelist():
                raise UnsupportedEdit(f"the archive has no {name} to replace")
        source = self._sources[""]

        def write(target: Path) -> None:
            from embcli.formats.h5rewrite import rewrite_h5

            weights_file = target.with_name(target.name + ".weights")
            if weights:
                rewrite_h5(source.handle, weights_file, weights)
            try:
                with zipfile.ZipFile(target, "w", allowZip64=True) as out:
                    for info in self._zip.infolist():
                        copy = _copy_info(info)
                        large = info.file_size > 1 << 31
                        with out.open(copy, "w", force_zip64=large) as dst:
                            if info is self._member and weights:
                                with open(weights_file, "rb") as src:
                                    shutil.copyfileobj(src, dst, 1 << 20)
                            elif info.filename in replaced:
                                dst.write(replaced[info.filename])
                            else:
                                with self._zip.open(info) as src:
                                    shutil.copyfileobj(src, dst, 1 << 20)
            finally:
                weights_file.unlink(missing_ok=True)

        return write

    def _in_file(self, path: str) -> str:
        raise NotImplementedError

    def _folder_files(self) -> dict[str, Path]:
        """Each weights source's file, relative to the folder, by source key."""
        return {"": Path(WEIGHTS_FILENAME)}

    def _plan_folder_edit(self, output, by_source, config, edit: Edit, checks) -> WritePlan:
        replaced = {Path(ASSETS_DIRNAME) / name: data for name, data in edit.assets.items()}
        if config is not None:
            replaced[Path(CONFIG_FILENAME)] = config
        replaced.update({Path(name): data for name, data in edit.files.items()})
        keys = {relative: key for key, relative in self._folder_files().items()}
        files = []
        for source in sorted(self.path.rglob("*")):
            if source.is_symlink():
                raise UnsafeFile(f"{source}: symbolic links in a model folder are refused")
            if not source.is_file():
                continue
            relative = source.relative_to(self.path)
            target = output / relative
            key = keys.get(relative)
            if key is not None and by_source.get(key):
                files.append(
                    FilePlan(
                        target,
                        source,
                        checks=checks.get(key),
                        rebuild=self._rewrite(key, by_source[key]),
                    )
                )
            elif relative in replaced:
                files.append(FilePlan(target, content=replaced.pop(relative)))
            else:
                files.append(FilePlan(target, source))
        if replaced:
            raise UnsupportedEdit(f"the folder has no {', '.join(map(str, replaced))} to replace")
        return WritePlan(output, files, folder=output)

    def _plan_sharded_edit(self, output, by_source, checks, in_place) -> WritePlan:
        plan = self._plan_sharded(output, {}, {}, in_place=False) if not in_place else None
        targets = (
            {key: item.target for key, item in zip(self._sources, plan.files, strict=False)}
            if plan is not None
            else {key: self.path.parent / key for key in self._sources}
        )
        files = []
        for key, source in self._sources.items():
            if key in by_source:
                files.append(
                    FilePlan(
                        targets[key],
                        source.path,
                        checks=checks.get(key),
                        rebuild=self._rewrite(key, by_source[key]),
                    )
                )
            elif plan is not None:
                files.append(FilePlan(targets[key], source.path))
        if plan is not None:
            files.append(plan.files[-1])
        return WritePlan(output, files)

    def _plan_archive(self, output, patches, checks) -> WritePlan:
        info = self._zip_member
        offset = self._member_offset
        if offset is None:
            return WritePlan(
                output,
                [
                    FilePlan(
                        output, self.path, checks=checks, rebuild=self._rebuild_archive(patches)
                    )
                ],
            )
        fd = self._open_fd
        crc_offsets = [info.header_offset + 14, self._central_entry_offset(info) + 16]
        if info.flag_bits & 0x8:
            end = offset + info.compress_size
            signature = os.pread(fd, 4, end)
            crc_offsets.append(end + 4 if signature == b"PK\x07\x08" else end)
        member = ZipMemberChecksums(offset, info.file_size, info.CRC, tuple(crc_offsets))
        return WritePlan(
            output, [FilePlan(output, self.path, patches=patches, zip_member=member, checks=checks)]
        )

    def _central_entry_offset(self, target: zipfile.ZipInfo) -> int:
        archive = self._zip
        position = archive.start_dir
        for info in archive.infolist():
            header = os.pread(self._open_fd, 46, position)
            if header[:4] != b"PK\x01\x02":
                raise MalformedFile(f"{self.path}: bad central directory")
            if info is target:
                return position
            lengths = [int.from_bytes(header[i : i + 2], "little") for i in (28, 30, 32)]
            position += 46 + sum(lengths)
        raise MalformedFile(f"{self.path}: {target.filename} missing from the central directory")

    def _rebuild_archive(self, patches):
        """Write a copy of a compressed archive, re-compressing only the weights member."""

        def write(target: Path) -> None:
            import tempfile

            spill = self._spill
            with zipfile.ZipFile(target, "w") as out:
                for info in self._zip.infolist():
                    if info is self._zip_member:
                        with tempfile.TemporaryFile(prefix="embcli-") as edited:
                            spill.seek(0)
                            shutil.copyfileobj(spill, edited, 1 << 20)
                            for offset, data in patches:
                                edited.seek(offset)
                                edited.write(data)
                            edited.seek(0)
                            with out.open(
                                _copy_info(info), "w", force_zip64=info.file_size > 1 << 31
                            ) as dst:
                                shutil.copyfileobj(edited, dst, 1 << 20)
                    else:
                        with (
                            self._zip.open(info) as src,
                            out.open(_copy_info(info), "w") as dst,
                        ):
                            shutil.copyfileobj(src, dst, 1 << 20)

        return write

    def _plan_folder(self, output, by_source, checks, in_place) -> WritePlan:
        changed = {
            self.path / relative: FilePlan(
                output / relative,
                self.path / relative,
                patches=by_source.get(key, []),
                checks=checks.get(key, []),
            )
            for key, relative in self._folder_files().items()
            if key in by_source or (key == "" and not by_source)
        }
        if in_place:
            return WritePlan(output, list(changed.values()))
        files = []
        for source in sorted(self.path.rglob("*")):
            if source.is_symlink():
                raise UnsafeFile(f"{source}: symbolic links in a model folder are refused")
            if source.is_file() and source not in changed:
                files.append(FilePlan(output / source.relative_to(self.path), source))
        return WritePlan(output, files + list(changed.values()), folder=output)

    def _plan_sharded(self, output, by_source, checks, in_place) -> WritePlan:
        if in_place:
            plans = [
                FilePlan(
                    self.path.parent / key,
                    self._sources[key].path,
                    patches=by_source[key],
                    checks=checks.get(key, []),
                )
                for key in by_source
            ]
            return WritePlan(output, plans)
        if not output.name.endswith(".weights.json"):
            raise UnsupportedEdit("a copy of sharded weights must be named *.weights.json")
        renamed = {
            key: shard_rename(key, self.path.name, output.name, i)
            for i, key in enumerate(self._sources)
        }
        plans = [
            FilePlan(
                output.parent / renamed[key],
                source.path,
                patches=by_source.get(key, []),
                checks=checks.get(key, []),
            )
            for key, source in self._sources.items()
        ]
        index = dict(self._shard_map or {})
        index[SHARD_MAP_KEY] = {
            k: ([renamed[s] for s in v] if isinstance(v, list) else renamed.get(v, v))
            for k, v in index.get(SHARD_MAP_KEY, {}).items()
        }
        plans.append(FilePlan(output, content=json.dumps(index, indent=4).encode()))
        return WritePlan(output, plans)


def shard_rename(shard: str, old_index: str, new_index: str, position: int) -> str:
    """A shard's name for a copy whose index is `new_index`."""
    old_stem = old_index[: -len(".weights.json")]
    new_stem = new_index[: -len(".weights.json")]
    if shard.startswith(old_stem + "_"):
        return new_stem + shard[len(old_stem) :]
    return f"{new_stem}_{position:05d}.weights.h5"


def _copy_info(info: zipfile.ZipInfo) -> zipfile.ZipInfo:
    copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
    copy.compress_type = info.compress_type
    copy.external_attr = info.external_attr
    copy.comment = info.comment
    copy.create_system = info.create_system
    return copy
