"""jobs.history.user_history against a pandas reference and hand-worked lists."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from jobs import features, history

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
SCHEMA = "user_id bigint, item_id bigint, rating double, ts timestamp"


def _at(days, hours=0):
    return T0 + dt.timedelta(days=days, hours=hours)


HAND_EVENTS = [
    # user 5: item 30 twice (its latest event, day 4, counts), items 20 and 40 tie at day 2
    (5, 30, 4.0, _at(1)), (5, 40, 3.0, _at(2)), (5, 20, 5.0, _at(2)), (5, 30, 2.0, _at(4)), (5, 10, 1.0, _at(0)),
    # user 7: one item
    (7, 40, 5.0, _at(3)),
    # user 6: items 10, 20
    (6, 20, 4.0, _at(5)), (6, 10, 4.0, _at(6)),
]


@pytest.fixture(scope="module")
def state(spark):
    train = spark.createDataFrame(HAND_EVENTS, SCHEMA)
    return features.FeatureFitter().fit(train, None, None, as_of=dt.datetime(2024, 1, 10, tzinfo=dt.timezone.utc))


def _collect(frame):
    return {r["user_id"]: (r["user_idx"], list(r["history"])) for r in frame.collect()}


def test_hand_worked_lists(spark, state):
    # vocabularies (sorted): items 10, 20, 30, 40 -> 2, 3, 4, 5; users 5, 6, 7 -> 2, 3, 4
    events = spark.createDataFrame(HAND_EVENTS, SCHEMA)
    got = _collect(history.user_history(events, state, max_len=3))
    # user 5 by latest time: 30 (day 4), then 20 and 40 tied at day 2 (lower index first), then 10 (cut)
    assert got == {5: (2, [4, 3, 5]), 6: (3, [2, 3]), 7: (4, [5])}
    assert history.user_history(events, state, max_len=10).schema["history"].dataType.simpleString() == "array<int>"


def test_unknown_users_and_items_are_ignored(spark, state):
    extra = [(5, 99, 1.0, _at(9)),   # item 99 is not in the vocabulary
             (8, 10, 1.0, _at(9))]   # user 8 is not in the vocabulary
    events = spark.createDataFrame(HAND_EVENTS + extra, SCHEMA)
    got = _collect(history.user_history(events, state, max_len=2))
    assert got == {5: (2, [4, 3]), 6: (3, [2, 3]), 7: (4, [5])}


def test_bad_max_len(spark, state):
    events = spark.createDataFrame(HAND_EVENTS, SCHEMA)
    with pytest.raises(ValueError, match="max_len must be at least 1"):
        history.user_history(events, state, max_len=0)


def _pandas_history(events: pd.DataFrame, user_vocab, item_vocab, max_len):
    """Independent reference: vocabulary indices, latest time per (user, item), ordered and cut."""
    item_index = {v: i + 2 for i, v in enumerate(sorted(item_vocab))}
    user_index = {v: i + 2 for i, v in enumerate(sorted(user_vocab))}
    known = events[events.item_id.isin(item_index) & events.user_id.isin(user_index)].copy()
    known["item_idx"] = known.item_id.map(item_index)
    latest = known.groupby(["user_id", "item_idx"], as_index=False).ts.max()
    latest = latest.sort_values(["user_id", "ts", "item_idx"], ascending=[True, False, True])
    out = {}
    for user, rows in latest.groupby("user_id"):
        out[user] = (user_index[user], rows.item_idx.head(max_len).tolist())
    return out


def test_matches_pandas_on_random_events(spark):
    rng = np.random.default_rng(11)
    rows = [(int(rng.integers(1, 9)), int(rng.integers(100, 115)), 3.0,
             _at(int(rng.integers(0, 5)), 6 * int(rng.integers(0, 3)))) for _ in range(150)]
    train = spark.createDataFrame(rows, SCHEMA)
    state = features.FeatureFitter().fit(train, None, None, as_of=dt.datetime(2024, 1, 10, tzinfo=dt.timezone.utc))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "ts"])
    for max_len in (1, 4, 50):
        expected = _pandas_history(frame, frame.user_id.unique(), frame.item_id.unique(), max_len)
        assert _collect(history.user_history(train, state, max_len=max_len)) == expected


def test_indices_match_the_item_features(spark):
    """The history's indices are the item_idx the item tower embeds (features.build_side_features)."""
    train = spark.createDataFrame(HAND_EVENTS, SCHEMA)
    fitted = features.FeatureFitter().fit_transform(train, None, None,
                                                    as_of=dt.datetime(2024, 1, 10, tzinfo=dt.timezone.utc))
    item_idx = {r["item_id"]: r["item_idx"] for r in fitted.item_features.select("item_id", "item_idx").collect()}
    got = _collect(history.user_history(train, fitted.state, max_len=10))
    fitted.release()
    assert got[5][1] == [item_idx[30], item_idx[20], item_idx[40], item_idx[10]]
