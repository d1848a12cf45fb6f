import datetime as dt

import pandas as pd
import pytest

from jobs.split import holdout_start, leave_last_out, stratified_split, temporal_split, window_end

SCHEMA = "user_id bigint, item_id bigint, rating double, ts timestamp"


def _t(day, hour=0, minute=0):
    return dt.datetime(2024, 1, day, hour, minute, tzinfo=dt.timezone.utc)


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


def test_window_end_is_cutoff_or_end_of_ds():
    ds = dt.date(2024, 1, 10)
    assert holdout_start(ds, 3) == _t(8)
    assert window_end(ds, 3, includes_holdout=False) == _t(8)
    assert window_end(ds, 3, includes_holdout=True) == _t(11)


def test_holdout_days_must_be_positive(spark):
    df = spark.createDataFrame([(1, dt.datetime(2024, 1, 1))], "item_id int, ts timestamp")
    with pytest.raises(ValueError, match="holdout_days"):
        temporal_split(df, dt.date(2024, 1, 10), holdout_days=0)


@pytest.fixture()
def events(spark):
    # user 1: 10 events, user 2: 1 event, user 3: 3 events, user 4: 4 events
    rows = [(1, i, 3.0, _t(1 + i)) for i in range(10)]
    rows += [(2, 5, 4.0, _t(2))]
    rows += [(3, i, 2.0, _t(3 + i)) for i in range(3)]
    rows += [(4, i, 5.0, _t(4 + i)) for i in range(4)]
    return spark.createDataFrame(rows, SCHEMA)


def _rows(df):
    return sorted((r.user_id, r.item_id, r.rating, r.ts) for r in df.collect())


def test_stratified_split_keeps_the_train_share_of_every_user(events):
    train, test = stratified_split(events, ratio=0.7, seed=3)
    train_counts = pd.Series([r[0] for r in _rows(train)]).value_counts().to_dict()
    test_counts = pd.Series([r[0] for r in _rows(test)], dtype="int64").value_counts().to_dict()
    # ceil(0.7 n): 10 -> 7, 1 -> 1, 3 -> ceil(2.1) = 3, 4 -> ceil(2.8) = 3
    assert train_counts == {1: 7, 2: 1, 3: 3, 4: 3}
    assert test_counts == {1: 3, 4: 1}
    assert sorted(_rows(train) + _rows(test)) == _rows(events)


def test_stratified_split_depends_on_seed_not_partitioning(events):
    train_a, _ = stratified_split(events, ratio=0.5, seed=1)
    train_b, _ = stratified_split(events.repartition(3, "item_id"), ratio=0.5, seed=1)
    assert _rows(train_a) == _rows(train_b)
    draws = {tuple(_rows(stratified_split(events, ratio=0.5, seed=s)[0])) for s in range(6)}
    assert len(draws) > 1  # different seeds pick different events


def test_stratified_split_ratio_must_be_a_share(events):
    with pytest.raises(ValueError, match=r"ratio is the train share and must be in \(0, 1\], got 1.5"):
        stratified_split(events, ratio=1.5, seed=0)


def test_leave_last_out_takes_each_users_latest_event(spark, events):
    train, test = leave_last_out(events, seed=0)
    # latest: user 1 item 9, user 3 item 2, user 4 item 3; user 2 has one event and stays in train
    assert [(r[0], r[1]) for r in _rows(test)] == [(1, 9), (3, 2), (4, 3)]
    assert len(_rows(train)) == 18 - 3
    assert sorted(_rows(train) + _rows(test)) == _rows(events)


def test_leave_last_out_breaks_ties_by_seed(spark):
    rows = [(1, 1, 3.0, _t(1)), (1, 2, 3.0, _t(5)), (1, 3, 3.0, _t(5))]
    df = spark.createDataFrame(rows, SCHEMA)
    picks = set()
    for seed in range(8):
        train, test = leave_last_out(df, seed=seed)
        (held,) = _rows(test)
        assert held[1] in (2, 3)  # one of the two latest, never the older one
        assert _rows(leave_last_out(df.repartition(2), seed=seed)[1]) == [held]
        picks.add(held[1])
    assert picks == {2, 3}
