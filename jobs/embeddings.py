"""Embedding tables of factorised models: computed in Spark, read back for scoring.

An embedding table is a Parquet folder [``{side}_id``, ``embedding``:
list<float>] sorted by id; ``<user embedding, item embedding>`` is the
model's score. The catalogue side is small enough to collect on the driver
(``load_embeddings``, read with pyarrow through ``jobs.storage``); the user
side is read lazily by Spark (``read_embeddings``).

Published embedding tables (``user_embeddings/``, ``item_embeddings/``:
``write_embedding_table``) are for readers without nightrec's code: the
vector is a fixed-size list of float32 and the manifest states the
dimension, whether the vectors are normalised and the score function.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession

from jobs.arrays import unit_rows
from jobs.scoring import float_matrix, spark_id_type, worker_cached
from jobs.run_catalogue import MANIFEST
from jobs.storage import Location


def embed_rows(
    features: DataFrame,
    *,
    id_col: str,
    columns: list[str],
    build_embedder: Callable[[], Callable[[pa.RecordBatch], np.ndarray]],
    cache_key: str,
) -> DataFrame:
    """Embed every row of a feature table in Spark, the model built once per Python worker.

    Args:
        features: DataFrame with ``id_col`` and the tower's input ``columns``.
        id_col: the id column carried to the output.
        columns: the embedder's input columns.
        build_embedder: picklable zero-argument callable (e.g. a
            ``functools.partial`` of a model loader) returning
            ``embed(batch: pa.RecordBatch) -> [rows, d] float32``; it runs once
            per worker process and key.
        cache_key: names the embedder in the worker cache (include the
            model file's identity, e.g. path and modification time).

    Returns:
        DataFrame[id_col, embedding: array<float>].
    """
    id_type = dict(features.dtypes)[id_col]

    def embed_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        embed = worker_cached(cache_key, build_embedder)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            emb = np.asarray(embed(batch), dtype=np.float32)
            flat = pa.array(emb.reshape(-1), type=pa.float32())
            lists = pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]).cast(pa.list_(pa.float32()))
            yield pa.RecordBatch.from_arrays([batch.column(id_col), lists], names=[id_col, "embedding"])

    return features.select(id_col, *columns).mapInArrow(embed_partition, f"{id_col} {id_type}, embedding array<float>")


def _sorted_matrix(table: pa.Table, id_col: str, what: str) -> tuple[pa.Array, np.ndarray]:
    order = pc.sort_indices(table.column(id_col))
    ids = table.column(id_col).take(order).combine_chunks()
    column = table.column("embedding").take(order).combine_chunks()
    dim = int(column.value_lengths()[0].as_py()) if len(column) else 0
    return ids, float_matrix(column, dim, ids, what)


def collect_embeddings(frame: DataFrame, id_col: str) -> tuple[pa.Array, np.ndarray]:
    """An embeddings DataFrame[id_col, embedding] -> (ids ascending, [n, d] float32) on the driver."""
    return _sorted_matrix(frame.select(id_col, "embedding").toArrow(), id_col, "item embeddings")


def read_ids(location: Location, id_col: str) -> pa.Array:
    """The ``id_col`` of a Parquet table, sorted ascending (e.g. the catalogue order of an item feature table)."""
    ids = location.parquet_dataset().to_table(columns=[id_col]).column(0).combine_chunks()
    return ids.take(pc.sort_indices(ids))


def load_embeddings(location: Location, id_col: str) -> tuple[pa.Array, np.ndarray]:
    """An embeddings table [id_col, embedding] -> (ids ascending, [n, d] float32) on the driver.

    Read by pyarrow (a Spark job would cost ~1 s of the scoring job's ~3).
    """
    table = location.parquet_dataset().to_table(columns=[id_col, "embedding"])
    return _sorted_matrix(table, id_col, f"{location.display()}: embeddings")


_SPARK_ELEMENT_TYPES = {pa.float32(): "float", pa.float64(): "double"}


def read_embeddings(spark: SparkSession, location: Location, id_col: str) -> DataFrame:
    """An embeddings table -> DataFrame[id_col, embedding: array<float or double>], read by Spark lazily.

    The schema is taken from the files' footers with pyarrow, which spares
    the Spark job that ``spark.read.parquet`` runs to infer it (0.2-0.8 s of
    a ~3 s scoring job on the 2-core box); a schema this cannot express is
    inferred by Spark.
    """
    schema = location.parquet_dataset().schema
    ddl = None
    if id_col in schema.names and "embedding" in schema.names:
        id_type = spark_id_type(schema.field(id_col).type)
        emb = schema.field("embedding").type
        element = _SPARK_ELEMENT_TYPES.get(emb.value_type) if pa.types.is_list(emb) else None
        if id_type and element:
            ddl = f"`{id_col}` {id_type}, embedding array<{element}>"
    reader = spark.read.schema(ddl) if ddl else spark.read
    return reader.parquet(location.uri).select(id_col, "embedding")


#: Score functions a published embedding table can declare: score = <u, i>, or <u, i> / (|u| |i|).
SCORE_FUNCTIONS = ("dot", "cosine")


def embedding_table_schema(id_type: pa.DataType, id_col: str, dim: int) -> pa.Schema:
    """[id_col, embedding: fixed_size_list<float32>[dim], model_version: string] (a published embedding table)."""
    return pa.schema([(id_col, id_type), ("embedding", pa.list_(pa.float32(), dim)), ("model_version", pa.string())])


def write_embedding_table(
    embeddings: DataFrame,
    location: Location,
    *,
    id_col: str,
    model_version: str,
    score_function: str = "dot",
    normalise: bool = False,
    rows_per_file: int = 2_000_000,
) -> dict[str, Any]:
    """Write an embeddings DataFrame as a published embedding table: Parquet files written by pyarrow in Spark.

    Spark has no fixed-size array type, so each task writes its rows itself
    (through ``location``'s file system) with the vector as an Arrow
    ``fixed_size_list<float32>[d]``. In the Parquet file that is a LIST of
    FLOAT; the Arrow schema stored beside it gives it back to pyarrow and
    pandas as fixed-size lists (pandas: one NumPy float32 array per row);
    DuckDB 1.x reads ``FLOAT[]`` (``embedding::FLOAT[d]`` for its array
    functions) and Spark ``array<float>``. Files are
    ``part-NNNNN.parquet``, ordered by id (range-partitioned, sorted).
    Nothing else is written: ``_manifest.json`` and ``_SUCCESS`` come from
    the caller (``jobs.commit.NightCommit.stage_files``), with the returned facts.

    Args:
        embeddings: DataFrame[id_col, embedding: array<float or double> of one length d] (``embed_rows``).
        location: the folder to write (replaced).
        id_col: ``user_id`` or ``item_id``.
        model_version: written in every row (e.g. the model's ds and run id).
        score_function: ``dot`` or ``cosine``, how a reader scores a user against an item.
        normalise: write unit-length vectors (zero vectors stay zero); with it, dot equals cosine.
        rows_per_file: the most rows in one file.

    Returns:
        The manifest facts: {"id_column", "dimension", "dtype": "float32", "normalised", "score_function",
        "model_version", "row_count", "files"}.
    """
    if score_function not in SCORE_FUNCTIONS:
        raise ValueError(f"score_function {score_function!r} is not one of {', '.join(SCORE_FUNCTIONS)}: "
                         f"how does the model score a user against an item?")
    if not model_version:
        raise ValueError("model_version must be a non-empty string (e.g. the model's ds and run id)")
    frame = embeddings.select(id_col, "embedding")
    rows = frame.count()
    n_files = max(1, -(-rows // rows_per_file))
    ordered = frame.repartitionByRange(n_files, id_col).sortWithinPartitions(id_col)
    location.delete()
    location.mkdirs()

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        parts = [b for b in batches if b.num_rows]
        if not parts:
            return
        table = pa.Table.from_batches(parts).combine_chunks()
        ids, column = table.column(id_col).chunk(0), table.column("embedding").chunk(0)
        dim = int(column.value_lengths()[0].as_py())
        matrix = float_matrix(column, dim, ids, f"{id_col} embeddings")
        if normalise:
            matrix = unit_rows(matrix)
        out = pa.table([ids, pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), dim),
                        pa.array([model_version] * len(ids), pa.string())],
                       schema=embedding_table_schema(ids.type, id_col, dim))
        name = f"part-{TaskContext.get().partitionId():05d}.parquet"
        with (location / name).fs.open_output_stream((location / name).path) as sink:
            pq.write_table(out, sink)
        yield pa.RecordBatch.from_pydict({"file": [name], "rows": [len(ids)], "dim": [dim]},
                                         schema=pa.schema([("file", pa.string()), ("rows", pa.int64()),
                                                           ("dim", pa.int32())]))

    written = ordered.mapInArrow(write_partition, "file string, rows bigint, dim int").collect()
    dims = sorted({r.dim for r in written})
    if len(dims) > 1:
        location.delete()
        raise ValueError(f"{location.display()}: embeddings of widths {dims} in one table; every vector of a "
                         f"model has the same length")
    return {"id_column": id_col, "dimension": dims[0] if dims else None, "dtype": "float32",
            "normalised": bool(normalise), "score_function": score_function, "model_version": model_version,
            "row_count": sum(r.rows for r in written), "files": sorted(r.file for r in written)}


def read_embedding_table(location: Location) -> tuple[pa.Table, dict[str, Any]]:
    """A published embedding partition -> (its pyarrow table, sorted by files, and its ``_manifest.json``)."""
    manifest = json.loads((location / MANIFEST).read_text())
    return location.parquet_dataset().to_table(), manifest
