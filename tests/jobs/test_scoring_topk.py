"""The NumPy top-K kernel against an argsort reference (no Spark)."""

import numpy as np
import pytest

from jobs import scoring, topk


def reference_top_k(scores, k):
    """Per row: columns sorted by (-score, column), -inf dropped, first k; with their scores."""
    out = []
    for row in scores:
        order = np.lexsort((np.arange(row.size), -row))
        out.append([(int(c), float(row[c])) for c in order[:k] if np.isfinite(row[c])])
    return out


def as_lists(rows, cols, vals, n):
    out = [[] for _ in range(n)]
    for r, c, v in zip(rows, cols, vals):
        out[r].append((int(c), float(v)))
    return out


@pytest.mark.parametrize("group_width", [1, 4, 32])
@pytest.mark.parametrize("k", [1, 3, 10, 70])
def test_random_embeddings_match_argsort(k, group_width):
    rng = np.random.default_rng(k * 100 + group_width)
    users = rng.standard_normal((9, 5)).astype(np.float32)
    items = rng.standard_normal((64, 5)).astype(np.float32)
    scores = users @ items.T
    rows, cols, vals = topk.select_top_k(scores.copy(), k, group_width=group_width)
    assert as_lists(rows, cols, vals, 9) == reference_top_k(scores, k)


@pytest.mark.parametrize("group_width", [1, 2, 8, 32])
@pytest.mark.parametrize("k", [1, 4, 9, 40])
def test_ties_and_excluded_entries_match_argsort(k, group_width):
    rng = np.random.default_rng(7 + k)
    scores = rng.integers(0, 3, size=(30, 37)).astype(np.float32)  # three values: ties everywhere
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    cols, vals = topk.top_k_rows(scores, k, group_width=group_width)
    got = [[(int(c), float(v)) for c, v in zip(cr, vr) if c >= 0] for cr, vr in zip(cols, vals)]
    assert got == reference_top_k(scores, k)


def test_ties_go_to_the_lower_column_across_groups():
    # Columns 0..7 in groups of width 2 (4 groups: {0,4}, {1,5}, {2,6}, {3,7}); all equal.
    scores = np.full((1, 8), 5.0, np.float32)
    rows, cols, vals = topk.select_top_k(scores, 3, group_width=2)
    assert cols.tolist() == [0, 1, 2] and vals.tolist() == [5.0, 5.0, 5.0]


def test_k_larger_than_unseen_items_and_user_who_saw_everything():
    users = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    items = np.array([[3.0, 0.0], [2.0, 1.0], [1.0, 2.0], [0.0, 3.0]], np.float32)
    seen = [np.array([0, 3]), np.array([3, 2, 1, 0]), np.array([], np.int64)]
    rows, pos, vals = scoring.score_block(users, items, seen, k=10)
    # user 0 scores 3,2,1,0 with items 0 and 3 seen: only items 1 (2.0) and 2 (1.0) remain.
    # user 1 has seen everything: no rows.  user 2 scores 3,3,3,3: all four, lower position first.
    assert rows.tolist() == [0, 0, 2, 2, 2, 2]
    assert pos.tolist() == [1, 2, 0, 1, 2, 3]
    assert vals.tolist() == [2.0, 1.0, 3.0, 3.0, 3.0, 3.0]


def test_empty_block():
    rows, cols, vals = topk.select_top_k(np.zeros((0, 64), np.float32), 5)
    assert rows.size == cols.size == vals.size == 0
    rows, pos, vals = scoring.score_block(np.zeros((0, 3), np.float32), np.ones((4, 3), np.float32), [], k=2)
    assert rows.size == 0


def test_unpadded_width_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="padded_width"):
        topk.select_top_k(np.zeros((2, 33), np.float32), 3, group_width=32)


def test_one_item_block_equals_several_blocks_merged():
    rng = np.random.default_rng(3)
    users = rng.standard_normal((20, 6)).astype(np.float32)
    items = rng.standard_normal((150, 6)).astype(np.float32)
    items[40] = items[7]  # an exact tie across two blocks: item 7 must win
    seen_lists = [rng.choice(150, size=rng.integers(0, 30), replace=False) for _ in range(20)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seen_lists])])
    seen = np.concatenate(seen_lists)
    k = 12
    whole = scoring.BlockScorer(items, k, block_rows=20).top_k(users, offsets, seen)
    parts = []
    for lo, hi in scoring.item_blocks(150, 6, budget_bytes=4 * 6 * 32, group_width=32):  # 32 items per block
        parts.append(scoring.BlockScorer(items[lo:hi], k, block_rows=20, col_offset=lo).top_k(users, offsets, seen))
    merged = topk.keep_top_k(*(np.concatenate(p) for p in zip(*parts)), k, 20)
    scores = users @ items.T
    for r, s in enumerate(seen_lists):
        scores[r, s] = -np.inf
    expected = reference_top_k(scores, k)
    assert as_lists(*whole, 20) == expected
    assert as_lists(*merged, 20) == expected
    assert len(parts) == 5


def test_item_blocks_respect_the_budget():
    assert scoring.item_blocks(100, 8, budget_bytes=10**9) == [(0, 100)]
    # 64 rows of 8 floats = 2,048 bytes per block.
    assert scoring.item_blocks(150, 8, budget_bytes=2048, group_width=32) == [(0, 64), (64, 128), (128, 150)]


def test_mask_positions_ignores_positions_outside_the_block():
    scores = np.zeros((2, 4), np.float32)
    topk.mask_positions(scores, np.array([0, 3, 4]), np.array([10, 13, 99, 12]), col_offset=10)
    assert np.isinf(scores).tolist() == [[True, False, False, True], [False, False, True, False]]


@pytest.mark.parametrize("k", [1, 10, 40])
@pytest.mark.parametrize("values", ["normal", "few integers", "signed zeros"])
def test_wide_rows_fold_groups_into_supergroups_and_match_argsort(k, values):
    # 4 x 700 columns, width 4: 700 groups, at least two per supergroup (S = max(4k, 64) <= 160),
    # so the threshold comes from the supergroup maxima; -inf entries and whole -inf rows included.
    rng = np.random.default_rng(k)
    shape = (12, 2800)
    if values == "normal":
        scores = rng.standard_normal(shape).astype(np.float32)
    elif values == "few integers":
        scores = rng.integers(0, 4, size=shape).astype(np.float32)
    else:  # 0.0 and -0.0 are equal scores: the lower column must win between them
        scores = np.where(rng.random(shape) < 0.5, np.float32(0.0), np.float32(-0.0))
    scores[rng.random(shape) < 0.4] = -np.inf
    scores[3] = -np.inf
    scores[4, :] = -np.inf
    scores[4, [5, 2000]] = 1.0  # two finite entries, k may be larger
    rows, cols, vals = topk.select_top_k(scores.copy(), k, group_width=4)
    expected = reference_top_k(scores, k)
    assert as_lists(rows, cols, vals, 12) == expected
    assert expected[3] == [] and [c for c, _ in expected[4]] == [5, 2000][:k]


def test_keep_top_k_orders_by_score_then_lower_column_for_any_input_order():
    rows = np.array([1, 0, 1, 0, 1, 0, 1], np.int64)
    cols = np.array([9, 4, 2, 7, 5, 1, 3], np.int64)
    vals = np.array([0.5, 2.0, 0.5, 0.0, 0.75, -0.0, 0.5], np.float64)  # float64 stays float64
    r, c, v = topk.keep_top_k(rows, cols, vals, 3, 2)
    # row 0: 2.0 (col 4), then -0.0 and 0.0 are equal -> col 1 before col 7; row 1: 0.75 (col 5),
    # then the three 0.5s by column: 2, 3 (9 dropped)
    assert r.tolist() == [0, 0, 0, 1, 1, 1]
    assert c.tolist() == [4, 1, 7, 5, 2, 3]
    assert v.dtype == np.float64 and v.tolist() == [2.0, -0.0, 0.0, 0.75, 0.5, 0.5]
    # the only tie is -0.0 (col 1) against 0.0 (col 6): still equal scores, the lower column first
    r, c, v = topk.keep_top_k(np.array([0, 0, 0]), np.array([6, 1, 3]), np.array([0.0, -0.0, 1.5], np.float32), 2, 1)
    assert c.tolist() == [3, 1]
    empty = topk.keep_top_k(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 3, 4)
    assert all(a.size == 0 for a in empty)


def test_many_users_leave_in_several_output_batches_with_ranks_per_user():
    import pyarrow as pa

    rng = np.random.default_rng(11)
    n_users, n_items, k = scoring.OUTPUT_USERS + 300, 50, 3
    users = rng.standard_normal((n_users, 4)).astype(np.float32)
    items = rng.standard_normal((n_items, 4)).astype(np.float32)
    seen = [rng.choice(n_items, size=rng.integers(0, 5), replace=False) for _ in range(n_users)]
    seen[7] = np.arange(n_items)  # nothing left: no rows for this user
    lengths = [len(s) for s in seen]
    seen_pos = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)),
                                        pa.array(np.concatenate(seen).astype(np.int32)))
    embedding = pa.ListArray.from_arrays(pa.array(np.arange(n_users + 1, dtype=np.int32) * 4),
                                         pa.array(users.reshape(-1)))
    batch = pa.RecordBatch.from_arrays(
        [pa.array(np.arange(n_users) + 1000), embedding, seen_pos, pa.array(["model"] * n_users)],
        names=["user_id", "embedding", "seen_pos", "source"])
    item_ids = pa.array(np.arange(n_items) * 10)
    out = list(scoring._score_arrow_batches(iter([batch]), scoring.BlockScorer(items, k, block_rows=64), item_ids))
    assert len(out) == 2 and out[0].num_rows == scoring.OUTPUT_USERS * k - k  # user 7 has no rows
    got = pa.Table.from_batches(out).to_pylist()
    scores = users @ items.T
    for u, s in enumerate(seen):
        scores[u, s] = -np.inf
    expected = [
        {"user_id": u + 1000, "rank": rank + 1, "item_id": c * 10, "score": v, "source": "model"}
        for u, ranked in enumerate(reference_top_k(scores, k)) for rank, (c, v) in enumerate(ranked)
    ]
    assert got == expected
