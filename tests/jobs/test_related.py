"""Related items: cosine and item-item weights through the blocked top-K job, the co-occurrence baseline, HitRate."""

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from jobs import related
from jobs.recommend import ScoringSettings

from tests.jobs.test_scoring_topk import reference_top_k


def _lists(frame):
    """DataFrame[item_id, rank, related_item_id, score] -> {item_id: [(related_item_id, score), ...]} by rank."""
    out = {}
    rows = frame.collect() if hasattr(frame, "collect") else frame
    for r in sorted(rows, key=lambda r: (r.item_id, r.rank)):
        out.setdefault(r.item_id, []).append((r.related_item_id, r.score))
    return out


def _reference(similarity, ids, k):
    """NumPy reference: argsort of the similarity matrix with its diagonal removed (-inf), ties to the lower id."""
    scores = np.array(similarity, dtype=np.float64)
    np.fill_diagonal(scores, -np.inf)
    return {ids[a]: [(ids[c], s) for c, s in ranked] for a, ranked in enumerate(reference_top_k(scores, k))}


def _assert_lists_equal(got, expected):
    assert got.keys() == expected.keys()
    for item, ranked in expected.items():
        assert [c for c, _ in got[item]] == [c for c, _ in ranked], item
        np.testing.assert_allclose([s for _, s in got[item]], [s for _, s in ranked], rtol=1e-5, atol=1e-6)


def _tied_embeddings(m, seed):
    """[m, 4] item vectors drawn from 5 base vectors (duplicates: exact ties), distinct cosines well apart."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((5, 4))
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    cosines = np.sort((unit @ unit.T)[np.triu_indices(5, 1)])
    assert np.diff(cosines).min() > 1e-4  # no near-ties between different base vectors
    return base[rng.integers(0, 5, m)].astype(np.float32)


@pytest.mark.parametrize("k", [3, 40])  # 40 > catalogue - 1
def test_cosine_related_items_equal_numpy_argsort(spark, k):
    m = 30
    emb = _tied_embeddings(m, seed=7)
    ids = list(range(100, 100 + 3 * m, 3))
    got = _lists(related.from_embeddings(spark, pa.array(ids, pa.int64()), emb, k=k,
                                         settings=ScoringSettings(block_rows=4)))
    unit = emb.astype(np.float64) / np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
    expected = _reference(unit @ unit.T, ids, k)
    _assert_lists_equal(got, expected)
    assert all(len(v) == min(k, m - 1) for v in got.values())
    assert all(item not in [c for c, _ in v] for item, v in got.items())


def test_cosine_ties_go_to_the_lower_id_and_zero_vectors_score_zero(spark):
    ids = pa.array(["a", "b", "c", "d", "e"])
    emb = np.array([[1, 0], [2, 0], [1, 0], [0, 0], [0, 3]], np.float32)
    got = _lists(related.from_embeddings(spark, ids, emb, k=2))
    # a: b and c both have cosine 1 (b, then c); d is the zero vector: every cosine 0, ties to the lower ids.
    assert got["a"] == [("b", 1.0), ("c", 1.0)]
    assert got["b"] == [("a", 1.0), ("c", 1.0)]
    assert got["d"] == [("a", 0.0), ("b", 0.0)]
    assert got["e"] == [("a", 0.0), ("b", 0.0)]


def test_item_item_weights_equal_numpy_argsort(spark):
    rng = np.random.default_rng(3)
    m, k = 21, 5
    weights = rng.integers(-3, 4, size=(m, m)).astype(np.float32)  # small integers: many ties
    ids = [f"i{n:02d}" for n in range(m)]
    got = _lists(related.from_weights(spark, pa.array(ids), weights, k=k, settings=ScoringSettings(block_rows=4)))
    _assert_lists_equal(got, _reference(weights, ids, k))


def test_item_item_factors_score_left_times_right(spark):
    rng = np.random.default_rng(4)
    m, k = 17, 20  # k > m - 1
    left = rng.integers(-2, 3, size=(m, 3)).astype(np.float32)
    right = rng.integers(-2, 3, size=(m, 3)).astype(np.float32)
    ids = list(range(m))
    got = _lists(related.from_factors(spark, pa.array(ids, pa.int32()), left, right, k=k))
    _assert_lists_equal(got, _reference(left @ right.T, ids, k))


def test_bad_inputs_name_the_problem(spark):
    ids = pa.array([1, 2, 3])
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        related.from_weights(spark, ids, np.ones((3, 2), np.float32), k=1)
    with pytest.raises(ValueError, match="same width"):
        related.from_factors(spark, ids, np.ones((3, 2), np.float32), np.ones((3, 4), np.float32), k=1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        related.from_embeddings(spark, ids, np.ones((3, 2), np.float32), k=0)


def test_co_occurrence_jaccard_by_hand(spark):
    # U_1 = {1, 2, 5}, U_2 = {1, 2, 3}, U_3 = {1, 3}, U_4 = {4, 5} (user 1's repeated event on item 1 counts once)
    events = spark.createDataFrame(
        [(1, 1), (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 2), (3, 3), (4, 4), (5, 1), (5, 4)],
        "user_id int, item_id int")
    table = related.co_occurrence(events, k=2).collect()
    assert sorted(r.rank for r in table if r.item_id == 1) == [1, 2]
    got = _lists(table)
    assert got.keys() == {1, 2, 3, 4}
    # J(1,2) = 2/4, J(1,3) = 1/4, J(1,4) = 1/4 (tie: 3 before 4), J(2,3) = 2/3, J(2,4) = J(3,4) = 0 (not listed)
    np.testing.assert_allclose([s for _, s in got[1]], [0.5, 0.25], rtol=1e-6)
    assert [c for c, _ in got[1]] == [2, 3]
    assert [c for c, _ in got[2]] == [3, 1] and np.allclose([s for _, s in got[2]], [2 / 3, 0.5])
    assert [c for c, _ in got[3]] == [2, 1] and np.allclose([s for _, s in got[3]], [2 / 3, 0.25])
    assert got[4] == [(1, 0.25)]


def test_hit_rate_by_hand(spark):
    t = dt.datetime(2024, 1, 1)
    later = dt.datetime(2024, 1, 2)
    rel = spark.createDataFrame([(1, 1, 2, 0.9), (1, 2, 3, 0.8), (2, 1, 3, 0.9), (2, 2, 1, 0.5), (3, 1, 2, 0.7)],
                                "item_id int, rank int, related_item_id int, score float")
    train = spark.createDataFrame(
        [(10, 2, t), (10, 1, later),   # last item 1: related [2, 3]; next item 3 -> hit at rank 2
         (11, 2, t),                   # last item 2: related [3, 1]; next item 5 -> miss
         (13, 4, t),                   # last item 4 has no related rows -> miss
         (14, 1, t),                   # no holdout items: not counted
         (15, 3, t), (15, 1, t)],      # one instant: the higher id (3) is last; related [2]; next 2 -> hit at 1
        "user_id int, item_id int, ts timestamp")
    truth = spark.createDataFrame([(10, 3), (11, 5), (12, 1), (13, 1), (15, 2)], "user_id int, item_id int")
    rows = [tuple(r) for r in related.hit_rate(rel, train, truth, ks=[2, 1]).collect()]
    assert rows == [("all", "related_hit_rate", 1, 0.25, 4), ("all", "related_hit_rate", 2, 0.5, 4)]
    with pytest.raises(ValueError, match="ks must be >= 1"):
        related.hit_rate(rel, train, truth, ks=[0])
