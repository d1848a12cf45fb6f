"""jobs.recommend: users routed by what the model knows of them (model, features, popularity)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs import embeddings, recommend
from jobs.features import FeatureState
from jobs.storage import Location


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
    got = {r.user_id: r.source for r in recommend.assign_sources(users, features, state).collect()}
    assert got == {1: "model", 7: "features", 8: "features", 9: "features",
                   10: "popularity", 11: "popularity", 12: "popularity"}


def _embeddings(path, id_col, ids, vectors):
    path.mkdir()
    lists = pa.array([list(map(float, v)) for v in vectors], pa.list_(pa.float32()))
    pq.write_table(pa.table({id_col: pa.array(ids, pa.int64()), "embedding": lists}), path / "part-0.parquet")
    return Location(str(path))


def test_recommend_routes_users_by_source(spark, tmp_path):
    state = FeatureState(
        user_vocab=[1], item_vocab=[10, 20, 30], vocabs={"user_gender": ["F", "M"]}, scalers={},
        decls={"user": [{"column": "gender", "kind": "categorical"}], "item": []},
        global_mean=3.0, max_multi_len={},
    )
    items = _embeddings(tmp_path / "items", "item_id", [30, 10, 20], np.array([[3.0], [1.0], [2.0]]))
    user_vectors = _embeddings(tmp_path / "users", "user_id", [1, 2, 3], np.array([[1.0], [-1.0], [5.0]]))
    user_features = tmp_path / "user_features"
    user_features.mkdir()
    pq.write_table(pa.table({
        "user_id": pa.array([1, 2, 3], pa.int64()),
        "user_idx": pa.array([2, 1, 1], pa.int32()),     # user 1 is in the vocabulary; 2 and 3 are not
        "user_gender": pa.array([3, 2, 1], pa.int32()),  # user 2: known gender; user 3: unseen gender
    }), user_features / "part-0.parquet")
    events = spark.createDataFrame([(1, 30), (4, 30), (4, 10)], "user_id bigint, item_id bigint")
    users = spark.createDataFrame([(1,), (2,), (3,), (5,)], "user_id bigint")  # 5 has no features row

    item_ids, item_matrix = embeddings.load_embeddings(items, "item_id")
    recs = recommend.from_embeddings(
        users=users, user_features=spark.read.parquet(str(user_features)), state=state, seen_events=events,
        user_embeddings=embeddings.read_embeddings(spark, user_vectors, "user_id"), item_ids=item_ids,
        item_matrix=item_matrix, k=2)
    got = sorted((r.user_id, r.rank, r.item_id, r.score, r.source) for r in recs.collect())
    # user 1: scores 10 -> 1, 20 -> 2, 30 -> 3; 30 seen.  user 2: scores -1, -2, -3.
    # users 3 and 5: popularity in events: 30 twice, 10 once, 20 never.
    assert got == [
        (1, 1, 20, 2.0, "model"), (1, 2, 10, 1.0, "model"),
        (2, 1, 10, -1.0, "features"), (2, 2, 20, -2.0, "features"),
        (3, 1, 30, 2.0, "popularity"), (3, 2, 10, 1.0, "popularity"),
        (5, 1, 30, 2.0, "popularity"), (5, 2, 10, 1.0, "popularity"),
    ]
