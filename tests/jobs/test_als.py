"""jobs.als: ALS on a tiny hand-made matrix; its factors as embedding tables score as ALSModel.transform does."""

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from jobs import embeddings, scoring
from jobs.als import ALSSettings, als_input, train_als
from jobs.storage import Location

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
# Users "u1".."u4" (string ids), items 101..104 (bigint): u1, u2 like 101/102, u3, u4 like 103/104.
RATED = [("u1", 101, 5.0), ("u1", 102, 4.0), ("u2", 101, 4.0), ("u2", 102, 5.0), ("u2", 103, 1.0),
         ("u3", 103, 5.0), ("u3", 104, 4.0), ("u4", 104, 5.0), ("u4", 103, 4.0), ("u4", 101, 1.0)]


def _events(spark, rows=RATED):
    return spark.createDataFrame([(u, i, r, T0 + dt.timedelta(hours=n)) for n, (u, i, r) in enumerate(rows)],
                                 "user_id string, item_id bigint, rating double, ts timestamp")


def _dot_products(factors, pairs):
    users = {r.user_id: np.asarray(r.embedding) for r in factors.user_embeddings().collect()}
    items = {r.item_id: np.asarray(r.embedding) for r in factors.item_embeddings().collect()}
    return {(u, i): float(users[u] @ items[i]) for u, i in pairs}


@pytest.mark.parametrize("objective", ["implicit", "rating"])
def test_exported_factors_score_as_the_als_model(spark, objective):
    events = _events(spark)
    factors = train_als(events, ALSSettings(objective=objective, rank=2, max_iter=8, reg_param=0.05, alpha=2.0,
                                            seed=3))
    user_table, item_table = factors.user_embeddings(), factors.item_embeddings()
    assert dict(user_table.dtypes) == {"user_id": "string", "embedding": "array<float>"}
    assert dict(item_table.dtypes) == {"item_id": "bigint", "embedding": "array<float>"}
    assert [r.user_id for r in user_table.collect()] == ["u1", "u2", "u3", "u4"]   # sorted, only trained ids
    assert [r.item_id for r in item_table.collect()] == [101, 102, 103, 104]
    assert all(len(r.embedding) == 2 for r in user_table.collect())
    every_pair = [(u, i) for u in ("u1", "u2", "u3", "u4") for i in (101, 102, 103, 104)]
    pairs = spark.createDataFrame(every_pair, "user_id string, item_id bigint")
    predicted = {(r.user_id, r.item_id): r.prediction for r in factors.predict(pairs).collect()}
    # ALSModel.transform itself, on ALS's own indices
    indexed = pairs.join(factors.users, "user_id").join(factors.items, "item_id")
    transformed = {(r.user_id, r.item_id): r.prediction for r in factors.model.transform(indexed).collect()}
    dots = _dot_products(factors, every_pair)
    for pair in every_pair:
        assert dots[pair] == pytest.approx(transformed[pair], rel=1e-5, abs=1e-5)
        assert predicted[pair] == pytest.approx(transformed[pair], rel=1e-6, abs=1e-6)
    if objective == "implicit":   # the block structure is learned: u1 prefers 101 to 104, u3 the opposite
        assert dots["u1", 101] > dots["u1", 104] and dots["u3", 104] > dots["u3", 101]
    else:                         # explicit ALS fits the rated pairs (only those: unrated ones are free)
        errors = [dots[u, i] - r for u, i, r in RATED]
        assert np.sqrt(np.mean(np.square(errors))) < 0.5


def test_the_factors_are_scored_by_the_exhaustive_top_k_job(spark, tmp_path):
    factors = train_als(_events(spark), ALSSettings(rank=2, max_iter=5, seed=1))
    for side, table in (("user", factors.user_embeddings()), ("item", factors.item_embeddings())):
        table.write.parquet(str(tmp_path / side))
    item_ids, matrix = embeddings.load_embeddings(Location(str(tmp_path / "item")), "item_id")
    assert item_ids.type == pa.int64() and item_ids.to_pylist() == [101, 102, 103, 104]
    user_vectors = embeddings.read_embeddings(spark, Location(str(tmp_path / "user")), "user_id")
    rows = user_vectors.withColumn("seen_pos", F.array().cast("array<int>")).withColumn("source", F.lit("model"))
    top = scoring.top_k_for_users(rows, item_ids, matrix, k=4)
    dots = _dot_products(factors, [(u, i) for u in ("u1", "u3") for i in (101, 102, 103, 104)])
    for user in ("u1", "u3"):
        ranked = [r.item_id for r in sorted(top.where(f"user_id = '{user}'").collect(), key=lambda r: r.rank)]
        assert ranked == sorted((101, 102, 103, 104), key=lambda i: (-dots[user, i], i))


def test_als_input_counts_events_or_takes_the_latest_rating(spark):
    events = _events(spark, [("u1", 101, 2.0), ("u1", 101, 5.0), ("u1", 102, None), ("u2", 101, 3.0)])
    implicit = {(r.user_id, r.item_id): r.value for r in als_input(events, "implicit").collect()}
    rating = {(r.user_id, r.item_id): r.value for r in als_input(events, "rating").collect()}
    assert implicit == {("u1", 101): 2.0, ("u1", 102): 1.0, ("u2", 101): 1.0}
    assert rating == {("u1", 101): 5.0, ("u2", 101): 3.0}


def test_bad_settings_and_empty_windows_are_refused(spark):
    with pytest.raises(ValueError, match="objective must be implicit or rating"):
        train_als(_events(spark), ALSSettings(objective="clicks"))
    unrated = _events(spark, [("u1", 101, None)])
    with pytest.raises(ValueError, match="no rated events"):
        train_als(unrated, ALSSettings(objective="rating"))
    checkpoint = spark.sparkContext.getCheckpointDir()
    assert checkpoint is not None   # the test session sets one (jobs.session.build_spark(checkpoint_dir=...))
    long_run = ALSSettings(rank=2, max_iter=12, checkpoint_interval=5, seed=0)
    assert len(train_als(_events(spark), long_run).user_embeddings().collect()) == 4
