"""Approximate top-K: FAISS candidates re-scored exactly, seen items excluded, K rows guaranteed, recall measured."""

import numpy as np
import pyarrow as pa
import pytest

faiss = pytest.importorskip("faiss")

from jobs import ann  # noqa: E402

from tests.jobs.test_scoring_topk import reference_top_k  # noqa: E402

SCHEMA = "user_id bigint, embedding array<float>, seen_pos array<int>, source string"


def _problem(seed, n_users, n_items, dim, max_seen, integers=False):
    rng = np.random.default_rng(seed)
    if integers:  # small integers: many exact ties
        users = rng.integers(-2, 3, size=(n_users, dim)).astype(np.float32)
        items = rng.integers(-2, 3, size=(n_items, dim)).astype(np.float32)
    else:
        users = rng.standard_normal((n_users, dim)).astype(np.float32)
        items = rng.standard_normal((n_items, dim)).astype(np.float32)
    seen = [sorted(rng.choice(n_items, size=rng.integers(0, max_seen + 1), replace=False).tolist())
            for _ in range(n_users)]
    return users, items, seen


def _frame(spark, users, seen):
    rows = [(u, users[u].tolist(), seen[u] or None, "model") for u in range(len(users))]
    return spark.createDataFrame(rows, SCHEMA)


def _expected(users, items, seen, k):
    """NumPy reference: argsort of users @ items.T with the seen items removed, ties to the lower position."""
    scores = users.astype(np.float64) @ items.astype(np.float64).T
    for u, s in enumerate(seen):
        scores[u, s] = -np.inf
    return {u: [c for c, _ in ranked] for u, ranked in enumerate(reference_top_k(scores, k)) if ranked}


def _collected(recs):
    got = {}
    for r in sorted(recs.collect(), key=lambda r: (r.user_id, r.rank)):
        got.setdefault(r.user_id, []).append(r.item_id)
    return got


def test_flat_index_equals_exact_scoring_with_ties(spark):
    users, items, seen = _problem(1, 40, 150, 3, max_seen=60, integers=True)
    seen[3] = list(range(150))        # has seen everything: no rows
    seen[4] = list(range(2, 150))     # 2 unseen items left, k = 6
    recs = ann.top_k_for_users(_frame(spark, users, seen), pa.array(np.arange(150)), items, k=6,
                               settings=ann.AnnSettings(index="flat", extra_candidates=0, candidate_multiple=1.0),
                               block_rows=8)
    assert recs.columns == ["user_id", "rank", "item_id", "score", "source"]
    assert _collected(recs) == _expected(users, items, seen, 6)


def test_scorer_falls_back_to_exhaustive_for_ties_and_short_lists():
    items = np.array([[1.0], [1.0], [1.0], [1.0], [0.5]], np.float32)  # four items tied
    index = ann.build_index(items, ann.AnnSettings(index="flat"))
    settings = ann.AnnSettings(index="flat", extra_candidates=0, candidate_multiple=1.0)
    scorer = ann.AnnScorer(index, items, 2, settings, block_rows=4)
    user = np.array([[1.0]], np.float32)
    rows, pos, vals = scorer.top_k(user, np.array([0, 1]), np.array([0]))  # item 0 seen; 3 candidates retrieved
    assert (rows.tolist(), pos.tolist(), vals.tolist()) == ([0, 0], [1, 2], [1.0, 1.0])
    assert scorer.fallback_users == 1  # the 2nd score equals the lowest retrieved one: re-scored exhaustively


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_exactly_k_unseen_items_per_user(spark, index):
    n_users, n_items, k = 60, 600, 10
    users, items, seen = _problem(2, n_users, n_items, 8, max_seen=80)
    # the user's best items seen: their unseen candidates run short in a small probe
    scores = users @ items.T
    seen[0] = np.argsort(-scores[0])[:80].tolist()
    settings = ann.AnnSettings(index=index, nlist=30, nprobe=1, hnsw_m=8, ef_construction=16, ef_search=8,
                               extra_candidates=0, candidate_multiple=1.0)
    recs = ann.top_k_for_users(_frame(spark, users, seen), pa.array(np.arange(n_items)), items, k=k,
                               settings=settings, block_rows=16)
    got = {}
    for r in recs.collect():
        got.setdefault(r.user_id, []).append((r.rank, r.item_id))
    assert sorted(got) == list(range(n_users))
    for u, ranked in got.items():
        assert sorted(rank for rank, _ in ranked) == list(range(1, k + 1)), u
        assert not set(i for _, i in ranked) & set(seen[u]), u
        assert len(set(i for _, i in ranked)) == k


def test_recall_is_measured_and_the_floor_fails_the_run(spark):
    n_users, n_items, k = 50, 2000, 10
    users, items, seen = _problem(3, n_users, n_items, 16, max_seen=5)
    item_ids = pa.array(np.arange(n_items))
    frame = _frame(spark, users, seen).cache()
    settings = ann.AnnSettings(index="ivf", nlist=40, nprobe=1)
    recs = ann.top_k_for_users(frame, item_ids, items, k=k, settings=settings).cache()
    report = ann.recall_at_k(recs, frame, item_ids, items, k=k, sample_users=n_users, seed=11)
    # independent: the same recall from the collected lists and the NumPy reference
    got, expected = _collected(recs), _expected(users, items, seen, k)
    by_hand = np.mean([len(set(got[u]) & set(expected[u])) / len(expected[u]) for u in expected])
    assert report.users == n_users and report.k == k
    assert report.recall == pytest.approx(by_hand)
    assert report.recall < 0.99  # one IVF cell of 40 misses neighbours
    assert ann.check_recall(report, floor=report.recall) is report
    with pytest.raises(ann.RecallBelowFloor, match=r"ann recall@10 is 0\.\d{4} on 50 sampled users, below the floor"):
        ann.check_recall(report, floor=min(1.0, report.recall + 0.01))
    sampled = ann.recall_at_k(recs, frame, item_ids, items, k=k, sample_users=7, seed=11)
    assert sampled.users == 7 and 0.0 <= sampled.recall <= 1.0
    assert sampled.as_manifest()["ann_recall_users"] == 7
    frame.unpersist()
    recs.unpersist()


@pytest.mark.parametrize("kwargs, message", [
    ({"index": "annoy"}, "ann index 'annoy' is not one of flat, ivf, hnsw"),
    ({"nprobe": 0}, "nprobe must be a positive integer"),
    ({"nlist": -1}, "nlist must be a positive integer"),
    ({"extra_candidates": -1}, "extra_candidates must be an integer >= 0"),
    ({"candidate_multiple": 0.5}, "candidate_multiple must be >= 1"),
])
def test_settings_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ann.AnnSettings(**kwargs)


def test_index_round_trips_through_bytes():
    items = np.random.default_rng(4).standard_normal((300, 8)).astype(np.float32)
    for kind in ann.INDEX_TYPES:
        settings = ann.AnnSettings(index=kind, nlist=5, hnsw_m=8)
        index = ann.build_index(items, settings)
        again = ann.deserialize_index(ann.serialize_index(index))
        assert again.ntotal == 300
        np.testing.assert_array_equal(index.search(items[:5], 3)[1], again.search(items[:5], 3)[1])
    assert ann.candidate_count(10, 5, 1000, ann.AnnSettings(extra_candidates=3)) == 20  # 2 x k beats 10 + 5 + 3
    assert ann.candidate_count(10, 50, 40, ann.AnnSettings()) == 40  # at most the catalogue
    # default IVF cells: min(4 sqrt(m), min(m, train_sample) / 39)
    assert ann.AnnSettings().cells(1_000_000) == 2564 and ann.AnnSettings().cells(100) == 2
    assert ann.AnnSettings(nlist=50).cells(20) == 20
