"""Writing a new HDF5 file in which some datasets have another shape.

HDF5 cannot resize a contiguous dataset in place, so a resize writes a new file: every
object that the edit does not touch is copied with HDF5's own object copy (values, dtype,
creation properties and attributes as they were), the groups on the way to a replaced
dataset are recreated with their attributes, and each replaced dataset is created with
its old dtype and attributes and filled block by block, never whole in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embcli.errors import MalformedFile, UnsupportedEdit
from embcli.formats.base import NewWeight
from embcli.guarded import H5_ERRORS


def rewrite_h5(
    source: h5py.File,
    target: Path,
    replacements: Mapping[str, NewWeight],
    root_attributes: Mapping[str, str] | None = None,
) -> None:
    """Write `source` to `target` with each dataset path in `replacements` written anew.

    A replacement for a path the file lacks adds the dataset (its groups too).
    `root_attributes` sets text attributes of the root (a legacy file's `model_config`).
    """
    wanted = {path.strip("/"): weight for path, weight in replacements.items()}
    try:
        with h5py.File(target, "w", libver=source.libver, track_order=_tracks_order(source)) as out:
            _copy_attributes(source, out)
            for name, value in (root_attributes or {}).items():
                _set_text_attribute(out, name, value)
            _copy_group(source, out, "", wanted)
            for path in sorted(set(wanted) - _datasets_written(out, wanted)):
                parent, _, leaf = path.rpartition("/")
                group = out.require_group(parent) if parent else out
                _write_dataset(group, leaf, wanted[path], attributes_from=None)
    except H5_ERRORS as exc:
        raise MalformedFile(f"cannot rewrite the weights file ({exc})") from None


def _tracks_order(group: h5py.Group) -> bool:
    flags = group.id.get_create_plist().get_link_creation_order()
    return bool(flags & h5py.h5p.CRT_ORDER_TRACKED)


def _datasets_written(out: h5py.File, wanted: Mapping[str, NewWeight]) -> set[str]:
    return {path for path in wanted if isinstance(out.get(path), h5py.Dataset)}


def _copy_group(source: h5py.Group, out: h5py.Group, prefix: str, wanted: Mapping) -> None:
    for name in source:
        path = f"{prefix}{name}"
        link = source.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise UnsupportedEdit(f"{path}: links are not copied")
        child = source[name]
        if path in wanted:
            if not isinstance(child, h5py.Dataset):
                raise UnsupportedEdit(f"{path} is a group, not a weight")
            _write_dataset(out, name, wanted[path], attributes_from=child)
        elif isinstance(child, h5py.Group) and any(w.startswith(path + "/") for w in wanted):
            group = out.create_group(name, track_order=_tracks_order(child))
            _copy_attributes(child, group)
            _copy_group(child, group, path + "/", wanted)
        else:
            source.copy(child, out, name=name)


def _copy_attributes(source: h5py.HLObject, out: h5py.HLObject) -> None:
    for name in source.attrs:
        attribute = source.attrs.get_id(name)
        out.attrs.create(name, source.attrs[name], dtype=attribute.dtype)


def _set_text_attribute(out: h5py.HLObject, name: str, value: str) -> None:
    existing = out.attrs.get_id(name).dtype if name in out.attrs else None
    if existing is not None and existing.kind == "S":
        out.attrs[name] = np.bytes_(value.encode("utf-8"))
    else:
        out.attrs[name] = value


def _write_dataset(
    group: h5py.Group, name: str, weight: NewWeight, attributes_from: h5py.Dataset | None
) -> None:
    file_dtype = attributes_from.dtype if attributes_from is not None else _file_dtype(weight)
    dataset = group.create_dataset(name, shape=weight.shape, dtype=file_dtype)
    if attributes_from is not None:
        _copy_attributes(attributes_from, dataset)
    elif weight.dtype.name == "bfloat16":
        dataset.attrs["dtype"] = "bfloat16"
    start = 0
    for block in weight.blocks():
        block = np.ascontiguousarray(block)
        stop = start + len(block)
        if stop > weight.shape[0] or block.shape[1:] != tuple(weight.shape[1:]):
            raise UnsupportedEdit(f"{name}: new values do not fit the shape {weight.shape}")
        if stop > start:
            dataset[start:stop] = _as_file_values(block, file_dtype)
        start = stop
    if start != weight.shape[0]:
        raise UnsupportedEdit(f"{name}: {start} rows written of {weight.shape[0]}")


def _file_dtype(weight: NewWeight) -> np.dtype:
    if weight.dtype.name == "bfloat16":
        return np.dtype("V2")
    return np.dtype(weight.dtype)


def _as_file_values(block: np.ndarray, file_dtype: Any) -> np.ndarray:
    """Stored values in the file's own representation: bfloat16 as opaque 2-byte values,
    other dtypes as they are (big-endian files get big-endian values)."""
    file_dtype = np.dtype(file_dtype)
    if file_dtype.kind == "V":
        return block.view(np.uint8).reshape(*block.shape, -1).view(file_dtype)[..., 0]
    return block.astype(file_dtype, copy=False)
