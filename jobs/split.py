"""Splits of the interactions into a training window and a holdout."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.ingest import end_of_day


def holdout_start(ds: dt.date, holdout_days: int) -> dt.datetime:
    """First instant of the holdout: midnight UTC ``holdout_days`` days before the end of ds."""
    return end_of_day(ds) - dt.timedelta(days=holdout_days)


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
