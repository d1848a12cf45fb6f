"""Arrow list columns as NumPy arrays, checked: the embedding and seen-item columns of scoring batches.

Imports only numpy and pyarrow, so the Spark scorers of ``jobs.scoring`` and
the Keras scorers of ``models`` read these columns the same way.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def float_matrix(column: pa.Array, dim: int, ids: pa.Array, what: str) -> np.ndarray:
    """A list<float> column of length-``dim`` rows -> [n, dim] float32, checked (``what`` names it in errors)."""
    n = len(column)
    lengths = column.value_lengths().fill_null(-1).to_numpy(zero_copy_only=False)
    if n and (lengths != dim).any():
        bad = int(np.nonzero(lengths != dim)[0][0])
        found = "null" if lengths[bad] < 0 else f"length {lengths[bad]}"
        raise ValueError(
            f"{what}: id {ids[bad].as_py()!r} has a {found} vector, expected length {dim} "
            f"(the width of the item side); score users and items of the same model"
        )
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, dim)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        bad = int(np.nonzero(~finite)[0][0])
        raise ValueError(f"{what}: id {ids[bad].as_py()!r} has a NaN or infinite value; fix the model output")
    return values


def list_offsets(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A nullable list<int> column -> (offsets [n + 1] from 0, values), nulls as empty lists."""
    lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = column.flatten().to_numpy(zero_copy_only=False)
    return offsets, values


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """[n, d] -> [n, d] float32 rows of unit length (a zero row stays zero: its cosine with anything is 0)."""
    matrix = np.asarray(matrix, np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
