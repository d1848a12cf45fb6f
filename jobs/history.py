"""Users' interaction histories as item-index lists (the user tower's history input).

A user's history is the distinct items they interacted with in a training
window, most recent first, encoded with the fitted item vocabulary of the
window (``FeatureState.item_vocab``: index 2 + position in sorted id order,
the same indices as the ``item_idx`` column the item tower embeds). The
two-tower models with ``history_max_len > 0`` keep one such list per user
(``models.two_tower``); leakage in training examples is removed inside the
model, by masking the example's own item out of the list before pooling.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from jobs.features import FeatureState, id_frame


def user_history(events: DataFrame, state: FeatureState, *, max_len: int) -> DataFrame:
    """The most recent ``max_len`` distinct items of every user of the window.

    Args:
        events: DataFrame[user_id, item_id, ts, ...] of the training window.
        state: the feature state fitted on that window (its user and item vocabularies).
        max_len: longest history kept per user (>= 1).

    Returns:
        DataFrame[user_id (source type), user_idx: int, history: array<int>]: one row per
        user in ``state.user_vocab`` with at least one event of a vocabulary item;
        ``history`` holds item indices, most recent first (an item's time is its latest
        event; equal times: the lower item index first), at most ``max_len`` long.
        Events of users or items outside the vocabularies are ignored.
    """
    if int(max_len) < 1:
        raise ValueError(f"user_history: max_len must be at least 1, got {max_len!r}")
    spark = events.sparkSession
    users = id_frame(spark, state.user_vocab, events.schema["user_id"], index="user_idx")
    items = id_frame(spark, state.item_vocab, events.schema["item_id"], index="item_idx")
    latest = (
        events.join(F.broadcast(items), on="item_id", how="inner")
        .groupBy("user_id", "item_idx")
        .agg(F.max("ts").alias("ts"))
    )
    order = Window.partitionBy("user_id").orderBy(F.col("ts").desc(), F.col("item_idx").asc())
    ranked = latest.withColumn("_rank", F.row_number().over(order)).filter(F.col("_rank") <= int(max_len))
    lists = ranked.groupBy("user_id").agg(
        F.array_sort(F.collect_list(F.struct(F.col("_rank"), F.col("item_idx")))).alias("_ranked")
    )
    return (
        lists.join(users, on="user_id", how="inner")
        .select("user_id", "user_idx", F.transform("_ranked", lambda s: s["item_idx"]).cast("array<int>")
                .alias("history"))
    )
