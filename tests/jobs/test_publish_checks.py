"""jobs.publish_checks: what recommendations must satisfy before a night is committed."""

import pytest

from jobs.publish_checks import ValidationError, check_recommendations

SCHEMA = "user_id bigint, rank int, item_id bigint, score float, source string"


def _frames(spark, rows, seen=((1, 10),), users=(1, 2, 3), items=(10, 20, 30, 40)):
    return dict(
        recs=spark.createDataFrame(rows, SCHEMA),
        seen_events=spark.createDataFrame(list(seen), "user_id bigint, item_id bigint"),
        users=spark.createDataFrame([(u,) for u in users], "user_id bigint"),
        item_ids=spark.createDataFrame([(i,) for i in items], "item_id bigint"),
    )


GOOD = [
    (1, 1, 20, 0.9, "model"), (1, 2, 30, 0.5, "model"),       # user 1 saw 10: 3 unseen, K = 2
    (2, 1, 10, 0.8, "features"), (2, 2, 20, 0.8, "features"),  # ties allowed
    (3, 1, 10, 5.0, "popularity"), (3, 2, 40, 1.0, "popularity"),
]


def test_good_recommendations_pass_and_are_counted(spark):
    counts = check_recommendations(k=2, **_frames(spark, GOOD))
    assert (counts.users, counts.rows, counts.short_users, counts.users_without_rows) == (3, 6, 0, {})


def test_fewer_rows_only_where_fewer_unseen_items_exist(spark):
    # user 1 rated 10, 20, 30: one unseen item (40), so one row; user 4 rated everything: no row, with a reason
    seen = [(1, 10), (1, 20), (1, 30), (4, 10), (4, 20), (4, 30), (4, 40)]
    rows = [(1, 1, 40, 0.1, "model"), (2, 1, 10, 0.8, "model"), (2, 2, 20, 0.7, "model")]
    counts = check_recommendations(k=2, **_frames(spark, rows, seen=seen, users=(1, 2, 4)))
    assert (counts.users, counts.short_users, counts.users_without_rows) == (2, 1, {"rated every catalogue item": 1})


@pytest.mark.parametrize("rows, problem", [
    (GOOD[:-1], r"a number of rows other than min\(K=2, the user's unseen catalogue items\): 1 row"),
    ([*GOOD[:4]], r"other than min\(K=2.*'user_id': 3"),                       # user 3 has no rows
    ([(1, 1, 10, 0.9, "model"), *GOOD[1:]], r"an item the user rated up to ds: 1 row.*'item_id': 10"),
    ([(1, 1, 20, float("nan"), "model"), *GOOD[1:]], r"NaN or infinite score: 1 row"),
    ([(1, 1, 20, float("inf"), "model"), *GOOD[1:]], r"NaN or infinite score: 1 row"),
    ([(1, 1, 20, 0.1, "model"), *GOOD[1:]], r"a score above the score of the rank before it: 1 row"),
    ([(1, 1, 20, 0.9, "model"), (1, 3, 30, 0.5, "model"), *GOOD[2:]], r"ranks that are not exactly 1..n"),
    ([(1, 1, 20, 0.9, "model"), (1, 2, 20, 0.5, "model"), *GOOD[2:]], r"ranks that are not exactly 1..n"),
    ([(1, 1, 20, 0.9, "guess"), *GOOD[1:]], r"source not one of model, features, popularity: 1 row"),
    ([*GOOD, (9, 1, 20, 0.1, "model")], r"a user who is not in the users table: 1 row"),
])
def test_each_broken_rule_is_named_with_its_rows(spark, rows, problem):
    with pytest.raises(ValidationError, match=problem):
        check_recommendations(k=2, **_frames(spark, rows))


def test_the_schema_is_checked_first(spark):
    frames = _frames(spark, GOOD)
    frames["recs"] = frames["recs"].select("user_id", "item_id", "rank", "score", "source")
    with pytest.raises(ValidationError, match=r"columns \['user_id', 'item_id', 'rank'"):
        check_recommendations(k=2, **frames)
    recs = _frames(spark, GOOD)["recs"]
    frames["recs"] = recs.withColumn("score", recs.score.cast("double"))
    with pytest.raises(ValidationError, match="column score is double, expected float"):
        check_recommendations(k=2, **frames)
