"""jobs.arrays: list columns of scoring batches as NumPy arrays, checked."""

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from jobs.arrays import float_matrix, list_offsets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_float_matrix_rows_and_errors():
    ids = pa.array(["a", "b", "c"])
    column = pa.array([[1.0, 2.0], [3.0, 4.5], [-1.0, 0.0]], pa.list_(pa.float32()))
    got = float_matrix(column, 2, ids, "user embeddings")
    assert got.dtype == np.float32 and got.tolist() == [[1.0, 2.0], [3.0, 4.5], [-1.0, 0.0]]
    assert float_matrix(pa.array([], pa.list_(pa.float32())), 4, pa.array([], pa.string()), "x").shape == (0, 4)
    with pytest.raises(ValueError, match=r"user embeddings: id 'b' has a length 1 vector, expected length 2"):
        float_matrix(pa.array([[1.0, 2.0], [3.0], [0.0, 0.0]], pa.list_(pa.float32())), 2, ids, "user embeddings")
    with pytest.raises(ValueError, match=r"user embeddings: id 'c' has a null vector, expected length 2"):
        float_matrix(pa.array([[1.0, 2.0], [3.0, 4.0], None], pa.list_(pa.float32())), 2, ids, "user embeddings")
    with pytest.raises(ValueError, match=r"user embeddings: id 'a' has a NaN or infinite value"):
        float_matrix(pa.array([[np.nan, 2.0], [3.0, 4.0], [0.0, 0.0]], pa.list_(pa.float32())), 2, ids,
                     "user embeddings")


def test_list_offsets_treats_nulls_as_empty_lists():
    offsets, values = list_offsets(pa.array([[4, 1], None, [], [7]], pa.list_(pa.int32())))
    assert offsets.tolist() == [0, 2, 2, 2, 3] and values.tolist() == [4, 1, 7]
    offsets, values = list_offsets(pa.array([], pa.list_(pa.int32())))
    assert offsets.tolist() == [0] and values.tolist() == []


def test_arrays_import_neither_spark_nor_tensorflow():
    script = "import sys, jobs.arrays; print(sorted(m for m in ('tensorflow', 'keras', 'pyspark') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
