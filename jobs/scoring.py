"""Exhaustive top-K scoring with seen-item exclusion, inside Spark.

score(u, i) = <user vector, item vector> for factorised models; any other
model plugs its own per-task scorer into ``score_in_spark``.

* The item matrix (the catalogue in item-id order) is broadcast, split into
  blocks of at most ``item_block_bytes`` when the catalogue is larger; each
  block is scored by its own pass and the per-block top-Ks are merged
  exactly by a window over users.
* Each partition of users is scored ``block_rows`` users at a time: one matrix
  product into a reused [block_rows, items] buffer, seen items set to -inf
  *before* selection, then the exact two-level top-K of ``jobs.topk``
  (equal scores: the lower item id wins).

Task memory is bounded by the block sizes (the item block, the score buffer
and one Arrow batch of ``spark.sql.execution.arrow.maxRecordsPerBatch``
users), not by the number of users. Embedding tables are computed and read
by ``jobs.embeddings``; who is scored how, by ``jobs.recommend``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs import topk
from jobs.arrays import float_matrix, list_offsets

RECOMMENDATION_COLUMNS = ("user_id", "rank", "item_id", "score", "source")

DEFAULT_BLOCK_ROWS = 128
DEFAULT_ITEM_BLOCK_BYTES = 256 * 2**20
OUTPUT_USERS = 2048  # users per output batch of a scoring worker (see _score_arrow_batches)

# Objects built once per Python worker process (Spark reuses workers across
# tasks: spark.python.worker.reuse), e.g. a loaded Keras tower.
_WORKER_CACHE: dict[str, Any] = {}


def worker_cached(key: str, build: Callable[[], Any]) -> Any:
    """``build()`` the first time ``key`` is asked for in this process, then the same object."""
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = build()
    return _WORKER_CACHE[key]


def _blas_single_thread():
    """Context manager: one BLAS thread per Spark task (Spark runs one task per core)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


# -- Arrow helpers ------------------------------------------------------------------
_SPARK_TYPES = {pa.int8(): "tinyint", pa.int16(): "smallint", pa.int32(): "int", pa.int64(): "bigint"}


def spark_id_type(dtype: pa.DataType) -> str | None:
    """Spark SQL type of an id column of Arrow type ``dtype`` (None: not an id type nightrec supports)."""
    if dtype in _SPARK_TYPES:
        return _SPARK_TYPES[dtype]
    return "string" if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) else None


def _spark_type(array: pa.Array) -> str:
    found = spark_id_type(array.type)
    if found is None:
        raise TypeError(f"item ids of Arrow type {array.type} are not supported; use integer or string ids")
    return found


def check_catalogue(item_ids: pa.Array, item_matrix: np.ndarray) -> np.ndarray:
    """Validate the catalogue and return the matrix as float32.

    Args:
        item_ids: [m] ids in catalogue order, strictly increasing (so "lower
            position wins a tie" means "lower item id wins").
        item_matrix: [m, d] finite embeddings in the same order.
    """
    matrix = np.asarray(item_matrix, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(item_ids):
        raise ValueError(f"item matrix has shape {matrix.shape}, expected ({len(item_ids)}, d): one row per item id")
    ids = item_ids.to_numpy(zero_copy_only=False)
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
        raise ValueError("item ids must be unique and sorted ascending (sort the catalogue by item_id first)")
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        raise ValueError(
            f"item {item_ids[int(np.nonzero(~finite)[0][0])].as_py()!r} has a NaN or infinite embedding value; "
            f"fix the model output"
        )
    return matrix


def item_blocks(m: int, d: int, budget_bytes: int, group_width: int = topk.DEFAULT_GROUP_WIDTH) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) catalogue ranges whose float32 [rows, d] matrix fits ``budget_bytes``.

    Every block but the last holds a multiple of ``group_width`` rows.
    """
    if m == 0:
        return [(0, 0)]
    rows = max(group_width, (budget_bytes // max(4 * d, 1)) // group_width * group_width)
    count = math.ceil(m / rows)
    return [(b * rows, min(m, (b + 1) * rows)) for b in range(count)]


# -- the scoring kernel (runs in the Python workers) -----------------------------------------
class BlockScorer:
    """Scores blocks of users against one block of the catalogue.

    Args:
        item_matrix: [m, d] float32 embeddings of catalogue positions lo..lo+m.
        k: results per user.
        block_rows: users per matrix product.
        col_offset: catalogue position of the block's first item.
        group_width: first-level group width of the selection.
    """

    def __init__(self, item_matrix: np.ndarray, k: int, *, block_rows: int = DEFAULT_BLOCK_ROWS,
                 col_offset: int = 0, group_width: int = topk.DEFAULT_GROUP_WIDTH):
        self.m, self.dim = item_matrix.shape
        self.width = topk.padded_width(self.m, group_width)
        padded = np.zeros((self.width, self.dim), np.float32)
        padded[: self.m] = item_matrix
        self.items_t = np.ascontiguousarray(padded.T)  # [d, width]
        self.k, self.block_rows, self.col_offset, self.group_width = k, block_rows, col_offset, group_width
        self.buffer = np.empty((block_rows, self.width), np.float32)

    def top_k(self, user_emb: np.ndarray, seen_offsets: np.ndarray, seen_pos: np.ndarray):
        """Top-k unseen items of up to ``block_rows`` users.

        Args:
            user_emb: [n, d] float32, n <= block_rows.
            seen_offsets: [n + 1] offsets of each user's seen positions in ``seen_pos``.
            seen_pos: global catalogue positions to exclude.

        Returns:
            (rows [r], positions [r] (global), scores [r]) ordered by row then rank;
            a row has min(k, unseen items in this block) entries.
        """
        n = user_emb.shape[0]
        scores = self.buffer[:n]
        np.matmul(user_emb, self.items_t, out=scores)
        scores[:, self.m :] = topk.NEG_INF
        topk.mask_positions(scores, seen_offsets, seen_pos, col_offset=self.col_offset)
        return topk.select_top_k(scores, self.k, group_width=self.group_width, col_offset=self.col_offset)

    def top_k_batch(self, batch: pa.RecordBatch):
        """``top_k`` of an Arrow batch [user_id, embedding, seen_pos, ...] of up to block_rows users."""
        emb = float_matrix(batch.column("embedding"), self.dim, batch.column("user_id"), "user embeddings")
        return self.top_k(emb, *list_offsets(batch.column("seen_pos")))


def score_block(user_emb: np.ndarray, item_matrix: np.ndarray, seen: list[np.ndarray], k: int):
    """Top-k unseen items of a block of users (in-process, one item block).

    Args:
        user_emb: [n, d] float32; item_matrix: [m, d] float32.
        seen: n arrays of catalogue positions to exclude.
        k: items per user.

    Returns:
        (row [r], position [r], score [r]) flat, ordered by row then rank.
    """
    n = len(seen)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seen])]).astype(np.int64)
    positions = np.concatenate([np.asarray(s, np.int64) for s in seen]) if n else np.zeros(0, np.int64)
    scorer = BlockScorer(np.asarray(item_matrix, np.float32), k, block_rows=max(n, 1))
    return scorer.top_k(np.asarray(user_emb, np.float32), offsets, positions)


def _score_arrow_batches(batches: Iterator[pa.RecordBatch], scorer, item_ids: pa.Array | None) -> Iterator[pa.RecordBatch]:
    """users batches -> recommendation batches (with item ids) or candidate batches (positions).

    Users are scored ``scorer.block_rows`` at a time; the results of about
    ``OUTPUT_USERS`` users leave as one output batch, so the JVM converts and
    writes one while the worker scores the next, and little is left to write
    after the last block.
    """
    step = max(1, OUTPUT_USERS // scorer.block_rows) * scorer.block_rows
    with _blas_single_thread():
        for batch in batches:
            for lo in range(0, batch.num_rows, step):
                out = _score_users(batch.slice(lo, step), scorer, item_ids)
                if out is not None:
                    yield out


def _score_users(batch: pa.RecordBatch, scorer, item_ids: pa.Array | None) -> pa.RecordBatch | None:
    """One output batch of ``_score_arrow_batches`` (None when no user has a result)."""
    found = []
    for start in range(0, batch.num_rows, scorer.block_rows):
        rows, pos, vals = scorer.top_k_batch(batch.slice(start, scorer.block_rows))
        found.append((rows + start, pos, vals))
    if not found:
        return None
    rows, pos, vals = (np.concatenate(parts) for parts in zip(*found))
    if rows.size == 0:
        return None
    take = pa.array(rows)
    head = [batch.column("user_id").take(take)]
    tail = [pa.array(vals, type=pa.float32()), batch.column("source").take(take)]
    if item_ids is None:
        return pa.RecordBatch.from_arrays(
            head + [pa.array(pos.astype(np.int32))] + tail, names=["user_id", "pos", "score", "source"]
        )
    rank = topk.rank_within_rows(rows, batch.num_rows) + 1
    return pa.RecordBatch.from_arrays(
        head + [pa.array(rank.astype(np.int32)), item_ids.take(pa.array(pos))] + tail,
        names=list(RECOMMENDATION_COLUMNS),
    )


def score_in_spark(
    rows: DataFrame,
    item_ids: pa.Array,
    blocks: list[tuple[int, Any]],
    build_scorer: Callable[[Any, int], Any],
    *,
    k: int,
    user_id_type: str | None = None,
    partitions: int | None = None,
) -> DataFrame:
    """Top-K of every user row, one ``mapInArrow`` pass per item block, merged exactly.

    Args:
        rows: DataFrame[user_id, source, seen_pos, and the columns the scorer reads].
        item_ids: [m] catalogue ids, unique and ascending.
        blocks: (first catalogue position, payload) of each item block; each
            payload is broadcast on its own, and with several blocks ``rows``
            is computed once per block (cache it if it is expensive).
        build_scorer: ``build_scorer(payload, first_position)`` -> a scorer
            with ``block_rows`` and ``top_k_batch(batch) -> (rows, positions, scores)``
            (see ``BlockScorer``); it runs once per task.
        k: recommendations per user.
        user_id_type: Spark SQL type of user_id (default: read from ``rows``).
        partitions: repartition the users into this many tasks first (after
            joins, adaptive execution may coalesce a small table into one
            partition, i.e. one core); None keeps the input's partitions.

    Returns:
        DataFrame[user_id, rank: int (1..), item_id, score: float, source: string].
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    item_ids = item_ids.cast(pa.string()) if pa.types.is_large_string(item_ids.type) else item_ids
    spark = rows.sparkSession
    user_type = user_id_type or dict(rows.dtypes)["user_id"]
    if partitions:
        rows = rows.repartition(partitions)
    if len(blocks) == 1:
        payload = spark.sparkContext.broadcast((item_ids, blocks[0][1]))

        def score_all(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            ids, items = payload.value
            yield from _score_arrow_batches(batches, build_scorer(items, 0), ids)

        schema = f"user_id {user_type}, rank int, item_id {_spark_type(item_ids)}, score float, source string"
        return rows.mapInArrow(score_all, schema)

    candidates = None
    for lo, block_payload in blocks:
        block = spark.sparkContext.broadcast(block_payload)

        def score_one_block(batches, block=block, lo=lo):
            yield from _score_arrow_batches(batches, build_scorer(block.value, lo), None)

        part = rows.mapInArrow(score_one_block, f"user_id {user_type}, pos int, score float, source string")
        candidates = part if candidates is None else candidates.unionByName(part)
    by_user = Window.partitionBy("user_id").orderBy(F.col("score").desc(), F.col("pos").asc())
    best = candidates.withColumn("rank", F.row_number().over(by_user)).where(F.col("rank") <= k)
    catalogue = F.broadcast(catalogue_frame(spark, item_ids))
    return best.join(catalogue, on="pos").select(
        "user_id", F.col("rank").cast("int").alias("rank"), "item_id", "score", "source"
    )


def top_k_for_users(
    users: DataFrame,
    item_ids: pa.Array,
    item_matrix: np.ndarray,
    *,
    k: int,
    user_id_type: str | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    item_block_bytes: int = DEFAULT_ITEM_BLOCK_BYTES,
    group_width: int = topk.DEFAULT_GROUP_WIDTH,
    partitions: int | None = None,
) -> DataFrame:
    """Exhaustive top-K of every user row against the whole catalogue (factorised models).

    Args:
        users: DataFrame[user_id, embedding: array<float> (length d),
            seen_pos: array<int> (nullable; catalogue positions to exclude),
            source: string (copied to the output)].
        item_ids: [m] catalogue ids, unique and ascending.
        item_matrix: [m, d] float32 item embeddings in the same order.
        k: recommendations per user.
        user_id_type: Spark SQL type of user_id (default: read from ``users``).
        block_rows: users per matrix product (task memory: block_rows x items x 4 bytes).
        item_block_bytes: largest item matrix broadcast as one block; a larger
            catalogue is scored block by block and the top-Ks merged.
        group_width: first-level group width of the selection (``jobs.topk``).
        partitions: see ``score_in_spark``.

    Returns:
        DataFrame[user_id, rank: int (1..), item_id, score: float, source: string]:
        min(k, unseen items) rows per user, best first, ties to the lower item id.
    """
    matrix = check_catalogue(item_ids, item_matrix)
    spans = item_blocks(len(item_ids), matrix.shape[1], item_block_bytes, group_width)
    blocks = [(lo, matrix[lo:hi]) for lo, hi in spans]

    def build_scorer(items: np.ndarray, lo: int) -> BlockScorer:
        return BlockScorer(items, k, block_rows=block_rows, col_offset=lo, group_width=group_width)

    rows = users.select("user_id", "embedding", "seen_pos", "source")
    return score_in_spark(rows, item_ids, blocks, build_scorer, k=k, user_id_type=user_id_type, partitions=partitions)


# -- Spark-side inputs ---------------------------------------------------------------------
def catalogue_frame(spark: SparkSession, item_ids: pa.Array) -> DataFrame:
    """DataFrame[item_id, pos: int] of the catalogue (``item_ids`` in catalogue order)."""
    table = pa.table({"item_id": item_ids, "pos": pa.array(np.arange(len(item_ids), dtype=np.int32))})
    return spark.createDataFrame(table.to_pandas())


def seen_positions(events: DataFrame, catalogue: DataFrame) -> DataFrame:
    """Catalogue positions each user interacted with.

    Args:
        events: DataFrame[user_id, item_id, ...].
        catalogue: DataFrame[item_id, pos: int] (``catalogue_frame``).

    Returns:
        DataFrame[user_id, seen_pos: array<int>] (items outside the catalogue dropped).
    """
    pairs = events.select("user_id", "item_id").join(F.broadcast(catalogue), on="item_id", how="inner")
    return pairs.groupBy("user_id").agg(F.array_distinct(F.collect_list("pos")).alias("seen_pos"))


