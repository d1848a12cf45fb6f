import numpy as np
import pyarrow as pa
import pytest

from jobs import scoring


def reference_top_k(scores, k):
    """NumPy reference: sort each row by (-score, column), drop -inf."""
    out = []
    for row in scores:
        order = np.lexsort((np.arange(row.size), -row))
        chosen = [c for c in order[:k] if np.isfinite(row[c])]
        out.append(chosen)
    return out


@pytest.mark.parametrize("k", [1, 3, 7, 20])
def test_top_k_rows_matches_argsort_reference_with_ties(k):
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 12)).astype(np.float32)  # many ties
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    cols, vals = scoring.top_k_rows(scores, k)
    expected = reference_top_k(scores, k)
    for r in range(len(scores)):
        got = [c for c, v in zip(cols[r], vals[r]) if np.isfinite(v)]
        assert got == expected[r]


def test_score_block_excludes_seen_and_handles_exhausted_users():
    users = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    items = np.array([[3.0, 0.0], [2.0, 1.0], [1.0, 2.0], [0.0, 3.0]], dtype=np.float32)
    seen = [np.array([0]), np.array([0, 1, 2, 3]), np.array([], dtype=np.int64)]
    rows, pos, vals = scoring.score_block(users, items, seen, k=2)
    # user 0 scores 3,2,1,0 -> item 0 seen -> items 1 (2.0) and 2 (1.0)
    # user 1 has seen everything -> nothing
    # user 2 scores 3,3,3,3 -> ties broken by lower position: 0, 1
    assert rows.tolist() == [0, 0, 2, 2]
    assert pos.tolist() == [1, 2, 0, 1]
    assert vals.tolist() == [2.0, 1.0, 3.0, 3.0]


def test_top_k_for_users_in_spark(spark):
    item_ids = pa.array([100, 200, 300, 400], pa.int64())
    items = np.array([[1.0], [4.0], [2.0], [3.0]], dtype=np.float32)
    users = spark.createDataFrame(
        [(1, [1.0], [1], "model"), (2, [-1.0], None, "features"), (3, [1.0], [0, 1, 2, 3], "model")],
        "user_id bigint, embedding array<float>, seen_pos array<int>, source string",
    )
    recs = scoring.top_k_for_users(users, item_ids, items, k=2, user_id_type="bigint", block_rows=1)
    got = sorted((r.user_id, r.rank, r.item_id, r.score, r.source) for r in recs.collect())
    assert got == [
        (1, 1, 400, 3.0, "model"),    # item 200 (score 4) seen
        (1, 2, 300, 2.0, "model"),
        (2, 1, 100, -1.0, "features"),
        (2, 2, 300, -2.0, "features"),
    ]


def test_seen_positions_maps_items_to_catalogue(spark):
    catalogue = scoring.catalogue_frame(spark, pa.array(["a", "b", "c"]))
    events = spark.createDataFrame([(1, "c"), (1, "a"), (1, "a"), (2, "zzz")], "user_id int, item_id string")
    seen = {r.user_id: sorted(r.seen_pos) for r in scoring.seen_positions(events, catalogue).collect()}
    assert seen == {1: [0, 2]}
