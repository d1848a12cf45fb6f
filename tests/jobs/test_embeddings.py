"""jobs.embeddings: embedding tables computed in Spark and read back for scoring."""

import numpy as np
import pyarrow as pa

from jobs import embeddings
from jobs.storage import Location


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
    out = embeddings.embed_rows(frame, id_col="item_id", columns=["x"], build_embedder=build, cache_key=key).collect()
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
    emb = embeddings.embed_rows(items, id_col="item_id", columns=["item_idx", "item_tags"],
                             build_embedder=functools.partial(side_embedder, model_file, "item"),
                             cache_key=f"{version_key(model_file)}:item")
    ids, matrix = embeddings.collect_embeddings(emb, "item_id")
    assert ids.to_pylist() == [10, 20, 30]
    np.testing.assert_allclose(matrix, direct, rtol=1e-5, atol=1e-6)


def test_load_embeddings_sorts_by_id(spark, tmp_path):
    frame = spark.createDataFrame([("b", [1.0, 2.0]), ("c", [5.0, 6.0]), ("a", [3.0, 4.0])],
                                  "item_id string, embedding array<float>").repartition(2)
    path = str(tmp_path / "item_embeddings.parquet")
    frame.write.parquet(path)  # a folder with _SUCCESS and .crc files beside the parts
    for where in (path, "file://" + path):
        ids, matrix = embeddings.load_embeddings(Location(where), "item_id")
        assert ids.to_pylist() == ["a", "b", "c"]
        assert matrix.tolist() == [[3.0, 4.0], [1.0, 2.0], [5.0, 6.0]]


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
    got = embeddings.read_embeddings(spark, Location(spark_folder), "item_id")
    assert got.dtypes == [("item_id", "string"), ("embedding", "array<float>")]
    assert sorted((r.item_id, r.embedding) for r in got.collect()) == [("a", [3.0, 4.0]), ("b", [1.0, 2.0])]
    for where in (single, "file://" + single):
        got = embeddings.read_embeddings(spark, Location(where), "user_id")
        assert got.dtypes == [("user_id", "int"), ("embedding", "array<double>")]
        assert sorted((r.user_id, r.embedding) for r in got.collect()) == [(5, [1.5]), (7, [0.5])]


def test_read_ids_sorts_the_catalogue(spark, tmp_path):
    spark.createDataFrame([(30,), (10,), (20,)], "item_id bigint").repartition(3).write.parquet(str(tmp_path / "t"))
    assert embeddings.read_ids(Location(str(tmp_path / "t")), "item_id").to_pylist() == [10, 20, 30]
