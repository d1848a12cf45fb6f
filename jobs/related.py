"""Related items ("more like this"): the top-K other items of every catalogue item, and how good they are.

Three sources of item-item scores, one output layout (``RELATED_COLUMNS``):

* ``from_embeddings``: cosine similarity of a factorised model's item
  embeddings, cos(a, b) = <e_a, e_b> / (|e_a| |e_b|);
* ``from_factors`` / ``from_weights``: any item-item weight matrix
  W[a, b] (``item_item``'s B = E Q^T as its two factors, or W itself);
* ``co_occurrence``: the baseline every model is compared with, items rated
  by the same users, scored by the Jaccard index of their raters.

The model-based ones run through the exhaustive blocked top-K job of user
recommendations (``jobs.scoring.score_in_spark``), an item x item pass in
which every item is a query row whose one "seen" catalogue position is
itself: an item is never its own related item, ties go to the lower item id,
and K larger than the catalogue gives every other item (m - 1 rows).
``hit_rate`` evaluates any of them on the holdout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs import scoring, topk
from jobs.recommend import ScoringSettings, task_kwargs
from jobs.arrays import float_matrix, list_offsets, unit_rows
from jobs.evaluate.layout import ALL, EVALUATION_COLUMNS

#: The columns of a related-items table, in order.
RELATED_COLUMNS = ("item_id", "rank", "related_item_id", "score")
#: The metric name of ``hit_rate`` in the evaluation layout.
HIT_RATE_METRIC = "related_hit_rate"
_SOURCE = "related"


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"related items: k must be >= 1, got {k}")


def _query_rows(spark: SparkSession, item_ids: pa.Array, vectors: np.ndarray) -> DataFrame:
    """DataFrame[user_id (the item id), embedding: array<float>, seen_pos: array<int> (its own position),
    source]: every catalogue item as a query row of the user-scoring job."""
    m, d = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1), pa.float32())
    own = pa.ListArray.from_arrays(pa.array(np.arange(m + 1, dtype=np.int32)),
                                   pa.array(np.arange(m, dtype=np.int32)))
    table = pa.table({
        "user_id": item_ids,
        "embedding": pa.FixedSizeListArray.from_arrays(flat, d).cast(pa.list_(pa.float32())),
        "seen_pos": own,
        "source": pa.array([_SOURCE] * m, pa.string()),
    })
    return spark.createDataFrame(table)


def _as_related(recs: DataFrame) -> DataFrame:
    """The user-scoring job's DataFrame[user_id, rank, item_id, score, source] -> RELATED_COLUMNS."""
    return recs.select(F.col("user_id").alias("item_id"), "rank", F.col("item_id").alias("related_item_id"),
                       "score")


def from_factors(
    spark: SparkSession,
    item_ids: pa.Array,
    left: np.ndarray,
    right: np.ndarray,
    *,
    k: int,
    settings: ScoringSettings = ScoringSettings(),
) -> DataFrame:
    """Top-K related items of a factorised item-item weight matrix W = left @ right.T.

    score(a, b) = <left[a], right[b]>; ``item_item``'s B = E Q^T is
    ``from_factors(ids, E, Q)`` (history-side table E, scored-side table Q).

    Args:
        spark: the session.
        item_ids: [m] catalogue ids, unique and ascending.
        left: [m, d] float32, the query side of each item (catalogue order).
        right: [m, d] float32, the candidate side of each item (catalogue order).
        k: related items per item.
        settings: block sizes of the scoring job.

    Returns:
        DataFrame[item_id, rank: int (1..), related_item_id, score: float]: min(k, m - 1) rows per item,
        best first, the item itself never among them, ties to the lower related_item_id.
    """
    _check_k(k)
    left = scoring.check_catalogue(item_ids, left)
    right = scoring.check_catalogue(item_ids, right)
    if left.shape[1] != right.shape[1]:
        raise ValueError(f"related items: left factors have width {left.shape[1]}, right factors "
                         f"{right.shape[1]}; W = left @ right.T needs the same width")
    recs = scoring.top_k_for_users(_query_rows(spark, item_ids, left), item_ids, right, k=k,
                                   **task_kwargs(spark, settings))
    return _as_related(recs)


def from_embeddings(spark: SparkSession, item_ids: pa.Array, item_matrix: np.ndarray, *, k: int,
                    settings: ScoringSettings = ScoringSettings()) -> DataFrame:
    """Top-K related items by cosine similarity of item embeddings.

    Args:
        spark: the session.
        item_ids: [m] catalogue ids, unique and ascending.
        item_matrix: [m, d] item embeddings in the same order (a zero row scores 0 with every item).
        k: related items per item.
        settings: block sizes of the scoring job.

    Returns:
        DataFrame[item_id, rank, related_item_id, score: float (cosine)], as ``from_factors``.
    """
    unit = unit_rows(scoring.check_catalogue(item_ids, item_matrix))
    return from_factors(spark, item_ids, unit, unit, k=k, settings=settings)


class WeightRowScorer:
    """The block scorer of ``from_weights``: each query row carries its row of W, so no product is needed.

    Args:
        m: catalogue size (the length of every weight row).
        k: results per row.
        block_rows: rows per selection.
        group_width: first-level group width of the selection (``jobs.topk``).
    """

    def __init__(self, m: int, k: int, *, block_rows: int = scoring.DEFAULT_BLOCK_ROWS,
                 group_width: int = topk.DEFAULT_GROUP_WIDTH):
        self.m, self.k, self.block_rows, self.group_width = m, k, block_rows, group_width
        self.buffer = np.full((block_rows, topk.padded_width(m, group_width)), topk.NEG_INF, np.float32)

    def top_k_batch(self, batch: pa.RecordBatch):
        """Top-k of an Arrow batch [user_id, embedding (the W row), seen_pos, ...] of up to block_rows rows."""
        weights = float_matrix(batch.column("embedding"), self.m, batch.column("user_id"), "item-item weights")
        n = weights.shape[0]
        scores = self.buffer[:n]
        scores[:, : self.m] = weights
        scores[:, self.m:] = topk.NEG_INF
        topk.mask_positions(scores, *list_offsets(batch.column("seen_pos")))
        return topk.select_top_k(scores, self.k, group_width=self.group_width)


def from_weights(spark: SparkSession, item_ids: pa.Array, weights: np.ndarray, *, k: int,
                 settings: ScoringSettings = ScoringSettings()) -> DataFrame:
    """Top-K related items of a dense item-item weight matrix: score(a, b) = W[a, b].

    Each item's row of W travels with it (m^2 floats in Spark: for catalogues
    whose W fits the cluster's memory; a factorised W is cheaper through
    ``from_factors``).

    Args:
        spark: the session.
        item_ids: [m] catalogue ids, unique and ascending.
        weights: [m, m] finite W in catalogue order on both axes (row: the item, column: its candidate).
        k: related items per item.
        settings: ``block_rows`` (rows per selection) and ``group_width``.

    Returns:
        DataFrame[item_id, rank, related_item_id, score: float (W[a, b])], as ``from_factors``.
    """
    _check_k(k)
    m = len(item_ids)
    weights = np.asarray(weights, np.float32)
    if weights.shape != (m, m):
        raise ValueError(f"item-item weights have shape {weights.shape}, expected ({m}, {m}): "
                         f"one row and one column per item id, in catalogue order")
    scoring.check_catalogue(item_ids, weights)

    def build_scorer(_payload, _lo: int) -> WeightRowScorer:
        return WeightRowScorer(m, k, block_rows=settings.block_rows, group_width=settings.group_width)

    rows = _query_rows(spark, item_ids, weights)
    recs = scoring.score_in_spark(rows, item_ids, [(0, None)], build_scorer, k=k,
                                  partitions=task_kwargs(spark, settings)["partitions"])
    return _as_related(recs)


def co_occurrence(events: DataFrame, *, k: int) -> DataFrame:
    """The co-occurrence baseline: items rated by the same users, by the Jaccard index of their raters.

        J(a, b) = |U_a ∩ U_b| / |U_a ∪ U_b| = c_ab / (n_a + n_b - c_ab)

    U_a is the set of users with an event on a (repeated events count once).
    The self-join costs sum over users of (items of the user)^2 pairs.

    Args:
        events: DataFrame[user_id, item_id, ...] (the training window's events).
        k: related items per item.

    Returns:
        DataFrame[item_id, rank: int (1..), related_item_id, score: float (J)]: for every item rated with
        at least one other item, its min(k, co-rated items) best, ties to the lower related_item_id;
        pairs never rated by one user (J = 0) are not listed.
    """
    _check_k(k)
    pairs = events.select("user_id", "item_id").distinct()
    pairs = pairs.withColumn("n", F.count("*").over(Window.partitionBy("item_id")))  # n_a = |U_a|
    a, b = pairs.alias("a"), pairs.alias("b")
    together = (a.join(b, on=F.col("a.user_id") == F.col("b.user_id"))
                .where(F.col("a.item_id") != F.col("b.item_id"))
                .groupBy(F.col("a.item_id").alias("item_id"), F.col("b.item_id").alias("related_item_id"),
                         F.col("a.n").alias("n_a"), F.col("b.n").alias("n_b"))
                .agg(F.count("*").alias("c")))
    scored = together.select("item_id", "related_item_id",
                             (F.col("c") / (F.col("n_a") + F.col("n_b") - F.col("c"))).alias("jaccard"))
    order = Window.partitionBy("item_id").orderBy(F.col("jaccard").desc(), F.col("related_item_id").asc())
    return (scored.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= k)
            .select("item_id", F.col("rank").cast("int").alias("rank"), "related_item_id",
                    F.col("jaccard").cast("float").alias("score")))


def last_items(train: DataFrame) -> DataFrame:
    """Each user's last training item: the latest ``ts``, the higher item id among events of one instant.

    Args:
        train: DataFrame[user_id, item_id, ts, ...].

    Returns:
        DataFrame[user_id, item_id], one row per user of ``train``.
    """
    latest = Window.partitionBy("user_id").orderBy(F.col("ts").desc(), F.col("item_id").desc())
    return (train.select("user_id", "item_id", "ts").withColumn("_n", F.row_number().over(latest))
            .where(F.col("_n") == 1).select("user_id", "item_id"))


def hit_rate(related: DataFrame, train: DataFrame, truth: DataFrame, *, ks: Sequence[int]) -> DataFrame:
    """HitRate@K of related items on the holdout: does the last item's top-K hold one of the next items?

        HitRate@K = |{u : related_K(last(u)) ∩ R_u ≠ ∅}| / |{u : R_u ≠ ∅ and u has a training event}|

    Users counted: every user of ``truth`` with at least one training event
    (a user whose last item has no related rows is a miss).

    Args:
        related: DataFrame[item_id, rank, related_item_id, ...] (any of this module's tables).
        train: DataFrame[user_id, item_id, ts, ...]: the training window's events (``last_items``).
        truth: DataFrame[user_id, item_id, ...]: each user's next items, e.g.
            ``jobs.evaluate.relevant_items(holdout, train)``.
        ks: the cut-offs (each >= 1).

    Returns:
        DataFrame[slice = "all", metric = "related_hit_rate", k: int, value: double, users: long]
        (``EVALUATION_COLUMNS``), one row per k; value is null when no user is counted.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"hit_rate: cut-offs ks must be >= 1 (at least one), got {list(ks)}")
    spark = related.sparkSession
    last = last_items(train).withColumnRenamed("item_id", "last_item_id")
    users = last.join(truth.select("user_id").distinct(), on="user_id", how="left_semi")
    candidates = users.join(related.select(F.col("item_id").alias("last_item_id"), "rank",
                                           F.col("related_item_id").alias("item_id")), on="last_item_id")
    first_hit = (candidates.join(truth.select("user_id", "item_id").distinct(), on=["user_id", "item_id"])
                 .groupBy("user_id").agg(F.min("rank").alias("first_hit")))
    per_user = users.join(first_hit, on="user_id", how="left")
    cut = spark.createDataFrame([(k,) for k in ks], "k int")
    wide = per_user.crossJoin(cut).groupBy("k").agg(
        F.count("*").alias("users"),
        F.sum(F.when(F.col("first_hit") <= F.col("k"), 1).otherwise(0)).alias("hits"))
    found = wide.select("k", (F.col("hits") / F.col("users")).cast("double").alias("value"),
                        F.col("users").cast("long").alias("users"))
    return (cut.join(found, on="k", how="left")
            .select(F.lit(ALL).alias("slice"), F.lit(HIT_RATE_METRIC).alias("metric"), F.col("k").cast("int"),
                    "value", F.coalesce("users", F.lit(0)).cast("long").alias("users"))
            .select(*EVALUATION_COLUMNS).orderBy("k"))
