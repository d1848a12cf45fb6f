"""Decomposed exhaustive scoring against a plain DeepFM written out pair by pair in NumPy."""

import numpy as np
import pyarrow as pa
import pytest

from jobs import decomposed

from tests.jobs.test_scoring_topk import as_lists, reference_top_k

E, H1, H2 = 4, 8, 5  # field embedding width, deep layer widths


def relu(x):
    return np.maximum(x, 0.0)


class PlainDeepFM:
    """DeepFM over four fields (user id, user gender, item id, item genre), one pair at a time."""

    def __init__(self, rng, n_users, n_items):
        self.tables = {"uid": n_users, "gender": 3, "iid": n_items, "genre": 4}
        self.v = {f: rng.normal(0, 0.5, (size, E)).astype(np.float32) for f, size in self.tables.items()}
        self.w = {f: rng.normal(0, 0.5, size).astype(np.float32) for f, size in self.tables.items()}
        self.w0 = np.float32(0.3)
        self.W1 = rng.normal(0, 0.5, (4 * E, H1)).astype(np.float32)
        self.b1 = rng.normal(0, 0.1, H1).astype(np.float32)
        self.W2 = rng.normal(0, 0.5, (H1, H2)).astype(np.float32)
        self.b2 = rng.normal(0, 0.1, H2).astype(np.float32)
        self.w_out = rng.normal(0, 0.5, H2).astype(np.float32)
        self.b_out = np.float32(-0.2)
        self.gender = rng.integers(0, 3, n_users)
        self.genre = rng.integers(0, 4, n_items)

    def predict(self, u, i):
        """The logit of one (user, item) pair, every FM pair interaction written out."""
        fields = [("uid", u), ("gender", self.gender[u]), ("iid", i), ("genre", self.genre[i])]
        vectors = [self.v[f][idx].astype(np.float64) for f, idx in fields]
        fm = self.w0 + sum(self.w[f][idx] for f, idx in fields)
        fm += sum(vectors[a] @ vectors[b] for a in range(4) for b in range(a + 1, 4))
        hidden = relu(np.concatenate(vectors) @ self.W1 + self.b1)
        deep = relu(hidden @ self.W2 + self.b2) @ self.w_out + self.b_out
        return fm + deep

    def all_pairs(self, n_users, n_items):
        return np.array([[self.predict(u, i) for i in range(n_items)] for u in range(n_users)])

    def user_parts(self, n_users):
        a, b = self.v["uid"][:n_users], self.v["gender"][self.gender[:n_users]]
        bias = self.w0 + self.w["uid"][:n_users] + self.w["gender"][self.gender[:n_users]] + (a * b).sum(1)
        return decomposed.Parts(bias, a + b, np.concatenate([a, b], 1) @ self.W1[: 2 * E] + self.b1)

    def item_parts(self, n_items):
        a, b = self.v["iid"][:n_items], self.v["genre"][self.genre[:n_items]]
        bias = self.w["iid"][:n_items] + self.w["genre"][self.genre[:n_items]] + (a * b).sum(1)
        return decomposed.Parts(bias, a + b, np.concatenate([a, b], 1) @ self.W1[2 * E :])

    def head(self):
        return decomposed.PairHead(layers=[(self.W2, self.b2)], out_w=self.w_out, out_b=float(self.b_out))


@pytest.fixture(scope="module")
def deepfm():
    rng = np.random.default_rng(11)
    model = PlainDeepFM(rng, 13, 40)
    return model, model.all_pairs(13, 40)


def seen_arrays(seen_lists):
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seen_lists])]).astype(np.int64)
    flat = np.concatenate([np.asarray(s, np.int64) for s in seen_lists]) if seen_lists else np.zeros(0, np.int64)
    return offsets, flat


def test_decomposed_scores_equal_the_plain_model(deepfm):
    model, plain = deepfm
    users, items, head = model.user_parts(13), model.item_parts(40), model.head()
    np.testing.assert_allclose(head.cross(users, items), plain, rtol=1e-5, atol=1e-5)
    rows, cols = np.array([0, 5, 12, 12]), np.array([39, 0, 7, 8])
    np.testing.assert_allclose(head.aligned(users.take(rows), items.take(cols)), plain[rows, cols], rtol=1e-5, atol=1e-5)


def test_exhaustive_top_k_matches_argsort_of_the_plain_model(deepfm):
    model, plain = deepfm
    rng = np.random.default_rng(2)
    seen_lists = [rng.choice(40, size=rng.integers(0, 12), replace=False) for _ in range(13)]
    seen_lists[3] = np.arange(40)  # saw everything
    seen_lists[4] = np.arange(2, 40)  # two left, k = 6
    masked = plain.copy()
    for u, s in enumerate(seen_lists):
        masked[u, s] = -np.inf
    expected = reference_top_k(masked, 6)
    head = model.head()
    for user_block, item_block in ((13, 40), (3, 7), (1, 32)):
        rows, pos, vals = decomposed.exhaustive_top_k(model.user_parts(13), model.item_parts(40), head, 6,
                                                      *seen_arrays(seen_lists), user_block=user_block,
                                                      item_block=item_block, group_width=4)
        got = as_lists(rows, pos, vals, 13)
        assert [[c for c, _ in r] for r in got] == [[c for c, _ in r] for r in expected], (user_block, item_block)
        for g, e in zip(got, expected):
            np.testing.assert_allclose([v for _, v in g], [v for _, v in e], rtol=1e-5, atol=1e-5)
    assert got[3] == [] and len(got[4]) == 2


def test_flops_per_pair_counted_by_hand(deepfm):
    model, _ = deepfm
    # FM dot 2*4 + 3 bias adds; first layer add + ReLU 2*8; 8->5: 2*8*5 + 2*5; output 2*5 + 1.
    assert model.head().flops_per_pair(E) == 11 + 16 + 90 + 11
    assert decomposed.PairHead().flops_per_pair(16) == 35  # FM / MF only: dot + bias adds


def test_two_stage_retrieves_by_embedding_then_ranks_by_the_model(spark, deepfm):
    model, plain = deepfm
    rng = np.random.default_rng(4)
    user_emb = rng.standard_normal((13, 3)).astype(np.float32)
    item_emb = rng.standard_normal((40, 3)).astype(np.float32)
    seen_lists = [rng.choice(40, size=rng.integers(0, 5), replace=False) for _ in range(13)]
    retrieval = user_emb @ item_emb.T
    for u, s in enumerate(seen_lists):
        retrieval[u, s] = -np.inf
    expected = []
    for u, candidates in enumerate(reference_top_k(retrieval, 9)):
        ranked = np.full(40, -np.inf)
        ranked[[c for c, _ in candidates]] = plain[u, [c for c, _ in candidates]]
        expected.append([c for c, _ in reference_top_k(ranked[None], 4)[0]])
    users, items = model.user_parts(13), model.item_parts(40)
    rows, pos, vals = decomposed.two_stage_top_k(user_emb, item_emb, users, items, model.head(), 4, 9,
                                                 *seen_arrays(seen_lists), block_rows=5)
    assert [[c for c, _ in r] for r in as_lists(rows, pos, vals, 13)] == expected
    frame = spark.createDataFrame(
        [(u, user_emb[u].tolist(), float(users.bias[u]), users.dot[u].tolist(), users.hidden[u].tolist(),
          seen_lists[u].tolist() or None, "model") for u in range(13)],
        "user_id int, embedding array<float>, bias float, dot array<float>, hidden array<float>, "
        "seen_pos array<int>, source string")
    recs = decomposed.top_k_two_stage_for_users(frame.repartition(2), pa.array(np.arange(40)), item_emb, items,
                                                model.head(), k=4, n_retrieve=9)
    got = {}
    for r in sorted(recs.collect(), key=lambda r: (r.user_id, r.rank)):
        got.setdefault(r.user_id, []).append(r.item_id)
    assert got == dict(enumerate(expected))
    with pytest.raises(ValueError, match="more than the item block budget"):
        decomposed.top_k_two_stage_for_users(frame, pa.array(np.arange(40)), item_emb, items, model.head(), k=4,
                                             item_block_bytes=1024)
    with pytest.raises(ValueError, match="k=10 must not exceed"):
        decomposed.two_stage_top_k(user_emb, item_emb, model.user_parts(13), model.item_parts(40), model.head(),
                                   10, 9, *seen_arrays(seen_lists))


def test_decomposed_in_spark_with_several_item_blocks(spark, deepfm):
    model, plain = deepfm
    users = model.user_parts(13)
    items = model.item_parts(40)
    seen = {u: [u, u + 1] for u in range(13)}
    rows = [(u, float(users.bias[u]), users.dot[u].tolist(), users.hidden[u].tolist(), seen[u], "model")
            for u in range(13)]
    frame = spark.createDataFrame(
        rows, "user_id int, bias float, dot array<float>, hidden array<float>, seen_pos array<int>, source string")
    item_ids = pa.array(np.arange(40) * 10)
    per_item = 4 * (1 + E + H1)
    recs = decomposed.top_k_decomposed_for_users(frame.repartition(3), item_ids, items, model.head(), k=5,
                                                 item_block_bytes=per_item * 16, group_width=4)
    got = {}
    for r in sorted(recs.collect(), key=lambda r: (r.user_id, r.rank)):
        got.setdefault(r.user_id, []).append(r.item_id // 10)
    masked = plain.copy()
    for u, s in seen.items():
        masked[u, s] = -np.inf
    assert got == {u: [c for c, _ in ranked] for u, ranked in enumerate(reference_top_k(masked, 5))}
