"""Rewriting a checkpoint, alone or as a SavedModel's variables, with TensorFlow's own
`SaveV2` op: every tensor the source holds, some rows or whole tensors replaced. The
result is read back and compared, tensor by tensor, with what was meant to be written."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from embcli.errors import BadArgument, MalformedFile, UnsupportedEdit, VerificationFailed
from embcli.formats.base import FilePlan, NewWeight, WritePlan
from embcli.formats.tensorflow.paths import (
    CHECKPOINT_STATE_FILENAME,
    FINGERPRINT_FILENAME,
    VARIABLES_DIRNAME,
    VARIABLES_FILENAME,
    checkpoint_prefix,
    data_files,
    index_file,
    shard_names,
    state_text,
)
from embcli.formats.tensorflow.variables import Variable

WRITE_BATCH_BYTES = 256 * 1024 * 1024
SCRATCH_SUFFIX = "_temp"

RowEdits = dict[str, tuple[np.ndarray, np.ndarray]]


def load_reader(tf: Any, prefix: Path) -> Any:
    """TensorFlow's reader of the checkpoint at `prefix`.

    Raises:
        MalformedFile: TensorFlow cannot read it.
    """
    try:
        return tf.train.load_checkpoint(str(prefix))
    except Exception as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise MalformedFile(f"{prefix}: not a readable TensorFlow checkpoint ({message})") from None


class BundleWriter:
    """Plans that write a copy of one checkpoint with `rows` and `weights` replaced.

    Args:
        tf: the TensorFlow module.
        source: the prefix of the checkpoint copied.
        variables: the source's entries, by key.
        tensor: reads one source entry whole.
        release: drops whatever `tensor` keeps cached.
        rows: `key -> (row indices, stored values)` to patch.
        weights: `key -> NewWeight`, entries written whole, possibly with a new shape.
    """

    def __init__(
        self,
        tf: Any,
        source: Path,
        variables: dict[str, Variable],
        tensor: Callable[[str], Any],
        release: Callable[[], None],
        rows: RowEdits,
        weights: dict[str, NewWeight] | None = None,
    ) -> None:
        self._tf = tf
        self._source = source
        self._variables = variables
        self._tensor = tensor
        self._release = release
        self._rows = rows
        self._weights = weights or {}
        self._digests: dict[str, bytes] = {}
        self._check_weights()

    def _check_weights(self) -> None:
        for key, weight in self._weights.items():
            variable = self._variables[key]
            if key in self._rows:
                raise BadArgument(f"{key}: an edit may replace its rows or the whole, not both")
            stored = np.dtype(variable.dtype.as_numpy_dtype)
            if np.dtype(weight.dtype) != stored:
                raise BadArgument(f"{key}: a new {weight.dtype} value for a {stored} entry")
            if len(weight.shape) == 0 or any(n < 0 for n in weight.shape):
                raise BadArgument(f"{key}: {weight.shape} is not a shape rows can fill")

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape the entry has in the copy."""
        weight = self._weights.get(key)
        return tuple(weight.shape) if weight is not None else self._variables[key].shape

    def plan_saved_model(self, source: Path, output: Path) -> WritePlan:
        """A copy of the SavedModel folder `source` at `output`, its variables rewritten and
        its `fingerprint.pb` recomputed."""
        bundle = {index_file(self._source), *data_files(self._source)}
        files: list[FilePlan] = []
        empty: list[Path] = []
        for current, dirs, names in os.walk(source):
            here = Path(current)
            if not dirs and not names and here != source:
                empty.append(here.relative_to(source))
            for name in sorted(names):
                path = here / name
                if path in bundle or path == source / FINGERPRINT_FILENAME:
                    continue
                files.append(FilePlan(output / path.relative_to(source), source=path))
        prefix = output / VARIABLES_DIRNAME / VARIABLES_FILENAME

        def make_folders(temp_prefix: Path) -> None:
            root = temp_prefix.parent.parent
            for folder in empty:
                (root / folder).mkdir(parents=True, exist_ok=True)

        files.extend(self._bundle_plans(prefix, before=make_folders))
        fingerprint = source / FINGERPRINT_FILENAME
        if fingerprint.is_file():
            files.append(
                FilePlan(
                    output / FINGERPRINT_FILENAME, source=fingerprint, rebuild=write_fingerprint
                )
            )
        return WritePlan(output, files, folder=output)

    def plan_state_folder(self, output: Path, name: str) -> WritePlan:
        """A new folder at `output` holding the checkpoint `name` and a state file naming it."""
        files = self._bundle_plans(output / name)
        files.append(FilePlan(output / CHECKPOINT_STATE_FILENAME, content=state_text(name)))
        return WritePlan(output, files, folder=output)

    def plan_prefix(self, target: Path, source_has_state: bool) -> WritePlan:
        """The checkpoint at prefix `target`, with a state file beside it where the source
        had one and the target folder has none; shards it replaces are removed."""
        files = self._bundle_plans(target)
        state = target.parent / CHECKPOINT_STATE_FILENAME
        if source_has_state and not state.exists():
            files.append(FilePlan(state, content=state_text(target.name)))
        stale = []
        if index_file(target).exists():
            written = {item.target.absolute() for item in files}
            stale = [p for p in data_files(target) if p.absolute() not in written]
        return WritePlan(target, files, remove=stale)

    def _batches(self) -> list[list[str]]:
        """The keys in order, cut into batches of about `WRITE_BATCH_BYTES` each."""
        batches: list[list[str]] = [[]]
        size = 0
        for key in sorted(self._variables):
            variable = self._variables[key]
            elements = int(np.prod(self.shape(key)))
            nbytes = elements * variable.dtype.size if variable.numeric else 0
            if batches[-1] and size + nbytes > WRITE_BATCH_BYTES:
                batches.append([])
                size = 0
            batches[-1].append(key)
            size += nbytes
        return batches

    def _bundle_plans(
        self, prefix: Path, before: Callable[[Path], None] | None = None
    ) -> list[FilePlan]:
        """The data shards and index of a rewritten checkpoint at `prefix`. The first plan
        writes them all (and reads them back); the others only take their place."""
        batches = self._batches()
        shards = shard_names(prefix, len(batches))
        old_shards = data_files(self._source)

        def write(temp: Path) -> None:
            temp_prefix = checkpoint_prefix(temp)
            if before is not None:
                before(temp_prefix)
            self._write_bundle(temp_prefix, batches)

        plans = [FilePlan(shards[0], source=old_shards[0] if old_shards else None, rebuild=write)]
        plans += [FilePlan(shard, rebuild=written_already) for shard in shards[1:]]
        checks = [(key, rows, values) for key, (rows, values) in self._rows.items()]
        plans.append(
            FilePlan(
                index_file(prefix),
                source=index_file(self._source),
                rebuild=written_already,
                checks=checks,
            )
        )
        return plans

    def _value(self, key: str) -> Any:
        """What the copy holds under `key`."""
        if key in self._weights:
            return self._assemble(key, self._weights[key])
        value = self._tensor(key)
        if key in self._rows:
            rows, values = self._rows[key]
            value = np.array(value)
            value[rows] = values
        return value

    def _assemble(self, key: str, weight: NewWeight) -> np.ndarray:
        """A new entry's value, from its blocks of rows, and remember its digest."""
        value = np.empty(weight.shape, dtype=weight.dtype)
        filled = 0
        for block in weight.blocks():
            block = np.asarray(block)
            if block.shape[1:] != value.shape[1:] or filled + len(block) > len(value):
                raise BadArgument(f"{key}: a block of shape {block.shape} does not fit")
            value[filled : filled + len(block)] = block
            filled += len(block)
        if filled != len(value):
            raise BadArgument(f"{key}: the blocks hold {filled} of {len(value)} rows")
        self._digests[key] = digest(value)
        return value

    def _write_bundle(self, prefix: Path, batches: list[list[str]]) -> None:
        tf = self._tf
        if len(batches) == 1:
            self._save(prefix, batches[0])
        else:
            scratch = prefix.parent / f"{prefix.name}{SCRATCH_SUFFIX}"
            parts = [scratch / f"part-{i:05d}-of-{len(batches):05d}" for i in range(len(batches))]
            for part, keys in zip(parts, batches, strict=True):
                self._save(part, keys)
            try:
                tf.raw_ops.MergeV2Checkpoints(
                    checkpoint_prefixes=[str(p) for p in parts],
                    destination_prefix=str(prefix),
                    delete_old_dirs=True,
                )
            except tf.errors.OpError as exc:
                raise VerificationFailed(
                    f"TensorFlow could not merge the checkpoint: {exc.message}"
                ) from None
            shutil.rmtree(scratch, ignore_errors=True)
        self._verify_bundle(prefix)

    def _save(self, prefix: Path, keys: list[str]) -> None:
        tf = self._tf
        tensors = [tf.constant(self._value(key), dtype=self._variables[key].dtype) for key in keys]
        self._release()
        try:
            tf.raw_ops.SaveV2(
                prefix=str(prefix),
                tensor_names=keys,
                shape_and_slices=[""] * len(keys),
                tensors=tensors,
            )
        except tf.errors.OpError as exc:
            raise VerificationFailed(
                f"TensorFlow could not write the checkpoint: {exc.message}"
            ) from None

    def _verify_bundle(self, prefix: Path) -> None:
        """Read every tensor of the written checkpoint back and compare it with its source."""
        written = load_reader(self._tf, prefix)
        shapes = written.get_variable_to_shape_map()
        dtypes = written.get_variable_to_dtype_map()
        if set(shapes) != set(self._variables):
            raise VerificationFailed(f"{prefix.name}: the written checkpoint lacks some entries")
        for key, variable in sorted(self._variables.items()):
            if tuple(shapes[key]) != self.shape(key) or dtypes[key] != variable.dtype:
                raise VerificationFailed(f"{key}: written with another shape or dtype")
            try:
                got = written.get_tensor(key)
            except Exception as exc:
                raise VerificationFailed(
                    f"{key}: the written checkpoint cannot be read ({exc})"
                ) from None
            if key in self._weights:
                same = digest(np.asarray(got)) == self._digests[key]
            elif variable.numeric or variable.dtype.is_bool:
                same = same_bits(np.asarray(got), np.asarray(self._value(key)))
            else:
                same = np.array_equal(
                    np.asarray(got, dtype=object), np.asarray(self._value(key), dtype=object)
                )
            if not same:
                raise VerificationFailed(
                    f"{key}: the written checkpoint does not read back as intended"
                )


def write_fingerprint(temp: Path) -> None:
    """Write at `temp` the `fingerprint.pb` TensorFlow computes for the folder it lies in."""
    try:
        from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting
    except ImportError:
        raise UnsupportedEdit(
            "this TensorFlow cannot recompute the SavedModel's fingerprint.pb"
        ) from None
    try:
        temp.write_bytes(fingerprinting.CreateFingerprintDef(str(temp.parent)))
    except fingerprinting.FingerprintException as exc:
        raise VerificationFailed(f"TensorFlow could not fingerprint the copy: {exc}") from None


def written_already(temp: Path) -> None:
    """The rebuild of a file that an earlier plan of the same write has written."""
    if not temp.is_file():
        raise VerificationFailed(f"{temp.name} was not written")


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def digest(value: np.ndarray) -> bytes:
    """A hash of an array's shape, dtype and bytes."""
    value = np.ascontiguousarray(value)
    hashed = hashlib.blake2b(f"{value.shape}{value.dtype.str}".encode())
    hashed.update(value.reshape(-1).view(np.uint8).data)
    return hashed.digest()
