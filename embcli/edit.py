"""Replacing rows: checking and casting new values, requantizing int8 tables, and writing
a verified copy through `embcli.atomic`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embcli import atomic
from embcli.dtypes import dtype_name, is_bfloat16
from embcli.errors import (
    BadVectors,
    LossyCast,
    NonFiniteValues,
    OutputExists,
    UnsupportedEdit,
    VerificationFailed,
)
from embcli.formats.base import ModelFile, Table

QUANTIZE_RANGE = 127
QUANTIZE_EPSILON = 1e-7


@dataclass
class AssignResult:
    """What an assignment changed."""

    table: Table
    rows: int
    output: Path
    optimizer_slots: list[str] = field(default_factory=list)


def quantize_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and per-row scales, computed as Keras's `abs_max_quantize` does in numpy."""
    values = values.astype(np.float32)
    peak = np.max(np.abs(values), axis=-1, keepdims=True)
    scale = np.divide(np.float32(QUANTIZE_RANGE), np.add(peak, np.float32(QUANTIZE_EPSILON)))
    quantized = np.clip(np.round(np.multiply(values, scale)), -QUANTIZE_RANGE, QUANTIZE_RANGE)
    return quantized.astype(np.int8), scale[:, 0].astype(np.float32)


def cast_values(
    values: np.ndarray, dtype: np.dtype, *, allow_lossy: bool = False, allow_nonfinite: bool = False
) -> np.ndarray:
    """Cast new values to a table's stored dtype, refusing NaN/Inf and lossy casts.

    Rounding to the nearest value of a float dtype is expected; a finite value that
    overflows to infinity, or a fraction or out-of-range number into an integer dtype,
    is lossy.
    """
    if is_bfloat16(values):
        values = values.astype(np.float32)
    if values.dtype.kind not in "fiub":
        raise BadVectors(f"vectors of dtype {values.dtype} are not numbers")
    finite = np.isfinite(values) if values.dtype.kind == "f" else np.ones(values.shape, bool)
    if not allow_nonfinite and not finite.all():
        bad = int((~finite).any(axis=-1).sum()) if values.ndim == 2 else 1
        raise NonFiniteValues(f"{bad} vector(s) hold NaN or Inf", remedy="allow_nonfinite")
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        if values.dtype.kind == "f" and not np.array_equal(
            values[finite], np.round(values[finite])
        ):
            raise LossyCast(f"values with fractions cannot be stored as {dtype}")
        info = np.iinfo(dtype)
        if values.size and (values.min() < info.min or values.max() > info.max):
            if not allow_lossy:
                raise LossyCast(f"values outside [{info.min}, {info.max}] do not fit {dtype}")
        with np.errstate(all="ignore"):
            return values.astype(dtype)
    with np.errstate(all="ignore"):
        cast = values.astype(dtype)
    overflow = finite & ~np.isfinite(cast.astype(np.float64))
    if overflow.any() and not allow_lossy:
        largest = np.max(np.abs(values[overflow]))
        raise LossyCast(
            f"{int(overflow.sum())} value(s) overflow {dtype_name(dtype)} "
            f"(largest magnitude {largest:g})",
            remedy="allow_lossy",
        )
    return cast


def check_shape(values: np.ndarray, table: Table, count: int) -> None:
    if values.ndim != 2 or values.shape[1] != table.dim:
        width = values.shape[-1] if values.ndim else 0
        raise BadVectors(f"vectors have {width} values each; {table.name} has dim {table.dim}")
    if values.shape[0] != count:
        raise BadVectors(f"got {values.shape[0]} vector(s) for {count} row(s)")


def output_suffix_problem(model: ModelFile, output: Path) -> str | None:
    suffix = model.artifact_kind.output_suffix if model.artifact_kind is not None else None
    if suffix and not output.name.lower().endswith(suffix):
        return f"a copy of a {model.format_name} file must be named *{suffix} (Keras requires it)"
    return None


def check_reshapable_copy(
    model: ModelFile, path: Path | str, target: Path, in_place: bool, force: bool
) -> None:
    """Refuse, before any work, an edit that reshapes weights where the format cannot,
    or whose output exists (without `force`) or is misnamed."""
    if not model.reshapes_weights:
        raise UnsupportedEdit(
            f"{path}: a SavedModel's graph fixes the shapes of its tables; "
            "change the model it was exported from"
        )
    if not in_place:
        atomic.check_output(target, force)
        problem = output_suffix_problem(model, target)
        if problem:
            raise UnsupportedEdit(problem)


def plan_patches(
    model: ModelFile,
    table: Table,
    rows: np.ndarray,
    values: np.ndarray,
    *,
    allow_lossy: bool = False,
    allow_nonfinite: bool = False,
    reset_optimizer_rows: bool = False,
) -> tuple[dict, list[str]]:
    """The stored values to write, keyed by weight: `{weight: (rows, values)}`."""
    from embcli.model import refuse_stacked

    refuse_stacked(table)
    check_shape(values, table, len(rows))
    patches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if table.codec is not None:
        from embcli.quantized import encode_rows

        cast_values(values, np.dtype(np.float32), allow_lossy=allow_lossy, allow_nonfinite=False)
        patches.update(encode_rows(model, table, rows, values))
    elif table.quantized == "int8" and table.scale is not None:
        cast_values(values, np.dtype(np.float32), allow_lossy=allow_lossy, allow_nonfinite=False)
        quantized, scale = quantize_rows(values)
        _, scale_dtype = model.weight_info(table.scale)
        patches[table.weight] = (rows, quantized)
        patches[table.scale] = (rows, cast_values(scale, scale_dtype, allow_lossy=allow_lossy))
    elif table.quantized is not None:
        raise UnsupportedEdit(
            f"{table.name} is {table.quantized}-quantized; embcli cannot requantize it"
        )
    else:
        _, dtype = model.weight_info(table.weight)
        patches[table.weight] = (
            rows,
            cast_values(values, dtype, allow_lossy=allow_lossy, allow_nonfinite=allow_nonfinite),
        )
    slots: list[str] = []
    if reset_optimizer_rows:
        slots = model.optimizer_slots(table)
        if not slots:
            raise UnsupportedEdit(f"the file holds no optimizer state for {table.name}")
        for slot in slots:
            _, dtype = model.weight_info(slot)
            patches[slot] = (rows, np.zeros((len(rows), table.dim), dtype=dtype))
    return patches, slots


def verify_file(path: Path, checks: list) -> None:
    """Open a written file with embcli's own reader and compare the rows it was given."""
    from embcli.model import open_model

    with open_model(path) as written:
        for weight, rows, expected in checks:
            order = np.argsort(rows)
            got = written.read(weight, rows[order])
            if not atomic.same_bits(got, np.asarray(expected)[order]):
                raise VerificationFailed(f"{weight}: the written rows do not read back as intended")


def assign(
    model: ModelFile,
    table: Table,
    rows: np.ndarray,
    values: np.ndarray,
    output: Path,
    *,
    in_place: bool = False,
    force: bool = False,
    allow_lossy: bool = False,
    allow_nonfinite: bool = False,
    reset_optimizer_rows: bool = False,
) -> AssignResult:
    """Write a copy of `model` at `output` (or over itself) with `rows` of `table` replaced."""
    if not in_place:
        atomic.check_output(output, force)
        problem = output_suffix_problem(model, output)
        if problem:
            raise UnsupportedEdit(problem)
    patches, slots = plan_patches(
        model,
        table,
        np.asarray(rows, dtype=np.int64),
        values,
        allow_lossy=allow_lossy,
        allow_nonfinite=allow_nonfinite,
        reset_optimizer_rows=reset_optimizer_rows,
    )
    plan = model.plan_write(output, patches, in_place)
    if not in_place and not force:
        for item in plan.files:
            if item.target.exists():
                raise OutputExists(f"{item.target} exists", remedy="force")
    if in_place and atomic.can_patch_in_place(plan):
        atomic.patch_in_place(plan, verify_file)
    else:
        atomic.execute(plan, verify_file, force=True if in_place else force)
    return AssignResult(table, len(rows), output, slots)
