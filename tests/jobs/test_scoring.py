"""Scoring inside Spark: top_k_for_users, seen positions, embeddings in workers, cold-start sources."""

import numpy as np
import pyarrow as pa
import pytest

from jobs import scoring
from jobs.features import FeatureState

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


def test_embed_rows_builds_the_embedder_once_per_worker(spark):
    import os
    import uuid

    def build():
        token = float(uuid.uuid4().int % 10**6)  # differs on every build

        def embed(batch):
            x = batch.column("x").to_numpy().astype(np.float32)
            return np.stack([2 * x, np.full_like(x, token), np.full_like(x, os.getpid())], axis=1)

        return embed

    frame = spark.createDataFrame([(i, float(i)) for i in range(40)], "item_id int, x double").repartition(8)
    key = f"test-{uuid.uuid4()}"
    out = scoring.embed_rows(frame, id_col="item_id", columns=["x"], build_embedder=build, cache_key=key).collect()
    assert sorted((r.item_id, r.embedding[0]) for r in out) == [(i, 2.0 * i) for i in range(40)]
    tokens_per_pid = {}
    for r in out:
        tokens_per_pid.setdefault(r.embedding[2], set()).add(r.embedding[1])
    assert all(len(tokens) == 1 for tokens in tokens_per_pid.values())  # 8 tasks, one build per process


def test_embed_rows_with_a_saved_tower_matches_the_tower(spark, tmp_path):
    import functools

    from jobs.storage import Location
    from models.export import side_embedder
    from models.registry import version_key
    from models.two_tower import TwoTowerModel

    spec = {
        "user": {"id": {"name": "user_idx", "vocab_size": 6}, "categorical": [], "multi_categorical": [],
                 "continuous": ["user_x"]},
        "item": {"id": {"name": "item_idx", "vocab_size": 5}, "categorical": [],
                 "multi_categorical": [{"name": "item_tags", "vocab_size": 4, "max_len": 2}], "continuous": []},
    }
    model = TwoTowerModel(spec, embedding_dim=4, hidden=(8,))
    feed = {"item_idx": np.array([2, 3, 4], np.int32), "item_tags": np.array([[2, 3], [3, -1], [-1, -1]], np.int32)}
    direct = np.asarray(model.item_tower(feed))
    model(feed | {"user_idx": np.array([2, 3, 4], np.int32), "user_x": np.zeros(3, np.float32)})
    model_file = Location(str(tmp_path / "model.keras"))
    model.save(model_file.local_path)
    items = spark.createDataFrame([(10, 2, [2, 3]), (20, 3, [3]), (30, 4, [])],
                                  "item_id int, item_idx int, item_tags array<int>")
    emb = scoring.embed_rows(items, id_col="item_id", columns=["item_idx", "item_tags"],
                             build_embedder=functools.partial(side_embedder, model_file, "item"),
                             cache_key=f"{version_key(model_file)}:item")
    ids, matrix = scoring.collect_embeddings(emb, "item_id")
    assert ids.to_pylist() == [10, 20, 30]
    np.testing.assert_allclose(matrix, direct, rtol=1e-5, atol=1e-6)


def test_load_embeddings_sorts_by_id(spark, tmp_path):
    frame = spark.createDataFrame([("b", [1.0, 2.0]), ("c", [5.0, 6.0]), ("a", [3.0, 4.0])],
                                  "item_id string, embedding array<float>").repartition(2)
    path = str(tmp_path / "item_embeddings.parquet")
    frame.write.parquet(path)  # a folder with _SUCCESS and .crc files beside the parts
    for where in (path, "file://" + path):
        ids, matrix = scoring.load_embeddings(spark, where, "item_id")
        assert ids.to_pylist() == ["a", "b", "c"]
        assert matrix.tolist() == [[3.0, 4.0], [1.0, 2.0], [5.0, 6.0]]


def test_assign_sources(spark):
    state = FeatureState(
        user_vocab=[1, 2], item_vocab=[], vocabs={}, scalers={},
        decls={"user": [{"column": "gender", "kind": "categorical"}, {"column": "tags", "kind": "multi_categorical"},
                        {"column": "age", "kind": "continuous"}], "item": []},
        global_mean=0.0, max_multi_len={},
    )
    features = spark.createDataFrame(
        [
            (1, 2, 0, [0], 0.0),     # in the vocabulary: model
            (7, 1, 3, [0], 0.0),     # no history, known gender: features
            (8, 0, 1, [1, 4], 0.0),  # no history, one known tag: features
            (9, 1, 0, [0], 0.5),     # no history, age given: features
            (10, 1, 1, [1], 0.0),    # no history, gender unseen, tags unseen, age missing: popularity
            (11, 0, None, None, None),  # nothing at all: popularity
        ],
        "user_id int, user_idx int, user_gender int, user_tags array<int>, user_age float",
    )
    users = spark.createDataFrame([(u,) for u in (1, 7, 8, 9, 10, 11, 12)], "user_id int")  # 12: no features row
    got = {r.user_id: r.source for r in scoring.assign_sources(users, features, state).collect()}
    assert got == {1: "model", 7: "features", 8: "features", 9: "features",
                   10: "popularity", 11: "popularity", 12: "popularity"}


def test_read_embeddings_takes_the_schema_from_the_files(spark, tmp_path):
    import pyarrow.parquet as pq

    # a Spark-written folder (string ids, _SUCCESS and .crc files beside the parts)
    frame = spark.createDataFrame([("b", [1.0, 2.0]), ("a", [3.0, 4.0])], "item_id string, embedding array<float>")
    spark_folder = str(tmp_path / "spark_written")
    frame.repartition(2).write.parquet(spark_folder)
    # a single pyarrow-written file (int32 ids, double values, an extra column)
    single = str(tmp_path / "user_embeddings.parquet")
    pq.write_table(pa.table({"user_id": pa.array([7, 5], pa.int32()), "extra": ["x", "y"],
                             "embedding": pa.array([[0.5], [1.5]], pa.list_(pa.float64()))}), single)
    got = scoring.read_embeddings(spark, spark_folder, "item_id")
    assert got.dtypes == [("item_id", "string"), ("embedding", "array<float>")]
    assert sorted((r.item_id, r.embedding) for r in got.collect()) == [("a", [3.0, 4.0]), ("b", [1.0, 2.0])]
    for where in (single, "file://" + single):
        got = scoring.read_embeddings(spark, where, "user_id")
        assert got.dtypes == [("user_id", "int"), ("embedding", "array<double>")]
        assert sorted((r.user_id, r.embedding) for r in got.collect()) == [(5, [1.5]), (7, [0.5])]
