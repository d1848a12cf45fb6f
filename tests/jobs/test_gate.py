"""jobs.gate: every branch of the publish decision, and its message."""

import pytest

from jobs.gate import HELD_BACK, NOT_EVALUABLE, PUBLISH, gate_decision

BASE = dict(model="two_tower", users=500, min_users=50, margin=0.05, k=10)


def test_a_regression_beyond_the_margin_is_held_back_and_says_by_how_much():
    d = gate_decision(value=0.081, popularity=0.05, previous=0.093, **BASE)
    assert d.status == HELD_BACK and not d.publish
    # (0.093 - 0.081) / 0.093 = 12.9%
    assert d.message == "two_tower nDCG@10 0.081 is 12.9% below the last committed night's 0.093 (margin 5%)"
    assert (d.figure, d.value, d.popularity, d.previous, d.users) == ("nDCG@10", 0.081, 0.05, 0.093, 500)


def test_below_popularity_is_held_back():
    d = gate_decision(value=0.04, popularity=0.05, previous=None, **BASE)
    assert d.status == HELD_BACK
    assert d.message == "two_tower nDCG@10 0.04 is 20.0% below popularity's 0.05"


def test_both_rules_failing_are_both_named():
    d = gate_decision(value=0.04, popularity=0.05, previous=0.1, **BASE)
    assert d.status == HELD_BACK
    assert "20.0% below popularity's 0.05 and is 60.0% below the last committed night's 0.1 (margin 5%)" in d.message


def test_within_the_margin_or_without_history_publishes():
    within = gate_decision(value=0.09, popularity=0.05, previous=0.093, **BASE)   # 3.2% below: inside 5%
    assert within.status == PUBLISH and within.publish
    assert within.message == ("two_tower nDCG@10 0.09 is not below popularity's 0.05 and is not more than 5% "
                              "below the last committed night's 0.093")
    first = gate_decision(value=0.05, popularity=0.05, previous=None, **BASE)      # equal to popularity: passes
    assert first.status == PUBLISH and "has no committed night before it" in first.message
    edge = gate_decision(value=0.095, popularity=None, previous=0.1, **BASE)       # exactly 5% below
    assert edge.status == PUBLISH


def test_a_small_holdout_is_not_evaluable_whatever_the_figures():
    d = gate_decision(value=0.5, popularity=0.01, previous=0.1, **{**BASE, "users": 3})
    assert d.status == NOT_EVALUABLE and not d.publish
    assert d.message == ("two_tower is not evaluable: the holdout has 3 users with relevant items, "
                         "fewer than the 50 required")
    none = gate_decision(value=None, popularity=None, previous=None, **{**BASE, "users": 0, "min_users": 0})
    assert none.status == NOT_EVALUABLE and "no nDCG@10 was computed" in none.message


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        gate_decision(value=0.1, popularity=0.1, previous=None, **{**BASE, "margin": 5})
    with pytest.raises(ValueError, match="finite"):
        gate_decision(value=float("nan"), popularity=0.1, previous=None, **BASE)


def test_the_previous_figure_is_the_last_earlier_night_that_published_the_model(tmp_path):
    import datetime as dt
    import json

    import pandas as pd

    from jobs.gate import last_committed_figure
    from jobs.storage import Location

    def night(ds, value, published):
        folder = tmp_path / "metrics" / f"ds={ds}"
        folder.mkdir(parents=True)
        pd.DataFrame({"model": ["a", "a", "a"], "scorer": ["model", "popularity", "model"],
                      "slice": ["all", "all", "users:cold"], "metric": ["ndcg"] * 3, "k": [10, 10, 10],
                      "value": [value, 0.5, 0.9], "users": [20, 20, 3]}).to_parquet(folder / "part-0.parquet")
        parts = [{"table": "metrics", "keys": {}, "path": f"metrics/ds={ds}", "manifest": {}}]
        if published:
            parts.append({"table": "recommendations", "keys": {"model": "a"},
                          "path": f"recommendations/ds={ds}/model=a", "manifest": {}})
        (tmp_path / "_commits").mkdir(exist_ok=True)
        (tmp_path / "_commits" / f"ds={ds}.json").write_text(json.dumps({"ds": ds, "partitions": parts}))

    night("2024-03-28", 0.31, True)
    night("2024-03-29", 0.25, True)
    night("2024-03-30", 0.12, False)  # held back: not what the next night compares with
    night("2024-04-02", 0.40, True)   # later than the night asking (a backfill): ignored
    wh = Location(str(tmp_path))
    assert last_committed_figure(wh, dt.date(2024, 3, 31), "a", metric="ndcg", k=10) == ("2024-03-29", 0.25)
    assert last_committed_figure(wh, dt.date(2024, 3, 29), "a", metric="ndcg", k=10) == ("2024-03-28", 0.31)
    assert last_committed_figure(wh, dt.date(2024, 3, 28), "a", metric="ndcg", k=10) is None
    assert last_committed_figure(wh, dt.date(2024, 3, 31), "b", metric="ndcg", k=10) is None
    assert last_committed_figure(wh, dt.date(2024, 3, 31), "a", metric="ndcg", k=5) is None
