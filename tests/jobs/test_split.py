import datetime as dt

import pytest

from jobs.split import temporal_split


def test_holdout_is_last_days_through_ds(spark):
    ts = lambda d, h=0, m=0: dt.datetime(2024, 1, d, h, m, tzinfo=dt.timezone.utc)  # noqa: E731
    rows = [
        (1, ts(1)),            # train
        (2, ts(7, 23, 59)),    # train: just before the cutoff (holdout starts 2024-01-08 00:00)
        (3, ts(8)),            # holdout: exactly at the cutoff
        (4, ts(10, 23, 59)),   # holdout: last minute of ds
        (5, ts(11)),           # after ds: in neither
    ]
    df = spark.createDataFrame(rows, "item_id int, ts timestamp")
    train, holdout = temporal_split(df, dt.date(2024, 1, 10), holdout_days=3)
    assert sorted(r.item_id for r in train.collect()) == [1, 2]
    assert sorted(r.item_id for r in holdout.collect()) == [3, 4]


def test_holdout_days_must_be_positive(spark):
    df = spark.createDataFrame([(1, dt.datetime(2024, 1, 1))], "item_id int, ts timestamp")
    with pytest.raises(ValueError, match="holdout_days"):
        temporal_split(df, dt.date(2024, 1, 10), holdout_days=0)
