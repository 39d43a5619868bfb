"""One codec per way Keras stores an embedding table: float, int8, int4, int4 in groups.

Every codec works on vocabulary-major arrays: `k` table rows of `dim` values each, with
the stored parts sliced to the same `k` rows (`values` `(k, stored_width)`, `scale` `(k,)`
or `(k, groups)`, `zero` `(k, groups)`) and `g_idx` whole. Orienting the parts of a
reverse table, which Keras stores transposed, is `embcli.quantization.tables`' job.

The arithmetic mirrors Keras 3.15 op for op: `quantizers.abs_max_quantize` and
`abs_max_quantize_grouped_with_zero_point` (numpy paths, which `Embedding.quantize` takes),
`pack_int4`/`unpack_int4`, `Embedding._int8_call`/`_int4_call` and
`dequantize_with_sz_map`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

import numpy as np

from embcli.dtypes import is_bfloat16
from embcli.errors import BadVectors, MalformedFile, NonFiniteValues, UnsupportedEdit

VALUES = "values"
SCALE = "scale"
ZERO = "zero"
GROUP_INDEX = "g_idx"

INT8_RANGE = (-127, 127)
INT4_RANGE = (-8, 7)
# keras.backend.epsilon() as Keras binds it into the quantizers' defaults.
KERAS_EPSILON = 1e-7
NIBBLE_MASK = 0x0F
NIBBLE_SIGN = 8


@dataclass(frozen=True)
class AbsMax:
    """The parameters of Keras's `AbsMaxQuantizer` along the row: per-row scale
    `high / (max|x| + epsilon)`, values rounded and clipped to `value_range`."""

    value_range: tuple[int, int]
    epsilon: float = KERAS_EPSILON


INT8_DEFAULT = AbsMax(INT8_RANGE)
INT4_DEFAULT = AbsMax(INT4_RANGE)


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype for a stored dtype name; bfloat16 comes from ml_dtypes."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def arithmetic_dtype(compute_dtype: str | None, scale_dtype: str) -> str:
    """The dtype Keras dequantizes in: inside `call` it autocasts float variables (the
    scales) to the compute dtype and casts the integers to it too. With the compute
    dtype left to the loading program, the stored scale's dtype is taken."""
    return compute_dtype if compute_dtype is not None else scale_dtype


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Pack int4 values in [-8, 7] two to a byte along the last axis, as `pack_int4` does.

    The first of each pair goes to the low nibble, the second to the high nibble; an odd
    length is padded with a zero.
    """
    values = np.asarray(values, dtype=np.int8)
    if values.shape[-1] % 2:
        pad = np.zeros(values.shape[:-1] + (1,), dtype=np.int8)
        values = np.concatenate([values, pad], axis=-1)
    nibbles = values.view(np.uint8) & np.uint8(NIBBLE_MASK)
    packed = nibbles[..., 0::2] | (nibbles[..., 1::2] << np.uint8(4))
    return packed.view(np.int8)


def _signed_nibble_pairs() -> np.ndarray:
    """For each byte, its low and high nibble as signed int4: `(x ^ 8) - 8`."""
    byte = np.arange(256, dtype=np.int16)
    low, high = byte & NIBBLE_MASK, byte >> 4
    pairs = np.stack([low, high], axis=-1)
    return ((pairs ^ NIBBLE_SIGN) - NIBBLE_SIGN).astype(np.int8)


_NIBBLE_PAIRS = _signed_nibble_pairs()


def unpack_nibbles(packed: np.ndarray, length: int) -> np.ndarray:
    """Signed int4 values from bytes packed along the last axis, cut to `length`."""
    packed = np.asarray(packed)
    if packed.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise MalformedFile(f"packed int4 values are stored as {packed.dtype}, not int8")
    pairs = _NIBBLE_PAIRS[packed.view(np.uint8)]
    return pairs.reshape(packed.shape[:-1] + (-1,))[..., :length]


def packed_width(dim: int) -> int:
    """Bytes per row of `dim` int4 values."""
    return (dim + 1) // 2


def group_count(dim: int, block_size: int) -> int:
    """Groups of `block_size` along a row of `dim` values."""
    return math.ceil(dim / block_size)


def canonical_group_index(dim: int, block_size: int) -> np.ndarray:
    """The `g_idx` Keras builds: position // block_size, as float32."""
    return np.floor_divide(np.arange(dim, dtype=np.float32), np.float32(block_size))


def block_size_from_group_index(g_idx: np.ndarray) -> int:
    """The block size whose canonical `g_idx` equals the stored one.

    Raises:
        UnsupportedEdit: the stored `g_idx` is not one Keras's `quantize` writes, or is a
            single group, which any block size from `dim` up produces (and `quantize`
            pads the group with zeros when the block is longer than the row).
    """
    g_idx = np.asarray(g_idx)
    if g_idx.ndim != 1 or g_idx.shape[0] == 0:
        raise UnsupportedEdit("the group index of an int4 table is empty or not 1-D")
    dim = int(g_idx.shape[0])
    block_size = int(np.count_nonzero(g_idx == 0))
    if block_size >= dim:
        raise UnsupportedEdit("an int4 table in one group does not record its block size")
    if block_size == 0 or not np.array_equal(g_idx, canonical_group_index(dim, block_size)):
        raise UnsupportedEdit("the group index of an int4 table is not contiguous groups")
    return block_size


class Codec(Protocol):
    """How one stored encoding turns into the values the model computes with, and back."""

    @property
    def name(self) -> str:
        """The encoding: "float", "int8", "int4" or "int4-grouped"."""
        ...

    @property
    def dim(self) -> int:
        """Values per table row."""
        ...

    def roles(self) -> tuple[str, ...]:
        """The stored parts this encoding is made of, in the order Keras saves them."""
        ...

    def decode(self, blocks: Mapping[str, np.ndarray]) -> np.ndarray:
        """The values of the rows whose stored parts are `blocks` (vocabulary-major)."""
        ...

    def encode(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """The stored parts of rows holding `values`, as Keras's `quantize` writes them.

        Parts shared by every row (`g_idx`) are not returned: they do not change.
        """
        ...


def _as_work(array: np.ndarray, dtype: str) -> np.ndarray:
    return np.asarray(array).astype(numpy_dtype(dtype), copy=False)


def _check_width(values: np.ndarray, dim: int) -> None:
    if values.ndim != 2 or values.shape[1] != dim:
        raise UnsupportedEdit(f"rows of {values.shape[1:]} values do not fit a table of dim {dim}")


def _held(values: np.ndarray, dim: int, dtype: str) -> np.ndarray:
    """New rows as the float layer `quantize` starts from would hold them: cast to the
    variable dtype (the dtype Keras stores the scales in), and finite."""
    values = np.asarray(values)
    _check_width(values, dim)
    if values.dtype.kind not in "fiub" and not is_bfloat16(values.dtype):
        raise BadVectors(f"vectors of dtype {values.dtype} are not numbers")
    held = values.astype(numpy_dtype(dtype))
    if not np.all(np.isfinite(held.astype(np.float32))):
        raise NonFiniteValues("a quantized table cannot hold NaN or Inf")
    return held


@dataclass(frozen=True)
class FloatCodec:
    """An unquantized table: stored values are the model's values."""

    dim: int
    dtype: str = "float32"
    name: ClassVar[str] = "float"

    def roles(self) -> tuple[str, ...]:
        return (VALUES,)

    def decode(self, blocks: Mapping[str, np.ndarray]) -> np.ndarray:
        values = np.asarray(blocks[VALUES])
        return values.astype(np.float32) if self.dtype == "bfloat16" else values

    def encode(self, values: np.ndarray) -> dict[str, np.ndarray]:
        values = np.asarray(values)
        _check_width(values, self.dim)
        return {VALUES: values.astype(numpy_dtype(self.dtype))}


def _abs_max_quantize(
    values: np.ndarray, quantizer: AbsMax | None
) -> tuple[np.ndarray, np.ndarray]:
    """`abs_max_quantize(axis=-1, to_numpy=True)`: per-row scale, round, clip."""
    if quantizer is None:
        raise UnsupportedEdit("the table was quantized by a quantizer embcli cannot reproduce")
    low, high = quantizer.value_range
    peak = np.max(np.abs(values), axis=-1, keepdims=True)
    scale = np.divide(high, np.add(peak, quantizer.epsilon))
    quantized = np.clip(np.round(np.multiply(values, scale)), low, high)
    return quantized.astype(np.int8), scale[..., 0]


@dataclass(frozen=True)
class Int8Codec:
    """int8 values with one float scale per row: value = int8 / scale.

    `quantizer` is None where the layer's config names a weight quantizer embcli cannot
    reproduce; such a table decodes but refuses new rows.
    """

    dim: int
    scale_dtype: str = "float32"
    compute_dtype: str | None = "float32"
    quantizer: AbsMax | None = INT8_DEFAULT
    name: ClassVar[str] = "int8"

    def roles(self) -> tuple[str, ...]:
        return (VALUES, SCALE)

    def decode(self, blocks: Mapping[str, np.ndarray]) -> np.ndarray:
        return _divide_by_row_scale(
            np.asarray(blocks[VALUES]), blocks[SCALE], self.compute_dtype, self.scale_dtype
        )

    def encode(self, values: np.ndarray) -> dict[str, np.ndarray]:
        values = _held(values, self.dim, self.scale_dtype)
        with np.errstate(all="ignore"):
            quantized, scale = _abs_max_quantize(values, self.quantizer)
        return {VALUES: quantized, SCALE: scale.astype(numpy_dtype(self.scale_dtype))}


def _divide_by_row_scale(
    quantized: np.ndarray, scale: np.ndarray, compute_dtype: str | None, scale_dtype: str
) -> np.ndarray:
    work = arithmetic_dtype(compute_dtype, scale_dtype)
    numerator = _as_work(quantized.astype(numpy_dtype(compute_dtype or scale_dtype)), work)
    with np.errstate(all="ignore"):
        divided = np.divide(numerator, _as_work(scale, work)[:, None])
    return divided.astype(np.float32)


@dataclass(frozen=True)
class Int4Codec:
    """int4 values packed two to a byte along the row, one float scale per row."""

    dim: int
    scale_dtype: str = "float32"
    compute_dtype: str | None = "float32"
    quantizer: AbsMax | None = INT4_DEFAULT
    name: ClassVar[str] = "int4"

    def roles(self) -> tuple[str, ...]:
        return (VALUES, SCALE)

    def decode(self, blocks: Mapping[str, np.ndarray]) -> np.ndarray:
        quantized = unpack_nibbles(blocks[VALUES], self.dim)
        return _divide_by_row_scale(quantized, blocks[SCALE], self.compute_dtype, self.scale_dtype)

    def encode(self, values: np.ndarray) -> dict[str, np.ndarray]:
        values = _held(values, self.dim, self.scale_dtype)
        with np.errstate(all="ignore"):
            quantized, scale = _abs_max_quantize(values, self.quantizer)
        return {
            VALUES: pack_nibbles(quantized),
            SCALE: scale.astype(numpy_dtype(self.scale_dtype)),
        }


def _grouped_quantize(
    columns: np.ndarray, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_abs_max_quantize_grouped_with_zero_point_numpy` over `(dim, k)` columns."""
    low, high = INT4_RANGE
    dim, count = columns.shape
    groups = group_count(dim, block_size)
    padded_dim = groups * block_size
    if padded_dim > dim:
        padding = np.zeros((padded_dim - dim, count), dtype=columns.dtype)
        columns = np.concatenate([columns, padding], axis=0)
    blocks = columns.reshape(groups, block_size, count)
    smallest = np.min(blocks, axis=1, keepdims=True)
    largest = np.max(blocks, axis=1, keepdims=True)
    scale = np.divide(np.subtract(largest, smallest) + KERAS_EPSILON, high - low)
    zero = np.clip(np.round(np.divide(-smallest, scale)) + low, low, high)
    quantized = np.clip(np.round(np.divide(blocks, scale)) + zero, low, high).astype(np.int8)
    quantized = quantized.reshape(padded_dim, count)[:dim, :]
    return quantized, np.squeeze(scale, axis=1), np.squeeze(zero, axis=1).astype(np.int8)


@dataclass(frozen=True)
class Int4GroupedCodec:
    """int4 values packed along the row, with a scale and zero point per group of
    `block_size` values: value = (int4 - zero[g]) * scale[g], g = g_idx[column].

    `block_size` is None when only the stored `g_idx` can tell it; `encode` then needs
    `with_group_index` first. `zero_dtype` is int8 for `embeddings_zero` and the
    variable dtype for `reverse_embeddings_zero`, as Keras builds them.
    """

    dim: int
    groups: int
    block_size: int | None = None
    scale_dtype: str = "float32"
    zero_dtype: str = "int8"
    compute_dtype: str | None = "float32"
    name: ClassVar[str] = "int4-grouped"

    def roles(self) -> tuple[str, ...]:
        return (VALUES, SCALE, ZERO, GROUP_INDEX)

    def group_columns(self, g_idx: np.ndarray) -> np.ndarray:
        """`g_idx` as the int32 group of each column, checked against the table."""
        g_idx = np.asarray(g_idx)
        if g_idx.shape != (self.dim,) or g_idx.dtype.kind not in "fiu":
            raise MalformedFile(f"the group index has shape {g_idx.shape}, not ({self.dim},)")
        wide = g_idx.astype(np.float64)
        if not np.all(np.isfinite(wide)) or wide.min() < 0 or wide.max() >= self.groups:
            raise MalformedFile(f"the group index names groups outside 0..{self.groups - 1}")
        return g_idx.astype(np.int32)

    def with_group_index(self, g_idx: np.ndarray) -> Int4GroupedCodec:
        """This codec with its block size read from, or checked against, `g_idx`.

        Raises:
            UnsupportedEdit: `g_idx` is not the one Keras builds for this block size, so
                rows requantized by it would not decode as Keras decodes them.
        """
        self.group_columns(g_idx)
        if self.block_size is not None:
            if not np.array_equal(g_idx, canonical_group_index(self.dim, self.block_size)):
                raise UnsupportedEdit("the group index does not match the table's block size")
            return self
        block_size = block_size_from_group_index(g_idx)
        if group_count(self.dim, block_size) != self.groups:
            raise UnsupportedEdit("the group index does not match the number of scales")
        return replace(self, block_size=block_size)

    def decode(self, blocks: Mapping[str, np.ndarray]) -> np.ndarray:
        columns = self.group_columns(blocks[GROUP_INDEX])
        work = numpy_dtype(arithmetic_dtype(self.compute_dtype, self.scale_dtype))
        held = numpy_dtype(self.scale_dtype)
        # Zero points are cast to the scales' dtype, then both are autocast; the group of
        # each column is looked up after those casts, which changes no value.
        scales = np.asarray(blocks[SCALE]).astype(held, copy=False).astype(work, copy=False)
        zeros = np.asarray(blocks[ZERO]).astype(held, copy=False).astype(work, copy=False)
        values = unpack_nibbles(blocks[VALUES], self.dim).astype(work)
        with np.errstate(all="ignore"):
            np.subtract(values, np.take(zeros, columns, axis=-1), out=values)
            np.multiply(values, np.take(scales, columns, axis=-1), out=values)
        return values.astype(np.float32, copy=False)

    def encode(self, values: np.ndarray) -> dict[str, np.ndarray]:
        if self.block_size is None:
            raise UnsupportedEdit("the block size of this int4 table is not known")
        values = _held(values, self.dim, self.scale_dtype)
        with np.errstate(all="ignore"):
            quantized, scale, zero = _grouped_quantize(values.T, self.block_size)
        return {
            VALUES: pack_nibbles(quantized.T),
            SCALE: scale.T.astype(numpy_dtype(self.scale_dtype)),
            ZERO: zero.T.astype(numpy_dtype(self.zero_dtype)),
        }
