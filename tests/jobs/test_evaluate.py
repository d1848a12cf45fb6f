import math

import pytest

from jobs import evaluate


def test_metrics_by_hand(spark):
    # user 1: relevant {a, b, c}; recs a (hit), x, b (hit)
    # user 2: relevant {y}; recs x, y (hit), z
    # user 3: relevant {q}; no recommendations at all (counts as all-miss)
    recs = spark.createDataFrame(
        [(1, 1, "a"), (1, 2, "x"), (1, 3, "b"), (2, 1, "x"), (2, 2, "y"), (2, 3, "z")],
        "user_id int, rank int, item_id string",
    )
    truth = spark.createDataFrame(
        [(1, "a"), (1, "b"), (1, "c"), (2, "y"), (3, "q")], "user_id int, item_id string"
    )
    per_user = {r.user_id: r for r in evaluate.per_user_metrics(recs, truth, 3).collect()}
    u1, u2, u3 = per_user[1], per_user[2], per_user[3]
    assert (u1.hits, u1.precision, u1.recall) == (2, pytest.approx(2 / 3), pytest.approx(2 / 3))
    dcg1 = 1 + 1 / math.log2(4)
    idcg1 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert u1.ndcg == pytest.approx(dcg1 / idcg1)
    assert u1.map == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert u2.ndcg == pytest.approx((1 / math.log2(3)) / 1.0)
    assert u2.map == pytest.approx(1 / 2)
    assert (u3.hits, u3.recall, u3.ndcg, u3.map) == (0, 0.0, 0.0, 0.0)
    overall = evaluate.ranking_metrics(recs, truth, 3)
    assert overall["users"] == 3
    assert overall["recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_seed_lecture_ap_examples(spark):
    # W4995's AP@3 examples: a single correct item at rank 1, 2 or 3 -> 1, 1/2, 1/3.
    recs = spark.createDataFrame(
        [(u, r, f"i{r}") for u in (1, 2, 3) for r in (1, 2, 3)], "user_id int, rank int, item_id string"
    )
    truth = spark.createDataFrame([(1, "i1"), (2, "i2"), (3, "i3")], "user_id int, item_id string")
    per_user = {r.user_id: r.map for r in evaluate.per_user_metrics(recs, truth, 3).collect()}
    assert per_user == {1: pytest.approx(1.0), 2: pytest.approx(0.5), 3: pytest.approx(1 / 3)}


def test_cut_off_ignores_ranks_beyond_k(spark):
    recs = spark.createDataFrame([(1, 1, "x"), (1, 2, "a")], "user_id int, rank int, item_id string")
    truth = spark.createDataFrame([(1, "a")], "user_id int, item_id string")
    assert evaluate.ranking_metrics(recs, truth, 1)["recall"] == 0.0
    assert evaluate.ranking_metrics(recs, truth, 2)["recall"] == 1.0


def test_relevant_items_drop_already_seen_and_low_ratings(spark):
    holdout = spark.createDataFrame([(1, "a", 5.0), (1, "b", 2.0), (1, "c", 4.0)], "user_id int, item_id string, rating double")
    train = spark.createDataFrame([(1, "c", 3.0)], "user_id int, item_id string, rating double")
    truth = evaluate.relevant_items(holdout, train, min_rating=4.0)
    assert sorted(r.item_id for r in truth.collect()) == ["a"]


def test_metrics_frame_has_one_row_per_model_scorer_and_metric(spark):
    ranking = {"precision": 0.1, "recall": 0.2, "ndcg": 0.3, "map": 0.4, "users": 7}
    popular = {"precision": 0.01, "recall": 0.02, "ndcg": 0.03, "map": 0.04, "users": 7}
    results = {
        "tt": {"k": 5, "model": ranking, "popularity": popular},
        "mf": {"k": 5, "model": ranking, "popularity": popular, "rating": {"rmse": 0.9, "mae": 0.7, "rows": 40}},
    }
    rows = {(r.model, r.scorer, r.metric): (r.k, r.value, r.users)
            for r in evaluate.metrics_frame(spark, results).collect()}
    assert len(rows) == 2 * 2 * 4 + 2
    assert rows["tt", "model", "ndcg"] == (5, 0.3, 7)
    assert rows["mf", "popularity", "map"] == (5, 0.04, 7)
    assert rows["mf", "model", "rmse"] == (None, 0.9, 40) and rows["mf", "model", "mae"] == (None, 0.7, 40)
    assert ("tt", "model", "rmse") not in rows
