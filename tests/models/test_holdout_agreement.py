"""One figure: the nDCG@K training logs for its kept epoch is the nDCG@K the night publishes for the same holdout.

The holdout has what made the two disagree before (ml-latest-small: two_tower 0.0346 logged vs 0.0529
published): a cold user (held-out events, no training events, so no feature row), a held-out item
outside the catalogue, and a held-out item the user already had in training.
"""

import datetime as dt
import functools

import numpy as np
import pytest

from jobs import embeddings, evaluate, features, recommend
from jobs.storage import Location
from models.data import side_columns
from models.evaluation import RankingHoldout
from models.export import side_embedder
from models.registry import load_model, version_key
from models.settings import TrainSettings
from models.train import train_model

K = 4
CUTOFF = dt.datetime(2024, 2, 1, tzinfo=dt.UTC)


def _events(seed: int = 0):
    """Train and holdout rows (user_id, item_id, rating, ts): even users like items 100..107, odd 108..115."""
    rng = np.random.default_rng(seed)
    train, holdout = [], []
    for user in range(1, 25):
        group = 100 + 8 * (user % 2)
        liked = rng.permutation(8) + group
        for n, item in enumerate(liked[:5]):
            train.append((user, int(item), 4.0, CUTOFF - dt.timedelta(days=20 - n)))
        for n, item in enumerate(liked[5:7]):
            holdout.append((user, int(item), 5.0, CUTOFF + dt.timedelta(hours=n + 1)))
    holdout.append((3, train[10][1], 3.0, CUTOFF + dt.timedelta(hours=5)))   # user 3 rated it in training too
    holdout.append((1, 999, 5.0, CUTOFF + dt.timedelta(hours=6)))           # not in the catalogue
    holdout += [(500, item, 5.0, CUTOFF + dt.timedelta(hours=7)) for item in (100, 101, 108)]   # a new user
    return train, holdout


def test_training_logs_the_ndcg_the_night_publishes(spark, tmp_path):
    schema = "user_id bigint, item_id bigint, rating double, ts timestamp"
    rows_train, rows_holdout = _events()
    train, holdout = spark.createDataFrame(rows_train, schema), spark.createDataFrame(rows_holdout, schema)
    root = Location(str(tmp_path))
    fitted = features.FeatureFitter((), (), features.FeatureSettings(seed=1)).fit_transform(train, None, None,
                                                                                           as_of=CUTOFF)
    state = fitted.state
    spec = state.model_spec()
    for side in ("user", "item"):
        features.write_feature_table(getattr(fitted, f"{side}_features"), root / f"{side}_features")
    features.write_training_examples(train, None, None, state, root / "examples", tables=fitted)
    fitted.release()
    user_features = spark.read.parquet((root / "user_features").uri)
    item_ids = embeddings.read_ids(root / "item_features", "item_id")

    # The one definition: the relevant pairs once, the holdout table from them, handed to training.
    truth = evaluate.relevant_items(holdout, train).cache()
    evaluate.ranking_holdout(truth=truth, train=train, user_features=user_features, state=state, item_ids=item_ids,
                             k=K).write.parquet((root / "ranking_holdout").uri)
    result = train_model("mf", spec, root / "examples", root / "model",
                         settings=TrainSettings(epochs=3, batch_size=32, eval_k=K, patience=0, seed=2),
                         model_params={"embedding_dim": 8}, item_features=root / "item_features",
                         ranking_holdout=root / "ranking_holdout", log=lambda _: None)
    assert [r["holdout"]["users"] for r in result.history] == [25] * 3   # 24 warm users and the new one

    # The published figure: the saved (kept-epoch) model's embeddings, scored by jobs.recommend, evaluated.
    tables = {}
    for side in ("user", "item"):
        frame = embeddings.embed_rows(
            spark.read.parquet((root / f"{side}_features").uri), id_col=f"{side}_id",
            columns=list(side_columns(spec[side])),
            build_embedder=functools.partial(side_embedder, result.model_file, side),
            cache_key=f"{version_key(result.model_file)}:{side}")
        frame.sort(f"{side}_id").write.parquet((root / f"emb_{side}").uri)
        tables[side] = root / f"emb_{side}"
    table_ids, matrix = embeddings.load_embeddings(tables["item"], "item_id")
    recs = recommend.from_embeddings(
        users=truth.select("user_id").distinct(), user_features=user_features, state=state, seen_events=train,
        user_embeddings=embeddings.read_embeddings(spark, tables["user"], "user_id"), item_ids=table_ids,
        item_matrix=matrix, k=K)
    published = {r.metric: (r.value, r.users) for r in evaluate.ranking_evaluation(recs, truth, [K]).collect()}
    assert published["ndcg"][1] == 25
    assert result.best_metric == pytest.approx(published["ndcg"][0], abs=1e-6)
    kept = result.history[result.best_epoch - 1]["holdout"]
    for metric in ("precision", "recall", "map"):
        assert kept[metric] == pytest.approx(published[metric][0], abs=1e-6)

    # Before: the feature-joined holdout examples drop the new user and the item outside the catalogue,
    # and the figure is another one.
    examples = features.join_features(holdout, user_features, spark.read.parquet((root / "item_features").uri))
    examples.write.parquet((root / "holdout_examples").uri)
    legacy = RankingHoldout.from_examples(root / "holdout_examples", root / "examples", root / "item_features", spec,
                                          k=K).evaluate(load_model(result.model_file))
    assert legacy["users"] == 24
    assert legacy["ndcg"] != pytest.approx(published["ndcg"][0], abs=1e-4)
    truth.unpersist()
