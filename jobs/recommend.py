"""Top-K recommendations for a set of users: each user routed to the scorer that knows them.

* ``model``: users in the model's vocabulary, scored from what the model
  learned of them;
* ``features``: users without history whose side features say something the
  model knows, scored from those features;
* ``popularity``: everyone else, the most-interacted items.

Seen items (``seen_events``) are excluded for every user, whichever scorer.
A factorised model is scored from its embedding tables
(``from_embeddings``); any other model through a scorer built inside each
Spark task by a callable the caller passes in (``with_scorer``), so this
module imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs import ann, scoring
from jobs.ann import AnnSettings
from jobs.features import FeatureState
from jobs.schema import FIRST_INDEX
from jobs.scoring import catalogue_frame, seen_positions


@dataclasses.dataclass(frozen=True)
class ScoringSettings:
    """Block sizes of exhaustive scoring; they bound each Spark task's memory.

    Attributes:
        method: "exact" (every item scored) or "ann" (factorised models: FAISS candidates re-scored exactly,
            ``jobs.ann``; ``ann`` its index settings).
        block_rows: users per matrix product (a [block_rows, items] float32 score buffer per task).
        item_block_mb: largest item matrix broadcast at once; a bigger catalogue is scored block by block.
        group_width: first-level group width of the exact top-K selection (``jobs.topk``).
    """

    block_rows: int = scoring.DEFAULT_BLOCK_ROWS
    item_block_mb: int = scoring.DEFAULT_ITEM_BLOCK_BYTES // 2**20
    group_width: int = scoring.topk.DEFAULT_GROUP_WIDTH
    method: str = "exact"
    ann: AnnSettings = AnnSettings()

    def __post_init__(self):
        if self.method not in ("exact", "ann"):
            raise ValueError(f"scoring method must be exact or ann, got {self.method!r}; set scoring.method")


def task_kwargs(spark, settings: ScoringSettings) -> dict[str, int]:
    """The keyword arguments of ``jobs.scoring.top_k_for_users`` for ``settings`` on this session."""
    return {
        # after joins, adaptive execution may coalesce a small table into one partition (one core)
        "partitions": 2 * spark.sparkContext.defaultParallelism,
        "block_rows": settings.block_rows,
        "item_block_bytes": settings.item_block_mb * 2**20,
        "group_width": settings.group_width,
    }


def assign_sources(users: DataFrame, user_features: DataFrame, state: FeatureState) -> DataFrame:
    """How each user will be scored.

    A user in the model's vocabulary (``user_idx >= FIRST_INDEX``) is
    ``"model"``; a user without history whose side features say something
    (a known category, a known multi-category value, or a declared continuous
    feature off its mean) is ``"features"``; everyone else, including users
    missing from ``user_features``, is ``"popularity"``.

    Args:
        users: DataFrame[user_id] (one row per user to score).
        user_features: DataFrame[user_id, user_idx, user_<column> ...] from
            ``features.build_side_features``.
        state: the fitted feature state (which columns are declared, and how).

    Returns:
        DataFrame[user_id, source: string].
    """
    usable = []
    for decl in state.decls["user"]:
        col = F.col(f"user_{decl['column']}")
        if decl["kind"] == "categorical":
            usable.append(col >= FIRST_INDEX)
        elif decl["kind"] == "multi_categorical":
            usable.append(F.exists(col, lambda v: v >= FIRST_INDEX))
        else:  # continuous: scaled, a missing value became 0.0
            usable.append(col != 0.0)
    has_features = F.coalesce(F.greatest(*usable, F.lit(False)), F.lit(False)) if usable else F.lit(False)
    source = (
        F.when(F.col("user_idx") >= FIRST_INDEX, F.lit("model"))
        .when(has_features, F.lit("features"))
        .otherwise(F.lit("popularity"))
    )
    flags = user_features.select("user_id", source.alias("source"))
    return users.select("user_id").join(flags, on="user_id", how="left").select(
        "user_id", F.coalesce("source", F.lit("popularity")).alias("source")
    )


def popularity(events: DataFrame, users: DataFrame, item_ids: pa.Array, k: int,
               settings: ScoringSettings = ScoringSettings()) -> DataFrame:
    """The most-interacted catalogue items (in ``events``) for each user, the user's own items excluded.

    Args:
        events: DataFrame[user_id, item_id, ...] (the counts and the seen items).
        users: DataFrame[user_id].
        item_ids: the catalogue, ascending.

    Returns:
        DataFrame[user_id, rank, item_id, score (the item's event count), source = "popularity"].
    """
    spark = events.sparkSession
    catalogue = catalogue_frame(spark, item_ids)
    counts = events.join(F.broadcast(catalogue), on="item_id").groupBy("pos").count().toArrow()
    matrix = np.zeros((len(item_ids), 1), dtype=np.float32)
    matrix[counts.column("pos").to_numpy(), 0] = counts.column("count").to_numpy()
    rows = (
        users.join(seen_positions(events, catalogue), on="user_id", how="left")
        .withColumn("embedding", F.array(F.lit(1.0).cast("float")))
        .withColumn("source", F.lit("popularity"))
    )
    return scoring.top_k_for_users(rows, item_ids, matrix, k=k, **task_kwargs(spark, settings))


def from_embeddings(
    *,
    users: DataFrame,
    user_features: DataFrame,
    state: FeatureState,
    seen_events: DataFrame,
    user_embeddings: DataFrame,
    item_ids: pa.Array,
    item_matrix: np.ndarray,
    k: int,
    settings: ScoringSettings = ScoringSettings(),
) -> DataFrame:
    """Top-K of a factorised model for ``users``, items in ``seen_events`` excluded.

    Args:
        users: DataFrame[user_id], one row per user to score.
        user_features: the window's user feature table (routing by ``assign_sources``).
        state: the window's fitted feature state.
        seen_events: DataFrame[user_id, item_id, ...]: excluded items, and the popularity counts.
        user_embeddings: DataFrame[user_id, embedding] of every user of ``user_features``.
        item_ids: [m] catalogue ids, ascending; ``item_matrix``: [m, d] float32 in that order.

    Returns:
        DataFrame[user_id, rank, item_id, score, source].
    """
    spark = users.sparkSession
    routed, rows = embedding_rows(users=users, user_features=user_features, state=state, seen_events=seen_events,
                                  user_embeddings=user_embeddings, item_ids=item_ids)
    if settings.method == "ann":
        kwargs = task_kwargs(spark, settings)
        kwargs.pop("item_block_bytes")
        model_recs = ann.top_k_for_users(rows, item_ids, item_matrix, k=k, settings=settings.ann, **kwargs)
    else:
        model_recs = scoring.top_k_for_users(rows, item_ids, item_matrix, k=k, **task_kwargs(spark, settings))
    rest = routed.select("user_id").join(rows.select("user_id"), on="user_id", how="left_anti")
    return model_recs.unionByName(popularity(seen_events, rest, item_ids, k, settings))


def embedding_rows(*, users: DataFrame, user_features: DataFrame, state: FeatureState, seen_events: DataFrame,
                   user_embeddings: DataFrame, item_ids: pa.Array) -> tuple[DataFrame, DataFrame]:
    """(DataFrame[user_id, source] of every user, the rows the model scores: DataFrame[user_id, source,
    embedding, seen_pos]) of ``from_embeddings``."""
    spark = users.sparkSession
    routed = assign_sources(users, user_features, state)
    by_model = routed.where(F.col("source") != "popularity").join(user_embeddings, on="user_id", how="inner")
    seen = seen_positions(seen_events, catalogue_frame(spark, item_ids))
    return routed, by_model.join(seen, on="user_id", how="left")


def ann_recall(recs: DataFrame, rows: DataFrame, item_ids: pa.Array, item_matrix: np.ndarray, *, k: int,
               sample_users: int, seed: int, settings: ScoringSettings = ScoringSettings()) -> ann.RecallReport:
    """recall@k of approximate lists (``from_embeddings`` with method ann) against exact scoring of a seeded
    sample of the model's users (``rows``: ``embedding_rows``)."""
    return ann.recall_at_k(recs.where(F.col("source") != "popularity"), rows, item_ids, item_matrix, k=k,
                           sample_users=sample_users, seed=seed, **task_kwargs(rows.sparkSession, settings))


def with_scorer(
    *,
    users: DataFrame,
    user_features: DataFrame,
    state: FeatureState,
    seen_events: DataFrame,
    item_ids: pa.Array,
    user_columns: list[str],
    build_scorer: Callable[[Any, int], Any],
    k: int,
    retriever: tuple[DataFrame, np.ndarray] | None = None,
    settings: ScoringSettings = ScoringSettings(),
) -> DataFrame:
    """Top-K of any model through a scorer built in each Spark task (non-factorised models).

    Args:
        users, user_features, state, seen_events, item_ids: as in ``from_embeddings``.
        user_columns: the user feature columns the scorer reads.
        build_scorer: picklable ``build_scorer(item_vectors, first_position)`` -> a scorer with
            ``block_rows`` and ``top_k_batch(batch) -> (rows, positions, scores)``; ``item_vectors`` is the
            retriever's item matrix (None without one). It runs once per task (cache the model per worker).
        retriever: two-stage ranking: (DataFrame[user_id, embedding], [m, d] item vectors in catalogue
            order) of a factorised model, whose best candidates the scorer ranks.

    Returns:
        DataFrame[user_id, rank, item_id, score, source].
    """
    spark = users.sparkSession
    routed = assign_sources(users, user_features, state)
    seen = seen_positions(seen_events, catalogue_frame(spark, item_ids))
    rows = (routed.where(F.col("source") != "popularity")
            .join(user_features.select("user_id", *user_columns), on="user_id")
            .join(seen, on="user_id", how="left"))
    item_vectors = None
    if retriever is not None:
        rows = rows.join(retriever[0], on="user_id", how="left")
        item_vectors = retriever[1]
    model_recs = scoring.score_in_spark(rows, item_ids, [(0, item_vectors)], build_scorer, k=k,
                                        partitions=2 * spark.sparkContext.defaultParallelism)
    rest = routed.where(F.col("source") == "popularity").select("user_id")
    return model_recs.unionByName(popularity(seen_events, rest, item_ids, k, settings))


def rows_for(ids: pa.Array, table_ids: pa.Array, matrix: np.ndarray, what: str) -> np.ndarray:
    """Rows of an embedding matrix for ``ids``, in that order: [len(ids), d] float32 (every id must be there)."""
    index = pc.index_in(ids, value_set=table_ids)
    if index.null_count:
        raise ValueError(f"{what}: {index.null_count} ids have no row (e.g. "
                         f"{ids.filter(index.is_null())[0].as_py()!r}); score with embeddings of the same window")
    return np.ascontiguousarray(matrix[index.to_numpy().astype(np.int64)], dtype=np.float32)
