"""Write the corpus of malformed and hostile inputs that embcli must refuse, or read safely.

    python tests/corpus/make_corpus.py OUTDIR

Everything is generated here, with h5py, numpy and a small zip writer, in the layouts
Keras writes; nothing is a hand-edited binary. The layout of OUTDIR:

    corpus.json         the cases, as written by `build`
    cases/<name>/       one folder per case: the model (and its sidecars), and where
                        the commands write their outputs
    outside/            files that cases point at (link targets, VDS sources, external
                        raw data, shards named by absolute path). embcli must never open
                        any of them.

Each case says which commands run on it (`read`: layers, rows, export and assign;
`assign`: only assign, with `vectors` as `--from`), and whether embcli must refuse it
(`expect="refuse"`, with `reason`, a regular expression its message must match) or read it
(`expect="accept"`: a model that is unusual but safe, such as one with a Lambda layer).
A case's `marker` is a file that appears only if code from the case is run.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import marshal
import os
import random
import struct
import sys
import types
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

ROWS = 20
DIM = 4
TABLE_NAME = "words"
EVIL_MODULE = "embcli_corpus_evil"
KERAS_DATE = (1980, 1, 1, 0, 0, 0)
WEIGHTS_DATE = (2026, 1, 2, 3, 4, 6)
HDF5_MUTATIONS = (
    "external_link",
    "soft_link",
    "virtual_dataset",
    "external_storage",
    "shape_bomb_chunked",
    "shape_bomb_contiguous",
    "data_past_eof",
    "gzip_filter",
    "hard_link_twice",
    "global_heap_loop",
    "vlen_type_damaged",
)
HDF5_CONTAINERS = ("archive", "weights", "legacy")
BOMB_BYTES = 5 * (1 << 30)
BOMB_CHUNK = 1 << 20


@dataclass
class Case:
    """One corpus entry. Paths are relative to the corpus root."""

    name: str
    kind: str
    model: str
    files: list[str]
    expect: str = "refuse"
    reason: str = ""
    commands: str = "read"
    vectors: str | None = None
    marker: str | None = None
    output_suffix: str = ".keras"
    notes: str = ""
    extra: dict = field(default_factory=dict)


def table_values() -> np.ndarray:
    return np.random.default_rng(7).uniform(-1, 1, (ROWS, DIM)).astype(np.float32)


# Configs ------------------------------------------------------------------------------


def _layer(
    class_name: str, name: str, config: dict, inbound: str | None, module: str = "keras.layers"
) -> dict:
    nodes = []
    if inbound is not None:
        nodes = [
            {
                "args": [
                    {
                        "class_name": "__keras_tensor__",
                        "config": {
                            "shape": [None, 5],
                            "dtype": "float32",
                            "keras_history": [inbound, 0, 0],
                        },
                    }
                ],
                "kwargs": {},
            }
        ]
    return {
        "module": module,
        "class_name": class_name,
        "config": {"name": name, "trainable": True, "dtype": "float32", **config},
        "registered_name": None,
        "name": name,
        "inbound_nodes": nodes,
    }


def functional_config(extra_layer: dict | None = None, rows: int = ROWS, dim: int = DIM) -> dict:
    """A Keras 3 functional model: ids -> Embedding `words` [-> extra] -> pool -> Dense."""
    layers = [
        {
            "module": "keras.layers",
            "class_name": "InputLayer",
            "config": {
                "batch_shape": [None, 5],
                "dtype": "int32",
                "sparse": False,
                "ragged": False,
                "name": "ids",
                "optional": False,
            },
            "registered_name": None,
            "name": "ids",
            "inbound_nodes": [],
        },
        _layer(
            "Embedding",
            TABLE_NAME,
            {"input_dim": rows, "output_dim": dim, "mask_zero": False},
            "ids",
        ),
    ]
    previous = TABLE_NAME
    if extra_layer is not None:
        extra_layer["inbound_nodes"] = _layer("X", "x", {}, previous)["inbound_nodes"]
        layers.append(extra_layer)
        previous = extra_layer["name"]
    layers.append(
        _layer("GlobalAveragePooling1D", "pool", {"data_format": "channels_last"}, previous)
    )
    layers.append(_layer("Dense", "head", {"units": 2, "use_bias": True}, "pool"))
    return {
        "module": "keras.src.models.functional",
        "class_name": "Functional",
        "config": {
            "name": "corpus_model",
            "trainable": True,
            "layers": layers,
            "input_layers": ["ids", 0, 0],
            "output_layers": ["head", 0, 0],
        },
        "registered_name": "Functional",
        "build_config": {"input_shape": None},
        "compile_config": {},
    }


def lambda_code(marker: Path) -> str:
    """A Python lambda, serialised as Keras's `func_dump` does (base64 of marshalled
    bytecode), that creates `marker` when called and otherwise returns its input."""
    source = f"lambda v: (open({str(marker)!r}, 'w').write('ran'), v)[1]"
    module = compile(source, "<corpus>", "eval")
    code = next(c for c in module.co_consts if isinstance(c, types.CodeType))
    return base64.encodebytes(marshal.dumps(code)).decode("ascii")


def lambda_layer(marker: Path) -> dict:
    layer = _layer(
        "Lambda",
        "evil",
        {
            "function": {
                "class_name": "__lambda__",
                "config": {"code": lambda_code(marker), "defaults": None, "closure": None},
            },
            "arguments": {},
        },
        None,
    )
    return layer


def os_system_layer(marker: Path) -> dict:
    """A layer whose config names `os.system` and an importable-looking module in every
    place Keras would look one up."""
    command = f"touch {marker}"
    layer = _layer(
        "system",
        "shell",
        {
            "function": {
                "module": "os",
                "class_name": "system",
                "config": command,
                "registered_name": "os>system",
            },
            "activation": {
                "module": EVIL_MODULE,
                "class_name": "Payload",
                "config": {},
                "registered_name": f"{EVIL_MODULE}>Payload",
            },
        },
        None,
        module="os",
    )
    layer["registered_name"] = "os>system"
    return layer


# HDF5 ---------------------------------------------------------------------------------


def _keras3_tree(handle: h5py.File, values: np.ndarray) -> None:
    for group, name, arrays in (
        ("layers/input_layer", "ids", []),
        ("layers/embedding", TABLE_NAME, [values]),
        ("layers/global_average_pooling1d", "pool", []),
        (
            "layers/dense",
            "head",
            [np.full((values.shape[1], 2), 0.5, np.float32), np.zeros(2, np.float32)],
        ),
    ):
        vars_group = handle.create_group(f"{group}/vars")
        vars_group.attrs["name"] = name
        for index, array in enumerate(arrays):
            vars_group.create_dataset(str(index), data=array)
    handle.create_group("vars").attrs["name"] = "corpus_model"


def _legacy_tree(handle: h5py.File, values: np.ndarray, config: dict) -> str:
    handle.attrs["model_config"] = json.dumps(
        {
            "class_name": "Functional",
            "config": {
                "name": "corpus_model",
                "layers": [
                    {
                        "class_name": layer["class_name"],
                        "name": layer["name"],
                        "config": layer["config"],
                    }
                    for layer in config["config"]["layers"]
                ],
            },
        }
    )
    handle.attrs["keras_version"] = "2.15.0"
    handle.attrs["backend"] = "tensorflow"
    weights = handle.create_group("model_weights")
    layer_names = ["ids", TABLE_NAME, "pool", "head"]
    weights.attrs["layer_names"] = np.array([n.encode() for n in layer_names])
    weights.attrs["keras_version"] = "2.15.0"
    weights.attrs["backend"] = "tensorflow"
    layout = {
        "ids": [],
        TABLE_NAME: [("embeddings:0", values)],
        "pool": [],
        "head": [
            ("kernel:0", np.full((DIM, 2), 0.5, np.float32)),
            ("bias:0", np.zeros(2, np.float32)),
        ],
    }
    for layer, arrays in layout.items():
        group = weights.create_group(layer)
        group.attrs["weight_names"] = np.array(
            [f"{layer}/{w}".encode() for w, _ in arrays], dtype="S"
        )
        for weight, array in arrays:
            group.create_dataset(f"{layer}/{weight}", data=array)
    return f"model_weights/{TABLE_NAME}/{TABLE_NAME}/embeddings:0"


def write_h5(
    path: Path,
    container: str,
    mutation: str | None,
    outside: Path,
    values: np.ndarray | None = None,
    config: dict | None = None,
) -> None:
    """A Keras 3 weights file (`archive`/`weights`) or a legacy HDF5 model (`legacy`),
    with one mutation applied inside it."""
    values = table_values() if values is None else values
    with h5py.File(path, "w") as handle:
        if container == "legacy":
            table = _legacy_tree(handle, values, config or functional_config())
            parent = handle["model_weights/head"]
        else:
            _keras3_tree(handle, values)
            table = "layers/embedding/vars/0"
            parent = handle["layers/dense/vars"]
        if mutation is not None:
            _mutate_h5(handle, parent, table, mutation, outside, path.name)
    if mutation == "data_past_eof":
        _push_data_past_eof(path)
    if mutation == "global_heap_loop":
        _zero_first_heap_object(path)
    if mutation == "vlen_type_damaged":
        _damage_vlen_string_types(path)


def _mutate_h5(
    handle: h5py.File, parent: h5py.Group, table: str, mutation: str, outside: Path, tag: str
) -> None:
    if mutation == "external_link":
        target = outside / f"link_target_{tag}.h5"
        with h5py.File(target, "w") as other:
            other["data"] = table_values()
        parent["2"] = h5py.ExternalLink(str(target), "/data")
    elif mutation == "soft_link":
        parent["2"] = h5py.SoftLink("/" + table)
    elif mutation == "virtual_dataset":
        source = outside / f"vds_source_{tag}.h5"
        with h5py.File(source, "w") as other:
            other["data"] = table_values()
        layout = h5py.VirtualLayout(shape=(ROWS, DIM), dtype="f4")
        layout[:] = h5py.VirtualSource(str(source), "data", shape=(ROWS, DIM))
        parent.create_virtual_dataset("2", layout)
    elif mutation == "external_storage":
        raw = outside / f"external_raw_{tag}.bin"
        raw.write_bytes(table_values().tobytes())
        parent.create_dataset(
            "2", shape=(ROWS, DIM), dtype="f4", external=[(str(raw), 0, ROWS * DIM * 4)]
        )
    elif mutation == "shape_bomb_chunked":
        parent.create_dataset("2", shape=(10**6, 10**6), dtype="f4", chunks=(1, 1024))
    elif mutation == "shape_bomb_contiguous":
        space = h5py.h5s.create_simple((10**6, 10**6))
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_layout(h5py.h5d.CONTIGUOUS)
        plist.set_alloc_time(h5py.h5d.ALLOC_TIME_LATE)
        h5py.h5d.create(parent.id, b"2", h5py.h5t.IEEE_F32LE, space, dcpl=plist)
    elif mutation == "data_past_eof":
        parent.create_dataset("2", data=np.ones((PAST_EOF_ROWS, DIM), np.float32))
    elif mutation == "gzip_filter":
        parent.create_dataset("2", data=table_values(), compression="gzip")
    elif mutation == "hard_link_twice":
        parent["2"] = handle[table]
    elif mutation not in ("global_heap_loop", "vlen_type_damaged"):
        raise ValueError(mutation)


PAST_EOF_ROWS = 12345
PAST_EOF_DECLARED = 10**9


def _push_data_past_eof(path: Path) -> None:
    """Rewrite a contiguous dataset's declared rows (and its storage size) so that its
    data runs far past the end of the file, as a crafted file would."""
    with h5py.File(path, "r") as handle:
        dataset = next(ds for ds in _datasets(handle) if ds.shape == (PAST_EOF_ROWS, DIM))
        address = dataset.id.get_offset()
        size = dataset.id.get_storage_size()
    data = bytearray(path.read_bytes())
    old_dims = struct.pack("<QQ", PAST_EOF_ROWS, DIM)
    new_dims = struct.pack("<QQ", PAST_EOF_DECLARED, DIM)
    old_layout = struct.pack("<QQ", address, size)
    new_layout = struct.pack("<QQ", address, PAST_EOF_DECLARED * DIM * 4)
    if data.count(old_layout) != 1 or not data.count(old_dims):
        raise RuntimeError(f"cannot find the dataset's layout in {path}")
    path.write_bytes(bytes(data).replace(old_dims, new_dims).replace(old_layout, new_layout))


def _zero_first_heap_object(path: Path) -> None:
    """Zero the first object header of the file's first global heap collection (where
    variable-length strings such as layer names live): an object of index 0 and size 0,
    on which HDF5 1.14's collection reader loops forever."""
    data = bytearray(path.read_bytes())
    at = data.find(b"GCOL\x01")
    if at < 0:
        raise RuntimeError(f"{path} has no global heap")
    data[at + 16 : at + 32] = bytes(16)
    path.write_bytes(bytes(data))


VLEN_UTF8_STRING_TYPE = b"\x19\x01\x01\x00\x10\x00\x00\x00"


def _damage_vlen_string_types(path: Path) -> None:
    """Turn every variable-length UTF-8 string type (how h5py stores `str` attributes,
    such as layer names and `model_config`) into a variable-length type of the reserved
    kind 3, on reading which HDF5 1.14 crashes the process."""
    data = path.read_bytes()
    if VLEN_UTF8_STRING_TYPE not in data:
        raise RuntimeError(f"{path} has no variable-length string type")
    path.write_bytes(data.replace(VLEN_UTF8_STRING_TYPE, b"\x19\x03" + VLEN_UTF8_STRING_TYPE[2:]))


def _datasets(handle: h5py.File) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []
    handle.visititems(lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


# Zip ----------------------------------------------------------------------------------


@dataclass
class Member:
    """One zip member as written, byte for byte; sizes and CRC may lie on purpose."""

    name: str
    data: bytes
    method: int = 0
    crc: int | None = None
    file_size: int | None = None
    external_attr: int = 0o600 << 16
    date_time: tuple = KERAS_DATE


def _dos_time(date_time: tuple) -> tuple[int, int]:
    year, month, day, hour, minute, second = date_time
    return (hour << 11) | (minute << 5) | (second // 2), ((year - 1980) << 9) | (month << 5) | day


def write_zip(path: Path, members: list[Member]) -> None:
    """A zip archive, with zip64 fields where sizes need them. Unlike `zipfile`, it writes
    whatever it is given: traversal names, duplicates, symlinks, forged sizes."""
    out = bytearray()
    central = bytearray()
    for member in members:
        name = member.name.encode("utf-8")
        crc = zlib.crc32(member.data) if member.crc is None else member.crc
        size = len(member.data) if member.file_size is None else member.file_size
        csize = len(member.data)
        zip64 = size >= 0xFFFFFFFF or csize >= 0xFFFFFFFF
        version = 45 if zip64 else 20
        mtime, mdate = _dos_time(member.date_time)
        offset = len(out)
        local_extra = struct.pack("<HHQQ", 1, 16, size, csize) if zip64 else b""
        shown = (0xFFFFFFFF, 0xFFFFFFFF) if zip64 else (csize, size)
        out += struct.pack(
            "<4sHHHHHIIIHH",
            b"PK\x03\x04",
            version,
            0x800,
            member.method,
            mtime,
            mdate,
            crc,
            shown[0],
            shown[1],
            len(name),
            len(local_extra),
        )
        out += name + local_extra + member.data
        central += struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02",
            0x0300 | version,
            version,
            0x800,
            member.method,
            mtime,
            mdate,
            crc,
            shown[0],
            shown[1],
            len(name),
            len(local_extra),
            0,
            0,
            0,
            member.external_attr,
            offset,
        )
        central += name + (struct.pack("<HHQQ", 1, 16, size, csize) if zip64 else b"")
    start = len(out)
    out += central
    count = len(members)
    if count > 0xFFFF:
        end = len(out)
        out += struct.pack(
            "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(central), start
        )
        out += struct.pack("<4sIQI", b"PK\x06\x07", 0, end, 1)
        count = 0xFFFF
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, len(central), start, 0)
    path.write_bytes(bytes(out))


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def _gf2_times(matrix: list[int], vector: int) -> int:
    total = 0
    row = 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of A + B from those of A and B (zlib's crc32_combine)."""
    if length2 == 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]
    even = _gf2_square(odd)
    odd = _gf2_square(even)
    while True:
        even = _gf2_square(odd)
        if length2 & 1:
            crc1 = _gf2_times(even, crc1)
        length2 >>= 1
        if not length2:
            break
        odd = _gf2_square(even)
        if length2 & 1:
            crc1 = _gf2_times(odd, crc1)
        length2 >>= 1
        if not length2:
            break
    return crc1 ^ crc2


def repeated_deflate(head: bytes, chunk: bytes, count: int, tail: bytes) -> Member:
    """A real deflate stream of `head + chunk * count + tail`, built without ever holding
    the inflated bytes: full flushes make every chunk compress to the same bytes, so the
    stream repeats one compressed chunk, and the CRC-32 is combined the same way."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = start + block * count + end.compress(tail) + end.flush()
    crc = zlib.crc32(head)
    piece, piece_length, remaining = zlib.crc32(chunk), len(chunk), count
    repeated, repeated_length = 0, 0
    while remaining:
        if remaining & 1:
            repeated = crc32_combine(repeated, piece, piece_length)
            repeated_length += piece_length
        piece = crc32_combine(piece, piece, piece_length)
        piece_length *= 2
        remaining >>= 1
    crc = crc32_combine(crc, repeated, repeated_length)
    crc = crc32_combine(crc, zlib.crc32(tail), len(tail))
    size = len(head) + len(chunk) * count + len(tail)
    return Member("", stream, method=8, crc=crc, file_size=size)


def sparse_text_deflate(head: bytes, megabytes: int, tail: bytes) -> Member:
    """A real deflate stream of `head`, `megabytes` MB of spaces sprinkled with digits, and
    `tail`: it inflates some 500 times over, far, but not impossibly far (a zip bomb)."""
    scatter = random.Random(0)
    chunk = bytearray(b" " * (1 << 20))
    for _ in range(len(chunk) >> 11):
        chunk[scatter.randrange(len(chunk))] = ord("7")
    return repeated_deflate(head, bytes(chunk), megabytes, tail)


@functools.cache
def zero_bomb() -> Member:
    """A deflate stream that really inflates to BOMB_BYTES zero bytes."""
    return repeated_deflate(b"", bytes(BOMB_CHUNK), BOMB_BYTES // BOMB_CHUNK, b"")


def named(member: Member, name: str, **changes) -> Member:
    return dataclasses.replace(member, name=name, **changes)


def write_keras_archive(path: Path, values: np.ndarray) -> None:
    """A valid `.keras` archive, laid out as Keras writes it, whose table is `values`."""
    weights = path.with_name(path.name + ".weights.h5")
    write_h5(weights, "weights", None, path.parent, values=values)
    config = functional_config(rows=values.shape[0], dim=values.shape[1])
    write_zip(path, keras_members(config, weights.read_bytes()))
    weights.unlink()


def keras_members(config: dict | bytes, weights: bytes) -> list[Member]:
    text = config if isinstance(config, bytes) else json.dumps(config).encode()
    return [
        Member(
            "metadata.json",
            json.dumps({"keras_version": "3.15.1", "date_saved": "2026-01-02@03:04:05"}).encode(),
        ),
        Member("config.json", text),
        Member("model.weights.h5", weights, date_time=WEIGHTS_DATE),
    ]


# The corpus ---------------------------------------------------------------------------


class Writer:
    """Writes cases into `root/cases/<name>/` and collects their descriptions."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cases_dir = root / "cases"
        self.outside = root / "outside"
        self.scratch = root / "scratch"
        for folder in (self.cases_dir, self.outside, self.scratch):
            folder.mkdir(parents=True, exist_ok=True)
        self.cases: list[Case] = []

    def folder(self, name: str) -> Path:
        folder = self.cases_dir / name
        folder.mkdir()
        return folder

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def add(self, name: str, model: Path, files: list[Path] | None = None, **kwargs) -> Case:
        files = files if files is not None else [model]
        every = []
        for path in files:
            every.append(self.rel(path))
            if path.is_dir() and not path.is_symlink():
                for folder, dirs, names in os.walk(path):
                    every.extend(self.rel(Path(folder) / n) for n in sorted(dirs + names))
        case = Case(
            name=name,
            kind=kwargs.pop("kind", "archive"),
            model=self.rel(model),
            files=every,
            **kwargs,
        )
        self.cases.append(case)
        return case

    def weights_bytes(
        self,
        mutation: str | None = None,
        container: str = "archive",
        values: np.ndarray | None = None,
    ) -> bytes:
        path = self.scratch / f"{container}-{mutation}-{len(self.cases)}.h5"
        write_h5(path, container, mutation, self.outside, values)
        data = path.read_bytes()
        path.unlink()
        return data

    def archive(self, name: str, members: list[Member], **kwargs) -> Case:
        path = self.folder(name) / "model.keras"
        write_zip(path, members)
        return self.add(name, path, kind="archive", output_suffix=".keras", **kwargs)

    def raw(self, name: str, filename: str, data: bytes, **kwargs) -> Case:
        path = self.folder(name) / filename
        path.write_bytes(data)
        return self.add(name, path, **kwargs)


def build(root: str | os.PathLike) -> list[Case]:
    """Write the whole corpus into `root` and return its cases (also saved as
    `root/corpus.json`)."""
    w = Writer(Path(root))
    base_config = functional_config()
    good_weights = w.weights_bytes()

    _controls(w, base_config, good_weights)
    _files(w, base_config, good_weights)
    _archives(w, base_config, good_weights)
    _hdf5(w, base_config)
    _configs(w, base_config, good_weights)
    _shards_and_folders(w, base_config, good_weights)
    _vectors(w, base_config, good_weights)

    (w.root / "corpus.json").write_text(json.dumps([asdict(c) for c in w.cases], indent=1))
    return w.cases


def _controls(w: Writer, config: dict, weights: bytes) -> None:
    """The unmutated bases: each must be read and edited, so that every refusal below is
    due to its mutation alone."""
    w.archive("control_archive", keras_members(config, weights), expect="accept")
    folder = w.folder("control_weights")
    write_h5(folder / "model.weights.h5", "weights", None, w.outside)
    w.add(
        "control_weights",
        folder / "model.weights.h5",
        kind="weights",
        output_suffix=".weights.h5",
        expect="accept",
    )
    folder = w.folder("control_legacy")
    write_h5(folder / "model.h5", "legacy", None, w.outside)
    w.add(
        "control_legacy", folder / "model.h5", kind="legacy", output_suffix=".h5", expect="accept"
    )
    folder = w.folder("control_sharded")
    index = _write_shards(folder, "model", w.outside)
    w.add(
        "control_sharded",
        index,
        files=sorted(folder.iterdir()),
        kind="sharded",
        output_suffix=".weights.json",
        expect="accept",
    )
    folder = w.folder("control_folder")
    model = _write_model_folder(folder / "model", config, weights)
    w.add("control_folder", model, kind="folder", output_suffix="", expect="accept")


def _write_shards(folder: Path, stem: str, outside: Path, names: list[str] | None = None) -> Path:
    values = table_values()
    first, second = f"{stem}_00000.weights.h5", f"{stem}_00001.weights.h5"
    with h5py.File(folder / first, "w") as handle:
        vars_group = handle.create_group("layers/embedding/vars")
        vars_group.attrs["name"] = TABLE_NAME
        vars_group.create_dataset("0", data=values)
    with h5py.File(folder / second, "w") as handle:
        vars_group = handle.create_group("layers/dense/vars")
        vars_group.attrs["name"] = "head"
        vars_group.create_dataset("0", data=np.full((DIM, 2), 0.5, np.float32))
        vars_group.create_dataset("1", data=np.zeros(2, np.float32))
    names = names or [first, second]
    index = {
        "metadata": {"total_size": ROWS * DIM * 4},
        "weight_map": {
            "/layers/embedding/vars": names[0],
            "/layers/dense/vars": [names[1]] + names[2:],
        },
    }
    path = folder / f"{stem}.weights.json"
    path.write_text(json.dumps(index, indent=4))
    return path


def _write_model_folder(folder: Path, config: dict, weights: bytes) -> Path:
    folder.mkdir()
    for member in keras_members(config, weights):
        (folder / member.name).write_bytes(member.data)
    return folder


def _files(w: Writer, config: dict, weights: bytes) -> None:
    rng = np.random.default_rng(11)
    archive = w.scratch / "whole.keras"
    write_zip(archive, keras_members(config, weights))
    whole = archive.read_bytes()
    archive.unlink()
    legacy_path = w.scratch / "whole.h5"
    write_h5(legacy_path, "legacy", None, w.outside)
    legacy = legacy_path.read_bytes()
    legacy_path.unlink()

    w.raw("empty_file", "model.keras", b"", reason="empty")
    w.raw("empty_h5_name", "model.h5", b"", kind="legacy", output_suffix=".h5", reason="empty")
    w.raw("random_bytes", "model.keras", rng.bytes(4096), reason="not a Keras")
    w.raw(
        "random_after_zip_signature", "model.keras", b"PK\x03\x04" + rng.bytes(4096), reason="zip"
    )
    w.raw(
        "random_after_hdf5_signature",
        "model.h5",
        b"\x89HDF\r\n\x1a\n" + rng.bytes(4096),
        kind="legacy",
        output_suffix=".h5",
        reason="HDF5",
    )
    for fraction in (0.1, 0.5, 0.99):
        w.raw(
            f"truncated_archive_{int(fraction * 100)}",
            "model.keras",
            whole[: int(len(whole) * fraction)],
            reason="zip|truncated|end of the archive",
        )
    for fraction in (0.3, 0.9):
        w.raw(
            f"truncated_h5_{int(fraction * 100)}",
            "model.weights.h5",
            weights[: int(len(weights) * fraction)],
            kind="weights",
            output_suffix=".weights.h5",
            reason="HDF5|truncated|beyond",
        )
        w.raw(
            f"truncated_legacy_h5_{int(fraction * 100)}",
            "model.h5",
            legacy[: int(len(legacy) * fraction)],
            kind="legacy",
            output_suffix=".h5",
            reason="HDF5|truncated|beyond",
        )
    cut = int(len(weights) * 0.5)
    members = keras_members(config, weights[:cut])
    w.archive("truncated_weights_member", members, reason="HDF5|truncated|beyond")


def _archives(w: Writer, config: dict, weights: bytes) -> None:
    good = keras_members(config, weights)
    w.archive("no_weights_member", good[:2], reason="no model.weights.h5")
    w.archive(
        "config_not_json",
        keras_members(b'{"class_name": "Functional", "config": ', weights),
        reason="JSON",
    )
    w.archive("config_not_object", keras_members(b"[1, 2, 3]", weights), reason="JSON object")
    w.archive("config_not_utf8", keras_members(b'{"name": "\xff\xfe"}', weights), reason="JSON")
    w.archive(
        "config_deeply_nested",
        keras_members(b"[" * 200_000 + b"]" * 200_000, weights),
        reason="JSON",
    )
    members = keras_members(config, weights)
    members[1] = named(repeated_deflate(b'{"pad": "', b" " * BOMB_CHUNK, 300, b'"}'), "config.json")
    w.archive("config_huge", members, reason="larger than")
    for name, member_name in (
        ("member_traversal", "../evil"),
        ("member_traversal_nested", "assets/../../evil"),
        ("member_absolute", "/tmp/evil"),
        ("member_backslash", "assets\\..\\evil"),
        ("member_drive", "C:/evil"),
    ):
        w.archive(name, good + [Member(member_name, b"evil")], reason="unsafe name")
    w.archive(
        "member_duplicate_weights",
        good + [Member("model.weights.h5", weights, date_time=WEIGHTS_DATE)],
        reason="two members",
    )
    w.archive(
        "member_duplicate_config",
        good[:2] + [Member("config.json", b"{}")] + good[2:],
        reason="two members",
    )
    w.archive(
        "member_symlink",
        good + [Member("assets/vocabulary.txt", b"/etc/passwd", external_attr=(0o120777 << 16))],
        reason="symbolic link",
    )
    w.archive(
        "zip_bomb",
        good + [named(zero_bomb(), "assets/bomb.bin")],
        reason="zip bomb|inflate|decompress",
        notes="a real 5 GiB deflate stream",
    )
    forged = deflate(b"x" * 1000)
    w.archive(
        "zip_bomb_forged_size",
        good + [Member("assets/bomb.bin", forged, method=8, crc=0, file_size=(1 << 40))],
        reason="zip bomb|impossible size",
    )
    w.archive(
        "weights_member_deflated_bomb",
        good[:2] + [named(zero_bomb(), "model.weights.h5", date_time=WEIGHTS_DATE)],
        reason="zip bomb|inflate|decompress|larger than",
    )
    w.archive(
        "member_stored_size_mismatch",
        good + [Member("assets/x.bin", b"abc", file_size=10**6)],
        reason="inconsistent sizes|beyond",
    )
    w.archive(
        "weights_member_bzip2",
        good[:2] + [Member("model.weights.h5", weights, method=12)],
        reason="unsupported compression",
    )
    many = good + [Member(f"assets/{n}", b"") for n in range(100_001)]
    w.archive("too_many_members", many, reason="members")


def _hdf5(w: Writer, config: dict) -> None:
    """Every HDF5 mutation inside each container: a `.keras` weights member, a bare
    `.weights.h5`, a legacy `.h5`."""
    reasons = {
        "external_link": "external link",
        "soft_link": "soft link",
        "virtual_dataset": "virtual",
        "external_storage": "external storage",
        "shape_bomb_chunked": "shape bomb",
        "shape_bomb_contiguous": "shape bomb",
        "data_past_eof": "beyond the end|truncated|shape bomb|HDF5",
        "gzip_filter": "compressed or filtered",
        "hard_link_twice": "linked twice",
        "global_heap_loop": "global heap",
        "vlen_type_damaged": "neither text nor numbers",
    }
    for container in HDF5_CONTAINERS:
        for mutation in HDF5_MUTATIONS:
            name = f"h5_{mutation}_{container}"
            reason = reasons[mutation]
            if container == "archive":
                data = w.weights_bytes(mutation, "weights")
                w.archive(name, keras_members(config, data), reason=reason)
                continue
            folder = w.folder(name)
            filename = "model.weights.h5" if container == "weights" else "model.h5"
            write_h5(folder / filename, container, mutation, w.outside)
            w.add(
                name,
                folder / filename,
                kind=container,
                reason=reason,
                output_suffix=".weights.h5" if container == "weights" else ".h5",
            )
    for container in ("archive", "legacy"):
        name = f"wrong_rank_table_{container}"
        values = np.zeros((ROWS, DIM, 2), np.float32)
        if container == "archive":
            path = w.scratch / "rank.h5"
            write_h5(path, "weights", None, w.outside, values=values)
            w.archive(name, keras_members(config, path.read_bytes()), reason="dimension|rank|2-D")
            path.unlink()
        else:
            folder = w.folder(name)
            write_h5(folder / "model.h5", "legacy", None, w.outside, values=values)
            w.add(
                name,
                folder / "model.h5",
                kind="legacy",
                output_suffix=".h5",
                reason="dimension|rank|2-D",
            )


def _configs(w: Writer, config: dict, weights: bytes) -> None:
    lambda_folder = w.folder("lambda_bytecode")
    marker = lambda_folder / "LAMBDA_RAN"
    members = keras_members(functional_config(lambda_layer(marker)), weights)
    path = lambda_folder / "model.keras"
    write_zip(path, members)
    w.add(
        "lambda_bytecode",
        path,
        expect="accept",
        marker=w.rel(marker),
        notes="Keras runs this Lambda when it loads the model with safe_mode=False",
    )

    folder = w.folder("config_names_os_system")
    marker = folder / "SYSTEM_RAN"
    path = folder / "model.keras"
    write_zip(path, keras_members(functional_config(os_system_layer(marker)), weights))
    w.add(
        "config_names_os_system",
        path,
        expect="accept",
        marker=w.rel(marker),
        extra={"forbidden_imports": [EVIL_MODULE]},
    )

    folder = w.folder("legacy_config_names_os_system")
    marker = folder / "SYSTEM_RAN"
    write_h5(
        folder / "model.h5",
        "legacy",
        None,
        w.outside,
        config=functional_config(os_system_layer(marker)),
    )
    w.add(
        "legacy_config_names_os_system",
        folder / "model.h5",
        kind="legacy",
        output_suffix=".h5",
        expect="accept",
        marker=w.rel(marker),
        extra={"forbidden_imports": [EVIL_MODULE]},
    )

    folder = w.folder("legacy_config_not_json")
    write_h5(folder / "model.h5", "legacy", None, w.outside)
    with h5py.File(folder / "model.h5", "r+") as handle:
        handle.attrs["model_config"] = '{"class_name": '
    w.add(
        "legacy_config_not_json",
        folder / "model.h5",
        kind="legacy",
        output_suffix=".h5",
        reason="JSON",
    )

    folder = w.folder("legacy_config_deeply_nested")
    write_h5(folder / "model.h5", "legacy", None, w.outside)
    with h5py.File(folder / "model.h5", "r+") as handle:
        handle.attrs["model_config"] = "[" * 30_000 + "]" * 30_000
    w.add(
        "legacy_config_deeply_nested",
        folder / "model.h5",
        kind="legacy",
        output_suffix=".h5",
        reason="JSON",
    )

    w.archive(
        "config_inflates_past_bound",
        [
            named(sparse_text_deflate(b'{"pad": "', 70, b'"}'), "config.json")
            if member.name == "config.json"
            else member
            for member in keras_members(config, weights)
        ],
        reason="config.json.*larger than",
        notes="a small deflated config.json that inflates to 70 MB, below the zip-bomb ratio",
    )

    w.archive(
        "config_too_many_containers",
        keras_members(b'{"pad": [' + b"{}," * 1_100_000 + b"{}]}", weights),
        reason="JSON objects and arrays",
        notes="3 MB of `{}` that Python would build into a gigabyte of dicts",
    )

    nested = {"class_name": "Functional", "config": {"name": "n", "layers": []}}
    inner = nested
    for depth in range(300):
        layer = {
            "class_name": "Functional",
            "name": f"m{depth}",
            "config": {"name": f"m{depth}", "layers": []},
        }
        inner["config"]["layers"].append(layer)
        inner = layer
    w.archive(
        "config_nested_models_deep",
        keras_members(nested, weights),
        expect="accept",
        notes="valid JSON whose layers nest 300 models deep",
    )


def _shards_and_folders(w: Writer, config: dict, weights: bytes) -> None:
    outside_shard = w.outside / "outside_00000.weights.h5"
    _write_shards(w.scratch, "outside", w.outside)
    (w.scratch / "outside_00000.weights.h5").rename(outside_shard)
    for name, first in (
        ("shard_traversal", "../../etc/passwd"),
        ("shard_traversal_to_outside", "../../outside/outside_00000.weights.h5"),
        ("shard_absolute", "/etc/passwd"),
        ("shard_absolute_to_outside", str(outside_shard)),
        ("shard_backslash", "..\\..\\outside\\outside_00000.weights.h5"),
    ):
        folder = w.folder(name)
        index = _write_shards(folder, "model", w.outside, names=[first, "model_00001.weights.h5"])
        w.add(
            name,
            index,
            files=sorted(folder.iterdir()),
            kind="sharded",
            output_suffix=".weights.json",
            reason="unsafe",
        )
    folder = w.folder("shard_symlink")
    index = _write_shards(folder, "model", w.outside)
    (folder / "model_00000.weights.h5").unlink()
    (folder / "model_00000.weights.h5").symlink_to(outside_shard)
    w.add(
        "shard_symlink",
        index,
        files=sorted(folder.iterdir()),
        kind="sharded",
        output_suffix=".weights.json",
        reason="link|missing",
    )
    folder = w.folder("shard_index_not_json")
    index = _write_shards(folder, "model", w.outside)
    index.write_text('{"weight_map": ')
    w.add(
        "shard_index_not_json",
        index,
        files=sorted(folder.iterdir()),
        kind="sharded",
        output_suffix=".weights.json",
        reason="JSON",
    )
    folder = w.folder("shard_index_deeply_nested")
    index = _write_shards(folder, "model", w.outside)
    index.write_text("{" + '"a":[' * 100_000 + "]" * 100_000 + "}")
    w.add(
        "shard_index_deeply_nested",
        index,
        files=sorted(folder.iterdir()),
        kind="sharded",
        output_suffix=".weights.json",
        reason="JSON",
    )

    secret = w.outside / "secret_config.json"
    secret.write_text(json.dumps(config))
    outside_weights = w.outside / "outside_model.weights.h5"
    outside_weights.write_bytes(weights)
    (w.outside / "assets").mkdir()
    (w.outside / "assets" / "vocabulary.txt").write_text("secret")
    for name, member, target in (
        ("folder_weights_symlink", "model.weights.h5", outside_weights),
        ("folder_config_symlink", "config.json", secret),
        ("folder_assets_symlink", "assets", w.outside / "assets"),
    ):
        folder = w.folder(name)
        model = _write_model_folder(folder / "model", config, weights)
        link = model / member
        if link.exists():
            link.unlink()
        link.symlink_to(target)
        w.add(name, model, kind="folder", output_suffix="", reason="link|no model.weights.h5")


def _vectors(w: Writer, config: dict, weights: bytes) -> None:
    """Bad `assign --from` files, each next to a good copy of the base model."""

    def case(
        name: str,
        filename: str,
        data: bytes | None = None,
        reason: str = "",
        marker: Path | None = None,
        write=None,
    ) -> None:
        folder = w.folder(name)
        model = folder / "model.keras"
        write_zip(model, keras_members(config, weights))
        vectors = folder / filename
        if write is not None:
            write(vectors)
        else:
            vectors.write_bytes(data)
        w.add(
            name,
            model,
            commands="assign",
            vectors=w.rel(vectors),
            reason=reason,
            marker=w.rel(marker) if marker else None,
        )

    def pickled(marker: Path) -> np.ndarray:
        array = np.empty((1, DIM), dtype=object)
        array[0, 0] = OpenOnUnpickle(str(marker))
        array[0, 1:] = 1.0
        return array

    def npy_header(header: dict, version: tuple[int, int] = (1, 0), pad: int = 0) -> bytes:
        text = repr(header).encode("latin1") + b" " * pad + b"\n"
        if version == (1, 0):
            return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text
        return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(text)) + text

    marker = w.cases_dir / "vectors_pickle_npy" / "UNPICKLED"
    case(
        "vectors_pickle_npy",
        "vectors.npy",
        marker=marker,
        reason="object|plain numbers",
        write=lambda p: np.save(p, pickled(marker), allow_pickle=True),
    )
    marker = w.cases_dir / "vectors_pickle_npz" / "UNPICKLED"
    case(
        "vectors_pickle_npz",
        "vectors.npz",
        marker=marker,
        reason="object|plain numbers",
        write=lambda p: _save_npz(p, {"v": pickled(marker)}),
    )
    structured = np.zeros((1, DIM), dtype=[("a", "<f4"), ("b", "<f4")])
    case(
        "vectors_structured",
        "vectors.npy",
        reason="plain numbers",
        write=lambda p: np.save(p, structured),
    )
    case(
        "vectors_void",
        "vectors.npy",
        reason="plain numbers",
        write=lambda p: np.save(p, np.zeros((1, DIM), dtype="V8")),
    )
    case(
        "vectors_unicode",
        "vectors.npy",
        reason="plain numbers",
        write=lambda p: np.save(p, np.array([["a", "b", "c", "d"]])),
    )
    case(
        "vectors_complex",
        "vectors.npy",
        reason="plain numbers",
        write=lambda p: np.save(p, np.ones((1, DIM), np.complex64)),
    )
    case(
        "vectors_datetime",
        "vectors.npy",
        reason="plain numbers",
        write=lambda p: np.save(p, np.zeros((1, DIM), "datetime64[s]")),
    )
    header = {"descr": "<f4", "fortran_order": False, "shape": (1, DIM)}
    case(
        "vectors_huge_header",
        "vectors.npy",
        npy_header(header, (2, 0), pad=8 << 20) + bytes(16),
        reason="header|not a valid",
    )
    case(
        "vectors_shape_bomb",
        "vectors.npy",
        npy_header({"descr": "<f4", "fortran_order": False, "shape": (10**12, DIM)}) + bytes(16),
        reason="declared shape",
    )
    code_header = b"{'descr': '<f4', 'fortran_order': False, 'shape': __import__('os').getpid()}"
    case(
        "vectors_header_code",
        "vectors.npy",
        b"\x93NUMPY\x01\x00"
        + struct.pack("<H", len(code_header) + 1)
        + code_header
        + b"\n"
        + bytes(16),
        reason="not a valid",
    )
    case("vectors_truncated", "vectors.npy", npy_header(header) + bytes(7), reason="declared shape")
    case("vectors_empty_npy", "vectors.npy", b"", reason="not a valid")
    case(
        "vectors_random_npy",
        "vectors.npy",
        np.random.default_rng(3).bytes(512),
        reason="not a valid",
    )
    case(
        "vectors_wrong_dim",
        "vectors.npy",
        reason="dim",
        write=lambda p: np.save(p, np.ones((1, DIM + 1), np.float32)),
    )
    case(
        "vectors_three_dims",
        "vectors.npy",
        reason="one vector per row",
        write=lambda p: np.save(p, np.ones((1, DIM, 2), np.float32)),
    )
    case("vectors_nan_csv", "vectors.csv", b"nan,1,2,3\n", reason="NaN")
    case(
        "vectors_inf_npy",
        "vectors.npy",
        reason="NaN or Inf",
        write=lambda p: np.save(p, np.array([[np.inf, 0, 0, 0]], np.float32)),
    )
    case(
        "vectors_overflow_npy",
        "vectors.npy",
        reason="overflow",
        write=lambda p: np.save(p, np.array([[1e300, 0, 0, 0]], np.float64)),
    )
    case("vectors_ragged_csv", "vectors.csv", b"1,2,3,4\n1,2,3\n", reason="values, expected")
    case("vectors_non_numeric_csv", "vectors.csv", b"a,b,c,d\n", reason="not a number")
    case(
        "vectors_python_literal_csv",
        "vectors.csv",
        b"__import__('os'),1,2,3\n",
        reason="not a number",
    )
    case("vectors_non_utf8_txt", "vectors.txt", b"1 2 3 \xff\xfe\n", reason="UTF-8")
    case("vectors_empty_csv", "vectors.csv", b"", reason="no vectors")
    case(
        "vectors_npz_bomb",
        "vectors.npz",
        reason="zip bomb|inflate|decompress|larger than",
        write=lambda p: write_zip(p, [named(zero_bomb(), "v.npy")]),
    )
    case(
        "vectors_npz_traversal",
        "vectors.npz",
        reason="unsafe name",
        write=lambda p: write_zip(p, [Member("../v.npy", _npy_bytes(np.ones((1, DIM))))]),
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def keras_metadata(layers: list[tuple[int, str, dict]]) -> bytes:
    """A tf_keras `keras_metadata.pb`: a SavedMetadata of SavedObject(node_id=2,
    node_path=3, identifier=4, metadata=5), metadata being JSON text."""
    return b"".join(
        _field(
            1,
            _field(2, node)
            + _field(3, path.encode())
            + _field(4, b"_tf_keras_layer")
            + _field(5, json.dumps(metadata).encode()),
        )
        for node, path, metadata in layers
    )


def hostile_keras_metadata(marker: Path) -> bytes:
    """keras_metadata.pb naming a Lambda with marker-writing bytecode, `os.system`, and a
    module that does not exist, beside an ordinary Embedding."""
    function = lambda_layer(marker)["config"]["function"]
    return keras_metadata(
        [
            (1, "root.layer_with_weights-0", {"class_name": "Embedding", "name": TABLE_NAME}),
            (
                2,
                "root.layer-1",
                {"class_name": "Lambda", "name": "evil", "config": {"function": function}},
            ),
            (
                3,
                "root.layer-2",
                {
                    "class_name": "system",
                    "module": "os",
                    "name": "shell",
                    "registered_name": f"{EVIL_MODULE}>Payload",
                },
            ),
        ]
    )


class OpenOnUnpickle:
    """Pickles as a call to `open(marker, "w")`: unpickling it creates the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    write_zip(path, [Member(f"{key}.npy", _npy_bytes(array)) for key, array in arrays.items()])


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_corpus.py OUTDIR")
    written = build(sys.argv[1])
    print(f"wrote {len(written)} cases to {sys.argv[1]}")
