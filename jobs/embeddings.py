"""Embedding tables of factorised models: computed in Spark, read back for scoring.

An embedding table is a Parquet folder [``{side}_id``, ``embedding``:
list<float>] sorted by id; ``<user embedding, item embedding>`` is the
model's score. The catalogue side is small enough to collect on the driver
(``load_embeddings``, read with pyarrow through ``jobs.storage``); the user
side is read lazily by Spark (``read_embeddings``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession

from jobs.scoring import float_matrix, spark_id_type, worker_cached
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
