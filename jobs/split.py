"""Splits of the interactions: temporal (the nightly run) and per user (offline benchmarks).

* ``temporal_split``: train before a cutoff, holdout in the last N days through ds.
* ``stratified_split``: per user, a seeded random share of the events to train.
* ``per_user_temporal_split``: per user, the earliest share of the events to train.
* ``leave_last_out``: per user, the latest event to test.

The random orders are seeded hashes of the event's own values, so the result
depends only on the data and the seed, never on Spark's partitioning.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.ingest import end_of_day

# Shares are compared as ceil(ratio * n - eps) so that 0.7 * 10 gives 7, not 8.
_EPS = 1e-9


def holdout_start(ds: dt.date, holdout_days: int) -> dt.datetime:
    """First instant of the holdout: midnight UTC ``holdout_days`` days before the end of ds."""
    return end_of_day(ds) - dt.timedelta(days=holdout_days)


def window_end(ds: dt.date, holdout_days: int, *, includes_holdout: bool) -> dt.datetime:
    """The instant a feature window ends: the holdout start, or the end of ds when the holdout is in it."""
    return end_of_day(ds) if includes_holdout else holdout_start(ds, holdout_days)


def temporal_split(
    interactions: DataFrame, ds: dt.date, *, holdout_days: int, ts_col: str = "ts"
) -> tuple[DataFrame, DataFrame]:
    """Split events up to the end of ds into train (before the cutoff) and holdout.

    Args:
        interactions: events with a timestamp column ``ts_col``.
        ds: the run date; the holdout is the last ``holdout_days`` days through ds.
        holdout_days: length of the holdout in days.

    Returns:
        (train, holdout): train has ``ts < cutoff``; holdout has
        ``cutoff <= ts < end of ds``. Events after ds are in neither.
    """
    if holdout_days < 1:
        raise ValueError(f"holdout_days must be >= 1, got {holdout_days}")
    cutoff = F.lit(holdout_start(ds, holdout_days))
    end = F.lit(end_of_day(ds))
    ts = F.col(ts_col)
    return interactions.filter(ts < cutoff), interactions.filter((ts >= cutoff) & (ts < end))


def _seeded_order(df: DataFrame, seed: int) -> Column:
    """A pseudo-random key of each row: xxhash64 of the seed and every column's value."""
    return F.xxhash64(F.lit(int(seed)), *[F.col(c) for c in df.columns])


def stratified_split(
    df: DataFrame, *, ratio: float, seed: int, user_col: str = "user_id"
) -> tuple[DataFrame, DataFrame]:
    """Per-user random split: each user keeps ``ceil(ratio * n)`` of their n events in train.

    Every user with events appears in train (a user with one event has it in
    train and nothing in test). The order is a seeded hash of the row, so
    the split is the same for the same data and seed on any cluster.

    Args:
        df: events, one row each (any columns, ``user_col`` among them).
        ratio: share of each user's events that go to TRAIN, in (0, 1].
        seed: seed of the random order.
        user_col: the user column.

    Returns:
        (train, test) with the columns of ``df``.
    """
    return _first_share(df, ratio, [_seeded_order(df, seed)], user_col, "stratified_split")


def _first_share(df: DataFrame, ratio: float, order: list[Column], user_col: str,
                 what: str) -> tuple[DataFrame, DataFrame]:
    """Per user, the first ``ceil(ratio * n)`` events in ``order`` (then every column) to train, the rest to test."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"{what}: ratio is the train share and must be in (0, 1], got {ratio}")
    columns = df.columns
    by_user = Window.partitionBy(user_col)
    ordered = by_user.orderBy(*order, *columns)
    ranked = df.withColumn("_rank", F.row_number().over(ordered)).withColumn("_n", F.count(F.lit(1)).over(by_user))
    in_train = F.col("_rank") <= F.ceil(F.lit(float(ratio)) * F.col("_n") - F.lit(_EPS))
    return ranked.filter(in_train).select(*columns), ranked.filter(~in_train).select(*columns)


def per_user_temporal_split(
    df: DataFrame, *, ratio: float, seed: int = 0, user_col: str = "user_id", ts_col: str = "ts"
) -> tuple[DataFrame, DataFrame]:
    """Per-user split by time: each user keeps their earliest ``ceil(ratio * n)`` of n events in train.

    The test set is each user's latest events (a user with one event has it
    in train). Events at the same timestamp are ordered by a seeded hash.

    Args:
        df: events with ``user_col`` and ``ts_col``.
        ratio: share of each user's events that go to TRAIN, in (0, 1].
        seed: seed of the tie-break.

    Returns:
        (train, test) with the columns of ``df``.
    """
    return _first_share(df, ratio, [F.col(ts_col), _seeded_order(df, seed)], user_col, "per_user_temporal_split")


def leave_last_out(
    df: DataFrame,
    *,
    seed: int = 0,
    user_col: str = "user_id",
    ts_col: str = "ts",
    min_events: int = 2,
) -> tuple[DataFrame, DataFrame]:
    """Per-user leave-last-out: each user's latest event is the test event.

    Users with fewer than ``min_events`` events keep all of them in train.
    Several events at the user's latest timestamp: one of them, chosen by a
    seeded hash, is the test event; the others stay in train.

    Args:
        df: events with ``user_col`` and ``ts_col``.
        seed: seed of the tie-break.
        min_events: fewest events a user needs to contribute a test event.

    Returns:
        (train, test): test holds at most one row per user.
    """
    if min_events < 2:
        raise ValueError(f"leave_last_out: min_events must be >= 2 (one event must stay in train), got {min_events}")
    columns = df.columns
    by_user = Window.partitionBy(user_col)
    latest_first = by_user.orderBy(F.col(ts_col).desc(), _seeded_order(df, seed), *columns)
    ranked = df.withColumn("_rank", F.row_number().over(latest_first)).withColumn(
        "_n", F.count(F.lit(1)).over(by_user)
    )
    is_test = (F.col("_rank") == 1) & (F.col("_n") >= min_events)
    return ranked.filter(~is_test).select(*columns), ranked.filter(is_test).select(*columns)
