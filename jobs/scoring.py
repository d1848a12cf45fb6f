"""Exhaustive top-K scoring with seen-item exclusion, inside Spark.

The item matrix (the whole catalogue, in item-id order) is broadcast; each
partition of users is scored with one matrix product per block of users,
seen items are masked to -inf *before* selection, and the top-K is selected
with deterministic tie-breaking (equal scores: the lower item id wins).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

RECOMMENDATION_COLUMNS = ("user_id", "rank", "item_id", "score", "source")


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-row top-k of a score matrix; ties go to the lower column.

    Args:
        scores: [n, m] float32; -inf marks excluded entries.
        k: how many to select per row.

    Returns:
        (columns [n, k'] int64, values [n, k'] float32) with k' = min(k, m),
        sorted by descending value then ascending column. Excluded entries
        (-inf) may appear at the end of a row when fewer than k remain; the
        caller drops them.
    """
    n, m = scores.shape
    kk = min(k, m)
    if kk == 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
    if kk < m:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        threshold = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
        # Rows whose k-th value is tied with others outside the partition: redo exactly.
        above = (scores > threshold).sum(axis=1)
        equal = (scores == threshold).sum(axis=1)
        tied = np.nonzero(above + equal > kk)[0]
        cand = part
    else:
        cand = np.tile(np.arange(m), (n, 1))
        tied = np.zeros(0, dtype=np.int64)
    values = np.take_along_axis(scores, cand, axis=1)
    order = np.lexsort((cand, -values), axis=1)
    cols = np.take_along_axis(cand, order, axis=1)
    vals = np.take_along_axis(values, order, axis=1)
    for row in tied:
        full = np.lexsort((np.arange(m), -scores[row]))[:kk]
        cols[row] = full
        vals[row] = scores[row, full]
    return cols.astype(np.int64), vals.astype(np.float32)


def score_block(
    user_emb: np.ndarray, item_matrix: np.ndarray, seen: list[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k unseen items of a block of users.

    Args:
        user_emb: [n, d] float32; item_matrix: [m, d] float32.
        seen: n arrays of catalogue positions to exclude.
        k: items per user.

    Returns:
        (row [r], position [r], score [r]) flat, ordered by row then rank;
        a row has min(k, unseen items) entries.
    """
    scores = user_emb @ item_matrix.T
    rows = np.repeat(np.arange(len(seen)), [len(s) for s in seen])
    if rows.size:
        scores[rows, np.concatenate(seen)] = -np.inf
    cols, vals = top_k_rows(scores, k)
    keep = np.isfinite(vals)
    row_idx = np.broadcast_to(np.arange(len(seen))[:, None], cols.shape)
    return row_idx[keep], cols[keep], vals[keep]


def seen_positions(events: DataFrame, item_ids: DataFrame) -> DataFrame:
    """Catalogue positions each user interacted with.

    Args:
        events: DataFrame[user_id, item_id, ...].
        item_ids: the catalogue DataFrame[item_id, pos: int].

    Returns:
        DataFrame[user_id, seen_pos: array<int>].
    """
    pairs = events.select("user_id", "item_id").distinct().join(item_ids, on="item_id", how="inner")
    return pairs.groupBy("user_id").agg(F.collect_list("pos").alias("seen_pos"))


def catalogue_frame(spark: SparkSession, item_ids: pa.Array) -> DataFrame:
    """DataFrame[item_id, pos] of the catalogue (``item_ids`` in catalogue order)."""
    table = pa.table({"item_id": item_ids, "pos": pa.array(np.arange(len(item_ids), dtype=np.int32))})
    return spark.createDataFrame(table.to_pandas())


def _arrow_type_name(array: pa.Array) -> str:
    if pa.types.is_integer(array.type):
        return "bigint" if array.type.bit_width > 32 else "int"
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return "string"
    raise TypeError(f"unsupported id type {array.type}")


def top_k_for_users(
    users: DataFrame,
    item_ids: pa.Array,
    item_matrix: np.ndarray,
    *,
    k: int,
    user_id_type: str,
    block_rows: int = 1024,
) -> DataFrame:
    """Exhaustive top-K for every user row.

    Args:
        users: DataFrame[user_id, embedding: array<float>, seen_pos: array<int> (nullable),
            source: string (copied to the output: "model", "features", "popularity")].
        item_ids: [m] ids of the catalogue, in position order.
        item_matrix: [m, d] float32 item embeddings in the same order.
        k: recommendations per user.
        user_id_type: Spark SQL type of user_id (e.g. "bigint", "string").
        block_rows: users scored per matrix product (bounds task memory).

    Returns:
        DataFrame[user_id, rank: int (1..), item_id, score: float, source: string].
    """
    spark = users.sparkSession
    payload = spark.sparkContext.broadcast((item_ids, np.ascontiguousarray(item_matrix, dtype=np.float32)))
    item_type = _arrow_type_name(item_ids)

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        ids, matrix = payload.value
        dim = matrix.shape[1]
        for big in batches:
            for start in range(0, big.num_rows, block_rows):
                batch = big.slice(start, block_rows)
                n = batch.num_rows
                emb_col = batch.column("embedding")
                emb = emb_col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, dim)
                seen_col = batch.column("seen_pos")
                seen = [np.asarray(s if s is not None else [], dtype=np.int64) for s in seen_col.to_pylist()]
                rows, pos, vals = score_block(emb, matrix, seen, k)
                counts = np.bincount(rows, minlength=n)
                rank = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts) + 1
                yield pa.RecordBatch.from_arrays(
                    [
                        batch.column("user_id").take(pa.array(rows)),
                        pa.array(rank.astype(np.int32)),
                        ids.take(pa.array(pos)),
                        pa.array(vals, type=pa.float32()),
                        batch.column("source").take(pa.array(rows)),
                    ],
                    names=list(RECOMMENDATION_COLUMNS),
                )

    schema = f"user_id {user_id_type}, rank int, item_id {item_type}, score float, source string"
    return users.select("user_id", "embedding", "seen_pos", "source").mapInArrow(score_partition, schema)
