"""Values for new rows of a table: from the old rows' statistics, zeros, or noise.

`mean` is the mean of the old rows, accumulated in float64. `mean-cov` draws from a
normal with the old rows' mean and 1e-9 times their covariance, as Hugging Face's
`resize_token_embeddings` does, falling back to the mean where that covariance is not
positive-definite. `normal:STD` draws from N(0, STD²).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from embcli.errors import BadArgument

METHODS = ("mean", "mean-cov", "zeros", "normal:STD")
COVARIANCE_SCALE = 1e-9
COVARIANCE_LIMIT_DIM = 16384


@dataclass(frozen=True)
class Init:
    """How new rows are filled: `method` is mean, mean-cov, zeros or normal; `std` is
    the standard deviation of `normal`."""

    method: str
    std: float = 0.0

    @property
    def needs_statistics(self) -> bool:
        return self.method in ("mean", "mean-cov")

    def __str__(self) -> str:
        return f"normal:{self.std:g}" if self.method == "normal" else self.method


def parse_init(text: str) -> Init:
    """`mean`, `mean-cov`, `zeros` or `normal:STD` (STD a positive number)."""
    if text in ("mean", "mean-cov", "zeros"):
        return Init(text)
    if text.startswith("normal:"):
        try:
            std = float(text.split(":", 1)[1])
        except ValueError:
            std = float("nan")
        if np.isfinite(std) and std > 0:
            return Init("normal", std)
    raise BadArgument(f"unknown init {text!r}; use one of {', '.join(METHODS)}")


class RowStatistics:
    """The mean (and, when asked, the covariance) of rows seen a block at a time,
    accumulated in float64."""

    def __init__(self, dim: int, covariance: bool) -> None:
        self.count = 0
        self.total = np.zeros(dim, dtype=np.float64)
        self.products = np.zeros((dim, dim), dtype=np.float64) if covariance else None

    def add(self, block: np.ndarray) -> None:
        values = np.asarray(block)
        total = values.sum(axis=0, dtype=np.float64)
        # A NaN or an infinity anywhere in a column makes its float64 sum one too (finite
        # values cannot overflow it), so finite sums mean there is no row to leave out.
        if values.dtype.kind == "f" and not np.isfinite(total).all():
            values = values[np.isfinite(values).all(axis=1)]
            total = values.sum(axis=0, dtype=np.float64)
        self.count += len(values)
        self.total += total
        if self.products is not None:
            wide = values.astype(np.float64)
            self.products += wide.T @ wide

    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)

    def covariance(self) -> np.ndarray | None:
        if self.products is None or self.count < 2:
            return None
        mean = self.mean()
        return (self.products - self.count * np.outer(mean, mean)) / (self.count - 1)


def statistics(blocks: Iterable[np.ndarray], dim: int, init: Init) -> RowStatistics:
    """The statistics `init` needs, over the rows of `blocks`."""
    wants_covariance = init.method == "mean-cov" and dim <= COVARIANCE_LIMIT_DIM
    found = RowStatistics(dim, wants_covariance)
    for block in blocks:
        found.add(block)
    return found


def new_rows(
    init: Init, count: int, dim: int, found: RowStatistics | None, rng: np.random.Generator
) -> np.ndarray:
    """`count` new rows of width `dim` as float64."""
    if init.method == "zeros" or count == 0:
        return np.zeros((count, dim), dtype=np.float64)
    if init.method == "normal":
        return rng.normal(0.0, init.std, size=(count, dim))
    assert found is not None
    mean = found.mean()
    if init.method == "mean-cov":
        covariance = found.covariance()
        if covariance is not None and _positive_definite(COVARIANCE_SCALE * covariance):
            return rng.multivariate_normal(
                mean, COVARIANCE_SCALE * covariance, size=count, method="cholesky"
            )
    return np.repeat(mean[None, :], count, axis=0)


def _positive_definite(matrix: np.ndarray) -> bool:
    try:
        np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        return False
    return True
