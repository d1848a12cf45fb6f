"""Scoring inside Spark: top_k_for_users, the block scorer, seen positions."""

import numpy as np
import pyarrow as pa
import pytest

from jobs import scoring

from tests.jobs.test_scoring_topk import reference_top_k


def test_top_k_for_users_in_spark(spark):
    item_ids = pa.array([100, 200, 300, 400], pa.int64())
    items = np.array([[1.0], [4.0], [2.0], [3.0]], dtype=np.float32)
    users = spark.createDataFrame(
        [(1, [1.0], [1], "model"), (2, [-1.0], None, "features"), (3, [1.0], [0, 1, 2, 3], "model")],
        "user_id bigint, embedding array<float>, seen_pos array<int>, source string",
    )
    recs = scoring.top_k_for_users(users, item_ids, items, k=2, block_rows=1)
    got = sorted((r.user_id, r.rank, r.item_id, r.score, r.source) for r in recs.collect())
    assert got == [
        (1, 1, 400, 3.0, "model"),    # item 200 (score 4) seen
        (1, 2, 300, 2.0, "model"),
        (2, 1, 100, -1.0, "features"),
        (2, 2, 300, -2.0, "features"),
    ]                                 # user 3 has seen every item: no rows


@pytest.mark.parametrize("item_block_bytes", [2**30, 4 * 3 * 32])  # one block; 32 items per block
def test_random_embeddings_with_ties_match_argsort(spark, item_block_bytes):
    rng = np.random.default_rng(5)
    n_users, n_items, k = 23, 100, 7
    users = rng.integers(-2, 3, size=(n_users, 3)).astype(np.float32)  # small integers: many ties
    items = rng.integers(-2, 3, size=(n_items, 3)).astype(np.float32)
    item_ids = pa.array([f"i{n:03d}" for n in range(n_items)])  # string ids, sorted
    seen = [sorted(rng.choice(n_items, size=rng.integers(0, 97), replace=False).tolist()) for _ in range(n_users)]
    seen[4] = list(range(n_items))  # has seen everything
    seen[5] = list(range(3, n_items))  # 3 unseen items left, k = 7
    rows = [(f"u{u}", users[u].tolist(), seen[u] or None, "model") for u in range(n_users)]
    frame = spark.createDataFrame(rows, "user_id string, embedding array<float>, seen_pos array<int>, source string")
    frame = frame.repartition(8)  # 23 users over 8 partitions; more partitions than rows below
    recs = scoring.top_k_for_users(frame, item_ids, items, k=k, block_rows=4, item_block_bytes=item_block_bytes)
    got = {}
    for r in sorted(recs.collect(), key=lambda r: (r.user_id, r.rank)):
        got.setdefault(r.user_id, []).append((int(r.item_id[1:]), r.score))
    scores = users @ items.T
    for u in range(n_users):
        scores[u, seen[u]] = -np.inf
    expected = {f"u{u}": ranked for u, ranked in enumerate(reference_top_k(scores, k)) if ranked}
    assert got == expected
    assert len(expected["u5"]) == 3 and "u4" not in expected


def test_empty_partitions_and_no_users(spark):
    items = np.eye(3, dtype=np.float32)
    schema = "user_id int, embedding array<float>, seen_pos array<int>, source string"
    one = spark.createDataFrame([(9, [0.0, 1.0, 0.0], None, "model")], schema).repartition(6)
    assert [(r.user_id, r.item_id, r.rank) for r in
            scoring.top_k_for_users(one, pa.array([1, 2, 3]), items, k=1).collect()] == [(9, 2, 1)]
    none = spark.createDataFrame([], schema)
    assert scoring.top_k_for_users(none, pa.array([1, 2, 3]), items, k=2).count() == 0


def test_bad_inputs_name_the_problem(spark):
    users = spark.createDataFrame([(1, [1.0, 2.0], None, "model")],
                                  "user_id int, embedding array<float>, seen_pos array<int>, source string")
    with pytest.raises(ValueError, match="sorted ascending"):
        scoring.top_k_for_users(users, pa.array([2, 1]), np.ones((2, 2), np.float32), k=1)
    with pytest.raises(ValueError, match="item 1 has a NaN"):
        scoring.top_k_for_users(users, pa.array([1, 2]), np.array([[np.nan, 0], [0, 0]], np.float32), k=1)
    with pytest.raises(Exception, match="id 1 has a length 2 vector, expected length 3"):
        scoring.top_k_for_users(users, pa.array([1, 2]), np.ones((2, 3), np.float32), k=1).collect()


def test_seen_positions_maps_items_to_catalogue(spark):
    catalogue = scoring.catalogue_frame(spark, pa.array(["a", "b", "c"]))
    events = spark.createDataFrame([(1, "c"), (1, "a"), (1, "a"), (2, "zzz")], "user_id int, item_id string")
    seen = {r.user_id: sorted(r.seen_pos) for r in scoring.seen_positions(events, catalogue).collect()}
    assert seen == {1: [0, 2]}
