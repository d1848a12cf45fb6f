"""jobs.evaluate: beyond-accuracy and rating metrics on hand-worked examples, the metrics table, the ranking holdout."""

import math

import pyarrow as pa
import pytest

from jobs import evaluate
from jobs.features import FeatureState


def test_beyond_accuracy_by_hand(spark):
    # Catalogue 1..5; training events: item 1 x4, item 2 x2, item 3 x1, items 4 and 5 none (N = 7).
    train = spark.createDataFrame([(u, i) for u, i in [(9, 1)] * 4 + [(9, 2)] * 2 + [(9, 3)]],
                                  "user_id int, item_id int")
    catalogue = spark.createDataFrame([(i,) for i in range(1, 6)], "item_id int")
    # Lists at k = 2 (user 1's rank 3 is cut): u1 [1, 2], u2 [1, 3], u3 [2, 4].
    recs = spark.createDataFrame([(1, 1, 1), (1, 2, 2), (1, 3, 5), (2, 1, 1), (2, 2, 3), (3, 1, 2), (3, 2, 4)],
                                 "user_id int, rank int, item_id int")
    items = spark.createDataFrame([(1, "A|B"), (2, "B"), (3, "C"), (4, ""), (5, "C")], "item_id int, genres string")
    got = evaluate.beyond_accuracy(recs, train=train, catalogue=catalogue, k=2, genres=evaluate.item_genres(items))
    got = {r.metric: (r.value, r.users, r.k, r.slice) for r in got.collect()}
    assert {m: v[2:] for m, v in got.items()} == {m: (2, "all") for m in evaluate.BEYOND_METRICS}
    # coverage: items 1, 2, 3, 4 of 5 recommended
    assert got["coverage"][:2] == (pytest.approx(4 / 5), 3)
    # novelty: slots 1, 2, 1, 3, 2, 4 with shares 4/7, 2/7, 4/7, 1/7, 2/7 and (no events: one) 1/7
    info = [-math.log2(s / 7) for s in (4, 2, 4, 1, 2, 1)]
    assert got["novelty"][0] == pytest.approx(sum(info) / 6)
    # popularity percentile #{j : n_j < n_i} / (M - 1): item 1 4/4, item 2 3/4, item 3 2/4, items 4, 5 0
    assert got["popularity_bias"][0] == pytest.approx((1 + 0.75 + 1 + 0.5 + 0.75 + 0) / 6)
    # Gini of the counts (2, 2, 1, 1, 0), by the mean absolute difference: sum_ij |c_i - c_j| / (2 M^2 mean)
    counts = [2, 2, 1, 1, 0]
    mad = sum(abs(a - b) for a in counts for b in counts)
    assert got["exposure_gini"][0] == pytest.approx(mad / (2 * 25 * (6 / 5)))
    # genre distance 1 - Jaccard: u1 {A,B} vs {B} -> 1/2, u2 {A,B} vs {C} -> 1; u3's item 4 has no genres
    assert got["genre_diversity"][:2] == (pytest.approx(0.75), 2)


def test_exposure_gini_extremes(spark):
    catalogue = spark.createDataFrame([(i,) for i in range(4)], "item_id int")
    train = spark.createDataFrame([(0, 0)], "user_id int, item_id int")
    even = spark.createDataFrame([(u, 1, u) for u in range(4)], "user_id int, rank int, item_id int")
    one = spark.createDataFrame([(u, 1, 0) for u in range(4)], "user_id int, rank int, item_id int")
    gini = {name: {r.metric: r.value for r in evaluate.beyond_accuracy(recs, train=train, catalogue=catalogue, k=1)
                   .collect()}["exposure_gini"] for name, recs in (("even", even), ("one", one))}
    assert gini["even"] == pytest.approx(0.0) and gini["one"] == pytest.approx(3 / 4)


def test_rating_metrics_and_mean_baselines_by_hand(spark):
    # errors -1, +2, 0 -> RMSE sqrt(5/3), MAE 1
    rows = spark.createDataFrame([(1, "a", 4.0, 3.0), (2, "b", 2.0, 4.0), (2, "c", 5.0, 5.0)],
                                 "user_id int, item_id string, rating double, prediction double")
    got = {r.metric: (r.value, r.users, r.k) for r in evaluate.rating_evaluation(rows).collect()}
    assert got == {"rmse": (pytest.approx(math.sqrt(5 / 3)), 3, None), "mae": (pytest.approx(1.0), 3, None)}
    train = spark.createDataFrame([(1, "a", 2.0), (1, "b", 4.0), (3, "a", 5.0), (3, "c", None)],
                                  "user_id int, item_id string, rating double")
    held = rows.select("user_id", "item_id", "rating")
    baselines = evaluate.mean_baselines(train, held)
    # global mean (2 + 4 + 5) / 3; user 1 mean 3, user 2 unknown; item a (2 + 5) / 2, b 4, c no rating
    user = {(r.user_id, r.item_id): r.prediction for r in baselines["user_mean"].collect()}
    item = {(r.user_id, r.item_id): r.prediction for r in baselines["item_mean"].collect()}
    assert user == {(1, "a"): 3.0, (2, "b"): pytest.approx(11 / 3), (2, "c"): pytest.approx(11 / 3)}
    assert item == {(1, "a"): 3.5, (2, "b"): 4.0, (2, "c"): pytest.approx(11 / 3)}
    with pytest.raises(ValueError, match="null rating or prediction"):
        evaluate.rating_evaluation(rows.withColumn("prediction", rows.prediction * None))


def test_metrics_table_one_row_per_key(spark):
    ranking = spark.createDataFrame([("all", "ndcg", 10, 0.3, 7), ("users:cold", "ndcg", 10, 0.1, 2)],
                                    "slice string, metric string, k int, value double, users long")
    rating = spark.createDataFrame([("all", "rmse", None, 0.9, 40)],
                                   "slice string, metric string, k int, value double, users long")
    rows = (evaluate.metric_rows(ranking, model="tt", scorer="model")
            + evaluate.metric_rows(ranking, model="tt", scorer="popularity")
            + evaluate.metric_rows(rating, model="tt", scorer="model"))
    table = evaluate.metrics_table(spark, rows)
    assert table.columns == ["model", "scorer", "slice", "metric", "k", "value", "users"]
    assert [tuple(r) for r in table.collect()] == [
        ("tt", "model", "all", "ndcg", 10, 0.3, 7), ("tt", "model", "all", "rmse", None, 0.9, 40),
        ("tt", "model", "users:cold", "ndcg", 10, 0.1, 2),
        ("tt", "popularity", "all", "ndcg", 10, 0.3, 7), ("tt", "popularity", "users:cold", "ndcg", 10, 0.1, 2)]
    with pytest.raises(ValueError, match="two values"):
        evaluate.metrics_table(spark, rows + rows[:1])
    with pytest.raises(ValueError, match="expected a finite value"):
        evaluate.metrics_table(spark, [evaluate.MetricRow("tt", "model", "all", "ndcg", 10, float("nan"), 0)])


def test_ranking_holdout_routes_users_and_fixes_the_popularity_lists(spark):
    state = FeatureState(user_vocab=[1, 2], item_vocab=[10, 20, 30], vocabs={}, scalers={},
                         decls={"user": [], "item": []}, global_mean=0.0, max_multi_len={})
    train = spark.createDataFrame([(1, 10), (1, 20), (2, 10), (2, 30), (2, 20), (7, 30)],
                                  "user_id bigint, item_id bigint")
    user_features = spark.createDataFrame([(1, 2), (2, 3), (7, 1)], "user_id bigint, user_idx int")
    # user 1: held out 30 (new) and 20 (seen: not relevant); user 3: new user, held out 20 and 99 (not in catalogue)
    holdout = spark.createDataFrame([(1, 30, None), (1, 20, None), (3, 20, None), (3, 99, None)],
                                    "user_id bigint, item_id bigint, rating double")
    truth = evaluate.relevant_items(holdout, train)
    table = evaluate.ranking_holdout(truth=truth, train=train, user_features=user_features, state=state,
                                     item_ids=pa.array([10, 20, 30], pa.int64()), k=2)
    got = {r.user_id: r for r in table.collect()}
    assert sorted(got) == [1, 3] and table.columns == ["user_id", "source", "relevant", "seen", "fixed", "user_idx"]
    assert (got[1].source, got[1].relevant, got[1].seen, got[1].fixed, got[1].user_idx) == (
        "model", [30], [10, 20], None, 2)
    # popularity in train: 10 and 20 twice, 30 twice as well -> ties to the lower id: 10, 20
    assert (got[3].source, got[3].relevant, got[3].seen, got[3].fixed, got[3].user_idx) == (
        "popularity", [20, 99], None, [10, 20], None)
    sampled = evaluate.sample_users(truth, 1, seed=0)
    assert sampled.select("user_id").distinct().count() == 1
    assert sorted(map(tuple, sampled.collect())) == sorted(map(tuple, evaluate.sample_users(truth, 1, seed=0)
                                                                 .collect()))
