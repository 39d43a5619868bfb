"""Dtypes numpy lacks. `ml_dtypes` costs half a second to import, so it is imported only
when a table really is bfloat16."""

from __future__ import annotations

from typing import Any

import numpy as np

BFLOAT16 = "bfloat16"


def bfloat16() -> np.dtype:
    """numpy's dtype for bfloat16 values (imports ml_dtypes)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def is_bfloat16(dtype: Any) -> bool:
    """Whether a dtype (or anything with one) is bfloat16, without importing ml_dtypes."""
    dtype = getattr(dtype, "dtype", dtype)
    try:
        return np.dtype(dtype).name == BFLOAT16
    except TypeError:
        return str(dtype) == BFLOAT16


def dtype_name(dtype: np.dtype) -> str:
    """A dtype's name as users know it: float32, float16, bfloat16, int8."""
    return BFLOAT16 if is_bfloat16(dtype) else np.dtype(dtype).name
