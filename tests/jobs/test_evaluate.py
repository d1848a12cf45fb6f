"""jobs.evaluate: ranking metrics by hand and against Spark's RankingEvaluator, the seeds' AP examples, slices."""

import math

import numpy as np
import pytest
from pyspark.ml.evaluation import RankingEvaluator
from pyspark.mllib.evaluation import RankingMetrics

from jobs import evaluate

D2, D3, D4 = 1 / math.log2(3), 1 / math.log2(4), 1 / math.log2(5)  # discounts of ranks 2, 3, 4


def _recs(spark, lists: dict):
    rows = [(u, r, item) for u, items in lists.items() for r, item in enumerate(items, start=1)]
    return spark.createDataFrame(rows, "user_id int, rank int, item_id string")


def _truth(spark, relevant: dict):
    return spark.createDataFrame([(u, i) for u, items in relevant.items() for i in items], "user_id int, item_id string")


def _by_user_and_k(frame):
    return {(r.user_id, r.k): r for r in frame.collect()}


def test_every_ranking_metric_by_hand(spark):
    # user 1: relevant {a, b, c}; recs a (hit), x, b (hit)
    # user 2: relevant {y}; recs x, y (hit), z
    # user 3: relevant {q}; no recommendations at all: counts as zero, not dropped
    # user 4: recommendations but nothing relevant: not evaluated
    recs = _recs(spark, {1: ["a", "x", "b"], 2: ["x", "y", "z"], 4: ["a"]})
    truth = _truth(spark, {1: ["a", "b", "c"], 2: ["y"], 3: ["q"]})
    got = _by_user_and_k(evaluate.per_user_ranking(recs, truth, [3, 1, 2]))
    assert sorted(got) == [(u, k) for u in (1, 2, 3) for k in (1, 2, 3)]
    u1 = got[1, 3]
    assert (u1.n_relevant, u1.hits) == (3, 2)
    assert u1.precision == pytest.approx(2 / 3) and u1.recall == pytest.approx(2 / 3)
    assert u1.ndcg == pytest.approx((1 + D3) / (1 + D2 + D3))
    assert u1.map == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert (u1.mrr, u1.hit_rate) == (1.0, 1.0)
    u1_2 = got[1, 2]        # at K = 2 only a is a hit; AP divides by min(3, 2) = 2
    assert (u1_2.precision, u1_2.recall) == (pytest.approx(1 / 2), pytest.approx(1 / 3))
    assert u1_2.ndcg == pytest.approx(1 / (1 + D2)) and u1_2.map == pytest.approx(1 / 2)
    u2 = got[2, 3]
    assert u2.ndcg == pytest.approx(D2) and u2.map == pytest.approx(1 / 2)
    assert (u2.mrr, u2.hit_rate) == (pytest.approx(1 / 2), 1.0)
    assert (got[2, 1].mrr, got[2, 1].hit_rate, got[2, 1].hits) == (0.0, 0.0, 0)
    u3 = got[3, 3]
    assert (u3.hits, u3.precision, u3.recall, u3.ndcg, u3.map, u3.mrr, u3.hit_rate) == (0, 0, 0, 0, 0, 0, 0)
    means = {(r.metric, r.k): (r.value, r.users) for r in evaluate.ranking_evaluation(recs, truth, [3]).collect()}
    assert means["recall", 3] == (pytest.approx((2 / 3 + 1 + 0) / 3), 3)
    assert means["mrr", 3] == (pytest.approx((1 + 1 / 2 + 0) / 3), 3)
    assert means["hit_rate", 3] == (pytest.approx(2 / 3), 3)
    overall = evaluate.ranking_metrics(recs, truth, 3)
    assert overall["users"] == 3 and overall["ndcg"] == pytest.approx(((1 + D3) / (1 + D2 + D3) + D2) / 3)


def test_graded_ndcg_by_hand(spark):
    # relevant a (rating 3) and b (rating 1); recs b, a. Gains 2^r - 1: a 7, b 1.
    recs = _recs(spark, {1: ["b", "a"]})
    truth = spark.createDataFrame([(1, "a", 3.0), (1, "b", 1.0)], "user_id int, item_id string, rating double")
    got = evaluate.per_user_ranking(recs, truth, [2], graded=True).first()
    assert got.ndcg == pytest.approx((1 + 7 * D2) / (7 + 1 * D2))
    binary = evaluate.per_user_ranking(recs, truth, [2]).first()
    assert binary.ndcg == pytest.approx(1.0)
    implicit = spark.createDataFrame([(1, "a", None)], "user_id int, item_id string, rating double")
    with pytest.raises(ValueError, match="graded=False"):
        evaluate.per_user_ranking(recs, implicit, [2], graded=True)


def _random_case(seed: int, users: int = 40, items: int = 30):
    rng = np.random.default_rng(seed)
    recs, truth, ratings = {}, {}, {}
    for u in range(users):
        length = int(rng.integers(0, 13))               # some lists shorter than K, one maybe empty
        recs[u] = [int(i) for i in rng.choice(items, size=length, replace=False)]
        relevant = rng.choice(items, size=int(rng.integers(1, 9)), replace=False)
        truth[u] = [int(i) for i in relevant]
        ratings[u] = [float(r) for r in rng.integers(1, 6, size=len(relevant))]
    return recs, truth, ratings


def test_agreement_with_spark_ranking_evaluator(spark):
    recs, truth, _ = _random_case(seed=3)
    ours = evaluate.ranking_evaluation(
        spark.createDataFrame([(u, r, i) for u, items in recs.items() for r, i in enumerate(items, 1)],
                              "user_id int, rank int, item_id int"),
        spark.createDataFrame([(u, i) for u, items in truth.items() for i in items], "user_id int, item_id int"),
        [1, 3, 5, 10, 15])
    ours = {(r.metric, r.k): r.value for r in ours.collect()}
    lists = spark.createDataFrame([([float(i) for i in recs[u]], [float(i) for i in truth[u]]) for u in recs],
                                  "prediction array<double>, label array<double>")
    spark_names = {"precision": "precisionAtK", "recall": "recallAtK", "ndcg": "ndcgAtK",
                   "map": "meanAveragePrecisionAtK"}
    for k in (1, 3, 5, 10, 15):
        for metric, name in spark_names.items():
            theirs = RankingEvaluator(metricName=name, k=k).evaluate(lists)
            assert ours[metric, k] == pytest.approx(theirs, abs=1e-12), (metric, k)
    # Where the definitions differ: Spark counts a row with an empty ground truth as 0; we do not
    # evaluate such a user (it has nothing to find), so Spark's mean is ours x n / (n + 1).
    with_empty = lists.unionByName(spark.createDataFrame([([1.0, 2.0], [])], lists.schema))
    theirs = RankingEvaluator(metricName="precisionAtK", k=5).evaluate(with_empty)
    assert theirs == pytest.approx(ours["precision", 5] * len(recs) / (len(recs) + 1), abs=1e-12)


def _numpy_graded_ndcg(recs: list, relevant: list, ratings: list, k: int) -> float:
    """nDCG@k of one list with gains 2^rating - 1, the ideal from the gains sorted descending."""
    gains = {item: 2.0 ** rating - 1 for item, rating in zip(relevant, ratings)}
    dcg = sum(gains.get(item, 0.0) / np.log2(rank + 2) for rank, item in enumerate(recs[:k]))
    ideal = np.sort(np.fromiter(gains.values(), float))[::-1][:k]
    return dcg / (ideal / np.log2(np.arange(2, ideal.size + 2))).sum()


def test_graded_ndcg_agrees_with_numpy_and_pyspark_ignores_relevance(spark):
    recs, truth, ratings = _random_case(seed=5, users=25)
    frame = lambda graded: evaluate.per_user_ranking(
        spark.createDataFrame([(u, r, i) for u, items in recs.items() for r, i in enumerate(items, 1)],
                              "user_id int, rank int, item_id int"),
        spark.createDataFrame([(u, i, g) for u in truth for i, g in zip(truth[u], ratings[u])],
                              "user_id int, item_id int, rating double"),
        [4, 10], graded=graded)
    graded = {(r.user_id, r.k): r.ndcg for r in frame(True).collect()}
    for (u, k), value in graded.items():
        assert value == pytest.approx(_numpy_graded_ndcg(recs[u], truth[u], ratings[u], k), abs=1e-12)
    # PySpark 4.3's Python RankingMetrics accepts (prediction, labels, relevance) triplets but drops the
    # relevance values: it returns the binary nDCG, so it cannot check graded gains.
    binary = {(r.user_id, r.k): r.ndcg for r in frame(False).collect()}
    triplets = [([float(i) for i in recs[u]], [float(i) for i in truth[u]], ratings[u]) for u in recs]
    metrics = RankingMetrics(spark.sparkContext.parallelize(triplets))
    for k in (4, 10):
        assert metrics.ndcgAt(k) == pytest.approx(np.mean([binary[u, k] for u in recs]), abs=1e-12)
        assert metrics.ndcgAt(k) != pytest.approx(np.mean([graded[u, k] for u in recs]), abs=1e-3)


def test_the_seed_lectures_average_precision_examples(spark):
    # W4995 Lecture 11 (seeds/003): "AP@N = (1/N) sum_k P(k) if the k-th recommendation was correct", N = 3.
    # The lecture divides by N = 3 whatever the relevant set; MAP@K here divides by min(|R|, K), the same
    # whenever a user has 3 or more relevant items, so every user below has 3 (those not shown are never
    # recommended). Hits are marked 1 in rank order, as in the slides.
    examples = {
        1: [0, 0, 1],   # slide: (1/3)(1/3) = 0.11
        2: [0, 1, 1],   # slide: (1/3)[(1/2) + (2/3)] = 0.38 (0.3889, truncated)
        3: [1, 1, 1],   # slide: 1
        4: [1, 0, 0],   # slide: (1/3)(1) = 0.33
        5: [0, 1, 0],   # slide: (1/3)(1/2) = 0.15 (the exact value is 1/6 = 0.1667)
    }
    lists, relevant = {}, {}
    for u, marks in examples.items():
        lists[u] = [f"hit{u}_{r}" if hit else f"miss{u}_{r}" for r, hit in enumerate(marks)]
        hits = [item for item, hit in zip(lists[u], marks) if hit]
        relevant[u] = hits + [f"unshown{u}_{j}" for j in range(3 - len(hits))]
    got = {r.user_id: r.map for r in evaluate.per_user_metrics(_recs(spark, lists), _truth(spark, relevant), 3)
           .collect()}
    assert got[1] == pytest.approx(1 / 9) and round(got[1], 2) == 0.11
    assert got[2] == pytest.approx((1 / 2 + 2 / 3) / 3) and math.floor(got[2] * 100) / 100 == 0.38
    assert got[3] == pytest.approx(1.0)
    assert got[4] == pytest.approx(1 / 3) and round(got[4], 2) == 0.33
    assert got[5] == pytest.approx(1 / 6)
    # The slides' MAP@K example: users [1,0,0], [0,1,0], [0,0,1] -> (0.33 + 0.15 + 0.11) / 3 = 0.197 with the
    # slides' rounded (and, for 0.15, mistaken) terms; exactly (1/3 + 1/6 + 1/9) / 3 = 0.2037.
    subset = [4, 5, 1]
    recs = _recs(spark, {u: lists[u] for u in subset})
    truth = _truth(spark, {u: relevant[u] for u in subset})
    assert evaluate.ranking_metrics(recs, truth, 3)["map"] == pytest.approx((1 / 3 + 1 / 6 + 1 / 9) / 3)
    # With a single relevant item, min(|R|, K) = 1: the lone hit at rank 1, 2 or 3 scores 1, 1/2, 1/3.
    single = evaluate.per_user_metrics(_recs(spark, {u: ["i1", "i2", "i3"] for u in (1, 2, 3)}),
                                       _truth(spark, {1: ["i1"], 2: ["i2"], 3: ["i3"]}), 3)
    assert {r.user_id: r.map for r in single.collect()} == {1: pytest.approx(1.0), 2: pytest.approx(0.5),
                                                             3: pytest.approx(1 / 3)}


def test_relevant_items_drop_already_seen_and_low_ratings(spark):
    holdout = spark.createDataFrame([(1, "a", 5.0), (1, "b", 2.0), (1, "c", 4.0), (1, "a", 3.0)],
                                    "user_id int, item_id string, rating double")
    train = spark.createDataFrame([(1, "c", 3.0)], "user_id int, item_id string, rating double")
    truth = evaluate.relevant_items(holdout, train, min_rating=3.0)
    assert sorted((r.item_id, r.rating) for r in truth.collect()) == [("a", 5.0)]  # the largest rating of a


def test_slices_by_hand(spark):
    # Training: user 1 has 3 events (items a, b, c), user 2 has 7 (a x 7). User 3 is new (cold).
    train = spark.createDataFrame([(1, "a"), (1, "b"), (1, "c")] + [(2, "a")] * 7, "user_id int, item_id string")
    # Relevant: user 1 -> d, e (both cold items); user 2 -> b (warm); user 3 -> a (warm), d (cold).
    truth = _truth(spark, {1: ["d", "e"], 2: ["b"], 3: ["a", "d"]})
    members = {(r.user_id, r.slice) for r in evaluate.user_slices(truth, train, activity_edges=(5, 20)).collect()}
    assert members == {(1, "users:warm"), (1, "activity:1-5"), (2, "users:warm"), (2, "activity:6-20"),
                       (3, "users:cold")}
    assert evaluate.activity_buckets((5, 20, 100)) == [
        ("activity:1-5", 1, 5), ("activity:6-20", 6, 20), ("activity:21-100", 21, 100), ("activity:>100", 101, None)]
    with pytest.raises(ValueError, match="strictly increasing"):
        evaluate.activity_buckets((5, 5))
    recs = _recs(spark, {1: ["d", "x"], 2: ["x", "b"], 3: ["a", "y"]})
    sliced = evaluate.slice_pairs(truth, train, activity_edges=(5, 20))
    got = {(r.slice, r.metric): (r.value, r.users) for r in evaluate.ranking_evaluation(recs, sliced, [2]).collect()}
    # recall@2: user 1 1/2, user 2 1, user 3 1/2
    assert got["all", "recall"] == (pytest.approx((0.5 + 1 + 0.5) / 3), 3)
    assert got["users:warm", "recall"] == (pytest.approx(0.75), 2)
    assert got["users:cold", "recall"] == (pytest.approx(0.5), 1)
    assert got["activity:1-5", "recall"] == (pytest.approx(0.5), 1)
    assert got["activity:6-20", "hit_rate"] == (1.0, 1)
    # cold items: user 1 {d, e} (d hit at rank 1), user 3 {d} (missed); warm items: user 2 {b}, user 3 {a}
    assert got["items:cold", "recall"] == (pytest.approx((0.5 + 0) / 2), 2)
    assert got["items:cold", "ndcg"] == (pytest.approx((1 / (1 + D2) + 0) / 2), 2)
    assert got["items:warm", "mrr"] == (pytest.approx((1 / 2 + 1) / 2), 2)
    assert not any(s == "activity:>20" for s, _ in got)   # nobody has more than 20 training events
