"""Fingerprints of every part of a model artifact, to prove an edit changed nothing else."""

import hashlib
import io
import zipfile
from pathlib import Path

import h5py
import numpy as np


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _attr_bytes(value) -> bytes:
    if isinstance(value, np.ndarray):
        return (
            value.dtype.str.encode()
            + repr(value.shape).encode()
            + (repr(value.tolist()).encode() if value.dtype.hasobject else value.tobytes())
        )
    return repr(value).encode()


def h5_digest(source, prefix: str = "") -> dict[str, str]:
    digest: dict[str, str] = {}
    with h5py.File(source, "r") as handle:
        for key, value in handle.attrs.items():
            digest[f"{prefix}/@{key}"] = _sha(_attr_bytes(value))

        def visit(name, obj):
            for key, value in obj.attrs.items():
                digest[f"{prefix}{name}@{key}"] = _sha(_attr_bytes(value))
            if isinstance(obj, h5py.Dataset):
                digest[f"{prefix}{name}"] = _sha(
                    np.asarray(obj[()]).tobytes() + obj.dtype.str.encode()
                )
            else:
                digest[f"{prefix}{name}/"] = "group"

        handle.visititems(visit)
    return digest


def archive_digest(path: Path) -> dict[str, str]:
    digest: dict[str, str] = {}
    with zipfile.ZipFile(path) as archive:
        digest["order"] = _sha(repr(archive.namelist()).encode())
        for info in archive.infolist():
            meta = (
                info.date_time,
                info.compress_type,
                info.external_attr,
                info.flag_bits,
                info.create_system,
                info.extra,
                info.comment,
            )
            digest[f"zip:{info.filename}:meta"] = _sha(repr(meta).encode())
            data = archive.read(info)
            if info.filename.endswith(".h5"):
                digest.update(h5_digest(io.BytesIO(data), prefix=f"{info.filename}:"))
            else:
                digest[f"zip:{info.filename}"] = _sha(data)
    return digest


def artifact_digest(path: Path) -> dict[str, str]:
    """Every member, file, dataset and attribute of an artifact, by a stable key."""
    path = Path(path)
    if path.is_dir():
        digest = {}
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            relative = file.relative_to(path).as_posix()
            if file.suffix == ".h5":
                digest.update(h5_digest(file, prefix=f"{relative}:"))
            else:
                digest[relative] = _sha(file.read_bytes())
        return digest
    if zipfile.is_zipfile(path):
        return archive_digest(path)
    if path.name.endswith(".weights.json"):
        import json

        index = json.loads(path.read_text())
        digest = {"index": _sha(repr(sorted(index["weight_map"].items())).encode())}
        for shard in sorted(
            {s for v in index["weight_map"].values() for s in ([v] if isinstance(v, str) else v)}
        ):
            digest.update(h5_digest(path.parent / shard, prefix="shard:"))
        return digest
    return h5_digest(path, prefix=":")


def changed_keys(before: dict, after: dict) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
