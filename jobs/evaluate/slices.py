"""Slices of a holdout: warm and cold users and items, and users by training activity.

A slice is a named subset of the evaluated (user, item) pairs:

* ``"all"``: every pair;
* ``"users:warm"`` / ``"users:cold"``: pairs of users with / without events in the training window;
* ``"items:warm"`` / ``"items:cold"``: pairs whose item has / has no event in the training window;
* ``"activity:A-B"`` (and ``"activity:>E"`` for the last): pairs of users with A..B training
  events, buckets cut at the configured upper edges (default 5, 20, 100: 1-5, 6-20, 21-100,
  >100). Cold users have 0 events and are in no activity bucket.

A user is evaluated in a slice on the relevant pairs it has there, against
its whole recommendation list: in ``items:cold`` the relevant set is the
user's relevant items that are cold.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.evaluate.layout import ALL

#: Upper edges of the user-activity buckets (training events per user).
DEFAULT_ACTIVITY_EDGES = (5, 20, 100)
WARM_USERS, COLD_USERS = "users:warm", "users:cold"
WARM_ITEMS, COLD_ITEMS = "items:warm", "items:cold"


def activity_buckets(edges: Sequence[int] = DEFAULT_ACTIVITY_EDGES) -> list[tuple[str, int, int | None]]:
    """(slice name, first, last or None) of each activity bucket: edges (5, 20) -> 1-5, 6-20, >20."""
    edges = [int(e) for e in edges]
    if not edges or edges[0] < 1 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"activity edges must be strictly increasing integers >= 1 (the last training-event "
                         f"count of each bucket), got {list(edges)}; e.g. [5, 20, 100]")
    lows = [1] + [e + 1 for e in edges]
    buckets = [(f"activity:{lo}-{hi}", lo, hi) for lo, hi in zip(lows, edges)]
    return buckets + [(f"activity:>{edges[-1]}", edges[-1] + 1, None)]


def _activity(events: Column, edges: Sequence[int]) -> Column:
    """The bucket name of a training-event count (null for 0)."""
    out = F.lit(None).cast("string")
    for name, lo, hi in reversed(activity_buckets(edges)):
        inside = events >= lo if hi is None else (events >= lo) & (events <= hi)
        out = F.when(inside, F.lit(name)).otherwise(out)
    return out


def user_slices(users: DataFrame, train: DataFrame, *, activity_edges: Sequence[int] = DEFAULT_ACTIVITY_EDGES
                ) -> DataFrame:
    """Each user's slice memberships: warm or cold, and (warm users) the activity bucket.

    Args:
        users: DataFrame[user_id, ...] (e.g. the holdout's users; duplicates are fine).
        train: the training window's events, DataFrame[user_id, ...].
        activity_edges: upper edges of the activity buckets.

    Returns:
        DataFrame[user_id, slice: string, train_events: long]: one or two rows per user.
    """
    counts = train.groupBy("user_id").agg(F.count(F.lit(1)).alias("train_events"))
    per_user = users.select("user_id").distinct().join(counts, on="user_id", how="left").select(
        "user_id", F.coalesce("train_events", F.lit(0)).cast("long").alias("train_events"))
    n = F.col("train_events")
    names = F.array(F.when(n > 0, F.lit(WARM_USERS)).otherwise(F.lit(COLD_USERS)), _activity(n, activity_edges))
    return per_user.select("user_id", F.explode(F.filter(names, lambda s: s.isNotNull())).alias("slice"),
                           "train_events")


def item_slices(items: DataFrame, train: DataFrame) -> DataFrame:
    """Each item's warmth: DataFrame[item_id, slice ("items:warm" / "items:cold")], one row per item."""
    seen = train.select("item_id").distinct().withColumn("_warm", F.lit(True))
    return items.select("item_id").distinct().join(seen, on="item_id", how="left").select(
        "item_id", F.when(F.col("_warm"), F.lit(WARM_ITEMS)).otherwise(F.lit(COLD_ITEMS)).alias("slice"))


def slice_pairs(pairs: DataFrame, train: DataFrame, *, activity_edges: Sequence[int] = DEFAULT_ACTIVITY_EDGES
                ) -> DataFrame:
    """Every (user, item) pair once per slice it is in: ``"all"``, its user's slices, its item's slice.

    Args:
        pairs: DataFrame[user_id, item_id, ...] (relevant pairs, or rated holdout rows).
        train: the training window's events.
        activity_edges: upper edges of the activity buckets.

    Returns:
        DataFrame[the columns of ``pairs``, slice: string]; evaluate with
        ``ranking_evaluation`` or ``rating_evaluation``.
    """
    by_user = pairs.join(user_slices(pairs, train, activity_edges=activity_edges).drop("train_events"),
                         on="user_id", how="inner")
    by_item = pairs.join(item_slices(pairs, train), on="item_id", how="inner")
    columns = [*pairs.columns, "slice"]
    return (pairs.withColumn("slice", F.lit(ALL)).select(*columns)
            .unionByName(by_user.select(*columns)).unionByName(by_item.select(*columns)))
