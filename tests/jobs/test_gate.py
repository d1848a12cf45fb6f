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
