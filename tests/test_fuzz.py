"""Fuzzing the readers: real fixture bytes, mutated (bytes set or flipped, truncated,
spliced, inserted, deleted), then opened, listed, read and planned for an edit.

Anything may be refused, but only with an `EmbcliError`: any other exception, a hang (the
hypothesis deadline; a watchdog ends the process with every thread's stack if an example
never returns), or a crash fails the test. Mutations favour the bytes that hold structure
(zip headers and directory, HDF5 metadata) over the weights' data, where a change is
merely a different number. `bench/fuzz_long.py` runs many more examples, each batch in its
own process.
"""

import faulthandler
import io
import random
import sys
import zipfile
from datetime import timedelta
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embcli.edit import plan_patches
from embcli.errors import EmbcliError
from embcli.model import iter_blocks, list_tables, open_model, read_rows

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
BASES = ["k3_functional.keras", "k3.weights.h5", "tfk_full.h5"]
EXAMPLES_PER_BASE = 40
WATCHDOG_SECONDS = 120
INTERESTING = [
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\xff\xff\xff\x7f",
    b"\x00\x00\x00\x80",
    b"\xff" * 8,
    b"\x00" * 8,
    (1 << 40).to_bytes(8, "little"),
    (1 << 31).to_bytes(4, "little"),
    b"\x01\x00",
    b"PK\x03\x04",
    b"PK\x01\x02",
    b"\x89HDF\r\n\x1a\n",
    b"TREE",
    b"HEAP",
    b"SNOD",
    b"OHDR",
]


def _h5_metadata_ranges(data: bytes, shift: int = 0) -> list[tuple[int, int]]:
    """Byte ranges of an HDF5 file that are not contiguous dataset data."""
    taken: list[tuple[int, int]] = []

    def visit(_, obj):
        if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
            taken.append((obj.id.get_offset(), obj.id.get_offset() + obj.id.get_storage_size()))

    with h5py.File(io.BytesIO(data), "r") as handle:
        handle.visititems(visit)
    ranges, position = [], 0
    for start, end in sorted(taken):
        if start > position:
            ranges.append((position + shift, start + shift))
        position = max(position, end)
    ranges.append((position + shift, len(data) + shift))
    return ranges


def structure_ranges(data: bytes) -> list[tuple[int, int]]:
    """Where a fixture keeps its structure: zip headers and central directory, and the
    HDF5 metadata (inside the weights member too)."""
    if data.startswith(b"PK"):
        archive = zipfile.ZipFile(io.BytesIO(data))
        ranges = [(archive.start_dir, len(data))]
        for info in archive.infolist():
            header = data[info.header_offset : info.header_offset + 30]
            start = (
                info.header_offset
                + 30
                + int.from_bytes(header[26:28], "little")
                + int.from_bytes(header[28:30], "little")
            )
            ranges.append((info.header_offset, start))
            if info.filename.endswith(".h5") and info.compress_type == zipfile.ZIP_STORED:
                ranges += _h5_metadata_ranges(data[start : start + info.file_size], start)
            else:
                ranges.append((start, start + info.compress_size))
        return ranges
    return _h5_metadata_ranges(data)


def structure_positions(data: bytes) -> list[int]:
    return [p for start, end in structure_ranges(data) for p in range(start, end)]


def positions(data: bytes) -> st.SearchStrategy[int]:
    inside = structure_positions(data)
    anywhere = st.integers(0, max(0, len(data) - 1))
    return st.one_of(st.sampled_from(inside), st.sampled_from(inside), anywhere)


def random_mutations(size: int, inside: list[int], rng: random.Random) -> list[tuple]:
    """The same operations as `mutations`, drawn with `random` (for bench/fuzz_long.py)."""

    def at() -> int:
        return rng.choice(inside) if inside and rng.random() < 2 / 3 else rng.randrange(size)

    def chunk() -> bytes:
        if rng.random() < 0.5:
            return rng.choice(INTERESTING)
        return rng.randbytes(rng.randint(1, 16))

    makers = [
        lambda: ("set", at(), chunk()),
        lambda: ("flip", at(), rng.randrange(8)),
        lambda: ("truncate", at()),
        lambda: ("splice", at(), at(), rng.randint(1, 512)),
        lambda: ("insert", at(), chunk()),
        lambda: ("delete", at(), rng.randint(1, 64)),
    ]
    return [rng.choice(makers)() for _ in range(rng.randint(1, 6))]


def mutations(data: bytes) -> st.SearchStrategy[list[tuple]]:
    at = positions(data)
    chunk = st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=16))
    operation = st.one_of(
        st.tuples(st.just("set"), at, chunk),
        st.tuples(st.just("flip"), at, st.integers(0, 7)),
        st.tuples(st.just("truncate"), at),
        st.tuples(st.just("splice"), at, at, st.integers(1, 512)),
        st.tuples(st.just("insert"), at, chunk),
        st.tuples(st.just("delete"), at, st.integers(1, 64)),
    )
    return st.lists(operation, min_size=1, max_size=6)


def mutate(data: bytes, operations: list[tuple]) -> bytes:
    out = bytearray(data)
    for operation in operations:
        kind, position = operation[0], min(operation[1], max(0, len(out) - 1))
        if kind == "set":
            out[position : position + len(operation[2])] = operation[2]
        elif kind == "flip" and out:
            out[position] ^= 1 << operation[2]
        elif kind == "truncate":
            del out[position:]
        elif kind == "splice":
            source = bytes(out[position : position + operation[3]])
            target = min(operation[2], len(out))
            out[target : target + len(source)] = source
        elif kind == "insert":
            out[position:position] = operation[2]
        elif kind == "delete":
            del out[position : position + operation[2]]
    return bytes(out)


def exercise(path: Path, scratch: Path) -> str:
    """Open, list, read and plan an edit, as the commands do. Returns "ok" or the name
    of the EmbcliError raised; any other exception propagates."""
    try:
        with open_model(path) as model:
            model.config()
            tables = list_tables(model, all_weights=True)
            for table in tables[:6]:
                if table.rows:
                    read_rows(model, table, np.array([0, table.rows - 1]))
                    next(iter_blocks(model, table, block_bytes=1 << 16), None)
                    values = np.zeros((1, table.dim), dtype=np.float32)
                    patches, _ = plan_patches(model, table, np.array([0]), values)
                    model.plan_write(scratch / f"out{_suffix(path)}", patches, False)
                model.optimizer_slots(table)
        return "ok"
    except EmbcliError as exc:
        return type(exc).__name__


def _suffix(path: Path) -> str:
    return ".weights.h5" if path.name.endswith(".weights.h5") else path.suffix


def run_example(data: bytes, name: str, scratch: Path, watchdog: float = WATCHDOG_SECONDS) -> str:
    """Write a mutated file and exercise it under a watchdog that ends a hung process."""
    path = scratch / name
    path.write_bytes(data)
    faulthandler.dump_traceback_later(watchdog, exit=True, file=sys.__stderr__)
    try:
        return exercise(path, scratch)
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _base(name: str) -> bytes:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {name} is missing")
    return path.read_bytes()


@pytest.mark.parametrize("name", BASES)
def test_unmutated_fixtures_read_cleanly(name, scratch):
    assert run_example(_base(name), name, scratch) == "ok"


@pytest.mark.parametrize("name", BASES)
def test_mutated_fixtures_fail_only_with_embcli_errors(name, scratch):
    data = _base(name)

    @settings(
        max_examples=EXAMPLES_PER_BASE,
        deadline=timedelta(seconds=10),
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutations(data))
    def check(operations):
        run_example(mutate(data, operations), name, scratch)

    check()


def test_mutate_applies_each_operation():
    data = bytes(range(16))
    assert mutate(data, [("set", 2, b"\xff\xff")])[:5] == b"\x00\x01\xff\xff\x04"
    assert mutate(data, [("flip", 0, 1)])[0] == 2
    assert mutate(data, [("truncate", 5)]) == data[:5]
    assert mutate(data, [("splice", 0, 8, 4)])[8:12] == data[:4]
    assert mutate(data, [("insert", 1, b"ab")])[:4] == b"\x00ab\x01"
    assert mutate(data, [("delete", 0, 3)]) == data[3:]


def test_structure_ranges_cover_headers_not_weights():
    data = _base("k3_functional.keras")
    ranges = structure_ranges(data)
    covered = sum(end - start for start, end in ranges)
    assert 0 < covered < len(data)
    assert any(start <= 0 < end for start, end in ranges)


def _bump_zip_version(data: bytes) -> bytes:
    """Found by bench/fuzz_long.py: zipfile raises NotImplementedError for a member that
    needs a newer zip version than it knows."""
    at = data.rfind(b"PK\x01\x02")
    return data[: at + 6] + bytes([69, 0]) + data[at + 8 :]


def _zero_heap_object(data: bytes) -> bytes:
    """Found by bench/fuzz_long.py: a global heap object of index 0 and size 0 makes HDF5
    loop forever reading a variable-length string attribute."""
    at = data.find(b"GCOL\x01")
    return data[: at + 16] + bytes(16) + data[at + 32 :]


def _reserved_vlen_kind(data: bytes) -> bytes:
    """Found by bench/fuzz_long.py: one flipped bit makes a variable-length string type a
    variable-length type of reserved kind 3, and HDF5 crashes reading the attribute. Here
    every such type is damaged."""
    for charset in (b"\x00", b"\x01"):
        string_type = b"\x19\x01" + charset + b"\x00\x10\x00\x00\x00"
        data = data.replace(string_type, b"\x19\x03" + string_type[2:])
    return data


@pytest.mark.parametrize(
    "name, damage",
    [
        ("k3_functional.keras", _reserved_vlen_kind),
        ("k3.weights.h5", _reserved_vlen_kind),
        ("tfk_full.h5", _reserved_vlen_kind),
        ("k3_functional.keras", _bump_zip_version),
        ("tfk_full.h5", _zero_heap_object),
        ("k3.weights.h5", _zero_heap_object),
        ("k3_functional.keras", _zero_heap_object),
    ],
)
def test_damage_found_by_long_runs_is_refused(name, damage, scratch):
    assert run_example(damage(_base(name)), name, scratch, watchdog=60) == "MalformedFile"


def test_mutated_keras_metadata_fails_only_with_embcli_errors(scratch):
    """tf_keras's `keras_metadata.pb` is parsed by embcli itself (protobuf wire format,
    then JSON): damaged ones are refused, never crash the parser."""
    from embcli.formats.tensorflow import read_keras_metadata

    data = _base("tfk_savedmodel/keras_metadata.pb")
    path = scratch / "keras_metadata.pb"

    @settings(
        max_examples=EXAMPLES_PER_BASE,
        deadline=timedelta(seconds=10),
        derandomize=True,
        database=None,
    )
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["set", "flip", "truncate", "insert", "delete"]),
                st.integers(0, len(data) - 1),
                st.binary(min_size=1, max_size=8),
            ),
            min_size=1,
            max_size=6,
        )
    )
    def check(operations):
        operations = [
            (kind, at, arg if kind in ("set", "insert") else len(arg) % 8)
            for kind, at, arg in operations
        ]
        path.write_bytes(mutate(data, operations))
        try:
            read_keras_metadata(path)
        except EmbcliError:
            pass

    check()


def _vector_bases() -> dict[str, bytes]:
    """Small good vector files of each kind `assign --from` and `--by-token` read."""
    values = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    npy = io.BytesIO()
    np.save(npy, values)
    npz = io.BytesIO()
    np.savez_compressed(npz, v=values)
    return {
        "v.npy": npy.getvalue(),
        "v.npz": npz.getvalue(),
        "v.csv": b"\xef\xbb\xbf1,2,3,4\n5,6,7,8\n",
        "glove.txt": b"the 0.1 0.2 0.3 0.4\nof 1 2 3 4\n",
        "w2v.bin": b"2 4\nthe " + values[0].tobytes() + b"\nof " + values[1].tobytes() + b"\n",
    }


@pytest.mark.parametrize("name", sorted(_vector_bases()))
def test_mutated_vector_files_fail_only_with_embcli_errors(name, scratch):
    from embcli.pretrained import read_token_vectors
    from embcli.vectors import load_vectors

    data = _vector_bases()[name]
    path = scratch / name

    @settings(
        max_examples=EXAMPLES_PER_BASE,
        deadline=timedelta(seconds=10),
        derandomize=True,
        database=None,
    )
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["set", "flip", "truncate", "insert", "delete"]),
                st.integers(0, len(data) - 1),
                st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=8)),
            ),
            min_size=1,
            max_size=6,
        )
    )
    def check(operations):
        operations = [
            (kind, at, arg if kind in ("set", "insert") else len(arg) % 8)
            for kind, at, arg in operations
        ]
        path.write_bytes(mutate(data, operations))
        try:
            if name.endswith((".txt", ".bin")):
                read_token_vectors(path, ["the", "of"])
            else:
                load_vectors(path, rows=2 if name == "v.csv" else 3, dim=4)
        except EmbcliError:
            pass

    check()


@settings(max_examples=300, derandomize=True, database=None)
@given(st.text(max_size=40), st.integers(0, 10_000))
def test_any_row_spec_is_parsed_or_refused_cleanly(spec, rows):
    from embcli.errors import BadRowSpec
    from embcli.rowspec import parse_rows

    try:
        indices = parse_rows([spec], rows)
    except BadRowSpec:
        return
    assert len(indices) == 0 or (0 <= indices.min() and indices.max() < rows)


@settings(max_examples=200, derandomize=True, database=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_any_json_text_is_parsed_or_refused_cleanly(text):
    from embcli.guarded import parse_json

    try:
        parse_json(text, "config.json")
    except EmbcliError:
        pass
