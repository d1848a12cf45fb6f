"""Parquet -> tf.data through pyarrow record batches, read through ``jobs.storage``.

The table is never loaded whole: files are read one record batch at a time,
rows go through a bounded in-memory shuffle pool, and batches are padded
(multi-valued columns, with -1) and handed to TensorFlow with prefetching.
Each worker of a multi-worker job reads only its shard: the (file, row group)
units of the table are dealt out round-robin, so even a single-file table
splits across workers. Files are ``jobs.storage.Location``s, so a table can
live on any file system pyarrow opens (local, HDFS, object stores).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.storage import Location
from models.layers import PAD
from models.tf_runtime import tf


def check_location(value, what: str) -> Location:
    """``value`` when it is a ``jobs.storage.Location``; else a TypeError that says how to make one."""
    if not isinstance(value, Location):
        raise TypeError(f"{what} must be a jobs.storage.Location, got {type(value).__name__} {value!r}; "
                        f"wrap a path or URI as Location(...)")
    return value


def parquet_files(table: Location) -> list[Location]:
    """The data files of a Parquet folder (or the file itself), in sorted order.

    Files and folders whose name starts with '_' or '.' (``_SUCCESS``, ``.crc``) are skipped.
    """
    files = check_location(table, "a Parquet table").files(".parquet")
    if not files:
        raise FileNotFoundError(f"{table.display()}: no Parquet files found")
    return files


def read_parquet(file: Location, columns: Sequence[str] | None = None) -> pa.Table:
    """One Parquet file (all of it, or the given columns) as an Arrow table."""
    with file.open_input() as handle:
        return pq.ParquetFile(handle).read(columns=list(columns) if columns is not None else None)


def read_column(files: list[Location], name: str) -> pa.Array:
    """One column of every file, concatenated in file order: [rows]."""
    return pa.concat_arrays([read_parquet(f, [name]).column(0).combine_chunks() for f in files])


def _footer(file: Location) -> pq.FileMetaData:
    with file.open_input() as handle:
        return pq.read_metadata(handle)


def side_columns(side_spec: Mapping) -> dict[str, int]:
    """Input column -> padded length (0 for scalars) of one side's tower."""
    columns = {side_spec["id"]["name"]: 0}
    columns.update({c["name"]: 0 for c in side_spec.get("categorical", [])})
    columns.update({c["name"]: int(c["max_len"]) for c in side_spec.get("multi_categorical", [])})
    columns.update({name: 0 for name in side_spec.get("continuous", [])})
    return columns


def row_group_units(files: list[Location]) -> list[tuple[Location, int]]:
    """(file, row group) pairs of a table, in file order: the units workers share out."""
    return [(f, g) for f in files for g in range(_footer(f).num_row_groups)]


def count_rows(files: list[Location]) -> int:
    """Rows in the Parquet files (from their footers)."""
    return sum(_footer(f).num_rows for f in files)


def input_columns(spec: Mapping) -> dict[str, int]:
    """Column name -> padded length (0 for scalar columns) for a model spec."""
    return {**side_columns(spec["user"]), **side_columns(spec["item"])}


def _to_numpy(column: pa.ChunkedArray | pa.Array, pad_len: int) -> np.ndarray:
    if pad_len == 0:
        return column.to_numpy(zero_copy_only=False)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = column.flatten().to_numpy(zero_copy_only=False)
    out = np.full((len(column), pad_len), PAD, dtype=np.int32)
    lengths = np.minimum(lengths, pad_len)
    offsets = column.offsets.to_numpy()[:-1]
    rows = np.repeat(np.arange(len(column)), lengths)
    cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = values[np.repeat(offsets - offsets[0], lengths) + cols]
    return out


def arrow_columns(batch: pa.RecordBatch | pa.Table, columns: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The model inputs of an Arrow batch: column -> [rows] or [rows, padded length] (``to_feed`` dtypes)."""
    return to_feed({n: _to_numpy(batch.column(n), pad) for n, pad in columns.items()})


def iter_batches(
    files: list[Location],
    columns: Mapping[str, int],
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    pool_rows: int = 65536,
    num_shards: int = 1,
    shard_index: int = 0,
    drop_remainder: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield dicts of numpy arrays of ``batch_size`` rows from Parquet files.

    Args:
        files: Parquet files (``parquet_files``); a worker reads the (file, row group) units
            ``shard_index::num_shards`` (see ``row_group_units``).
        columns: column -> padded length (0 = scalar), from ``input_columns``.
        batch_size: rows per batch.
        shuffle: shuffle the file order and rows within a pool of ``pool_rows``.
        seed: shuffle seed (vary it per epoch).
        drop_remainder: drop the last incomplete batch.
    """
    rng = np.random.default_rng(seed)
    mine = row_group_units(files)[shard_index::num_shards]
    if shuffle:
        mine = [mine[i] for i in rng.permutation(len(mine))]
    names = list(columns)
    pool: list[dict[str, np.ndarray]] = []
    pooled = 0

    def drain(final: bool):
        nonlocal pool, pooled
        # The pool in its shuffled order, once per column: every batch is then a slice (a view).
        order = rng.permutation(pooled) if shuffle else None
        merged = {n: np.concatenate([p[n] for p in pool]) if len(pool) > 1 else pool[0][n] for n in names}
        if order is not None:
            merged = {n: a[order] for n, a in merged.items()}
        # A shuffling pool keeps half its rows for the next round, so the rows read last (the end of the
        # last unit, often a few users' rows) are mixed with earlier ones rather than batched on their own.
        keep = pool_rows // 2 if shuffle and not final else 0
        n_full = max(0, pooled - keep) // batch_size
        for b in range(n_full):
            yield {n: a[b * batch_size : (b + 1) * batch_size] for n, a in merged.items()}
        done = n_full * batch_size
        rest = pooled - done
        pool, pooled = [], 0
        if rest:
            if final:
                if not drop_remainder:
                    yield {n: a[done:] for n, a in merged.items()}
            else:
                pool, pooled = [{n: a[done:] for n, a in merged.items()}], rest

    for file, row_group in mine:
        with file.open_input() as handle:
            table = pq.ParquetFile(handle).read_row_group(row_group, columns=names)
        # Each column converted once per row group, then taken in the record batches' row ranges (at most
        # 8192 rows each), which decide when the pool is drained.
        whole = {n: _to_numpy(table.column(n), columns[n]) for n in names}
        start = 0
        for record_batch in table.to_batches(max_chunksize=8192):
            stop = start + record_batch.num_rows
            pool.append({n: a[start:stop] for n, a in whole.items()})
            pooled, start = pooled + record_batch.num_rows, stop
            if pooled >= pool_rows:
                yield from drain(final=False)
    if pooled:
        yield from drain(final=True)


def to_feed(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Numpy columns as the models take them: floats as float32, everything else int32 (no copy of a
    column that already is)."""
    return {
        n: a.astype(np.float32, copy=False) if np.issubdtype(a.dtype, np.floating) else a.astype(np.int32, copy=False)
        for n, a in batch.items()
    }


def _dtype(array: np.ndarray) -> tf.DType:
    if np.issubdtype(array.dtype, np.floating):
        return tf.float32
    if np.issubdtype(array.dtype, np.integer):
        return tf.int32
    return tf.as_dtype(array.dtype)


#: Batches ``make_dataset`` hands from Python to TensorFlow in one call (stacked).
_STACKED_BATCHES = 16


def make_dataset(
    files: list[Location],
    columns: Mapping[str, int],
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    num_shards: int = 1,
    shard_index: int = 0,
    drop_remainder: bool = False,
    repeat: bool = False,
) -> tf.data.Dataset:
    """A prefetched tf.data.Dataset of dict batches (see ``iter_batches``).

    With ``repeat`` the shard is read again and again (each pass reshuffled
    with the next seed), so every worker of a synchronous job can take the
    same number of steps even when the shards are uneven.

    The batches are those of ``iter_batches`` (``to_feed`` dtypes). They
    cross from Python to TensorFlow ``_STACKED_BATCHES`` at a time, stacked
    ([k, batch, ...]) and split again inside tf.data, so the per-call cost of
    ``from_generator`` is paid once per k batches, not once per batch.
    """
    probe = next(iter_batches(files[:1], columns, 2, shuffle=False), None)
    if probe is None:
        raise ValueError(f"{files[0].display()}: no rows")
    signature = {
        n: tf.TensorSpec(shape=(None, None) + a.shape[1:], dtype=_dtype(a)) for n, a in probe.items()
    }

    def batches():
        passes = 0
        while True:
            produced = False
            for batch in iter_batches(
                files,
                columns,
                batch_size,
                shuffle=shuffle,
                seed=seed + passes,
                num_shards=num_shards,
                shard_index=shard_index,
                drop_remainder=drop_remainder,
            ):
                produced = True
                yield to_feed(batch)
            passes += 1
            if not repeat or not produced:  # an empty shard must not spin forever
                return

    def stacked():
        group: list[dict[str, np.ndarray]] = []
        for batch in batches():
            if group and (len(group) == _STACKED_BATCHES or len(next(iter(batch.values())))
                          != len(next(iter(group[0].values())))):
                yield {n: np.stack([b[n] for b in group]) for n in group[0]}
                group = []
            group.append(batch)
        if group:
            yield {n: np.stack([b[n] for b in group]) for n in group[0]}

    return (tf.data.Dataset.from_generator(stacked, output_signature=signature)
            .flat_map(tf.data.Dataset.from_tensor_slices).prefetch(tf.data.AUTOTUNE))


def read_columns(files: list[Location], columns: Mapping[str, int]) -> dict[str, np.ndarray]:
    """All rows of the given columns (for small side tables such as the catalogue)."""
    out = {n: [] for n in columns}
    for batch in iter_batches(files, columns, 1 << 30, shuffle=False, pool_rows=1 << 30):
        for n in columns:
            out[n].append(batch[n])
    return {n: np.concatenate(v) if v else np.zeros(0) for n, v in out.items()}
