"""Quality benchmark: every model family beside popularity and Spark ALS, on MovieLens.

    .venv/bin/python bench/quality.py [--data ../shared/data/ml-latest-small] [--only mf,deepfm] [--skip-cold]

What it runs (all in one process, one SparkSession, seeds fixed):

1. ml-latest-small, a per-user stratified 75/25 split (seed 42): for every
   user a seeded 25% of their ratings is the test set. Top-10 over the
   items each user did not rate in training (catalogue: the items seen in
   training). Every named model (implicit objective), popularity and ALS
   (implicit) give P@10, R@10, nDCG@10, MAP@10; the rating models and ALS
   (explicit) give RMSE / MAE on the test ratings. Training time is the
   final fit's wall time.
2. Hyper-parameters: each model is early-stopped on a validation split
   carved from train (a per-user 15% of train, seed 43), then refit on
   the whole of train for the best epoch count. The settings in
   ``IMPLICIT`` / ``RATING`` were chosen with ``--tune`` (a small grid on
   that validation split; the test split is never looked at).
3. Cold start against popularity, scored from features alone:
   - users: the synthetic data (which has demographics), 20% of users held
     out entirely; their whole history is the truth;
   - items: ml-latest-small, 20% of items held out entirely (features:
     genres, year); each user's held-out-item ratings are the truth and
     the candidates are the held-out items. The popularity baseline for
     cold items ranks them by the popularity of their genres in training.

The split is done here, inside bench/, with seeded hashes (the product's
``jobs.split`` only has the temporal split on main so far); the features
are built by ``jobs.features`` (the product's feature stage), and the
ranking metrics by ``jobs.evaluate``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from pyspark.sql import DataFrame, SparkSession, Window  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from jobs import evaluate, features, synthetic  # noqa: E402
from jobs.session import build_spark  # noqa: E402

K = 10
ML_ITEM_FEATURES = (
    features.FeatureDecl("year", "continuous"),
    features.FeatureDecl("genres", "multi_categorical", separator="|"),
)


# -- data ------------------------------------------------------------------------------------
def load_movielens(spark: SparkSession, folder: str) -> tuple[DataFrame, DataFrame]:
    """ml-latest-small CSVs -> (ratings[user_id, item_id, rating, ts], movies[item_id, year, genres]).

    Read here with Spark directly: the product's MovieLens loader (jobs.sources)
    is being added in another change.
    """
    ratings = spark.read.csv(os.path.join(folder, "ratings.csv"), header=True,
                             schema="userId long, movieId long, rating double, timestamp long")
    ratings = ratings.select(
        F.col("userId").alias("user_id"), F.col("movieId").alias("item_id"), "rating",
        F.timestamp_seconds("timestamp").alias("ts"),
    )
    movies = spark.read.csv(os.path.join(folder, "movies.csv"), header=True, quote='"', escape='"',
                            schema="movieId long, title string, genres string")
    year = F.regexp_extract("title", r"\((\d{4})\)\s*$", 1).try_cast("int")
    movies = movies.select(
        F.col("movieId").alias("item_id"),
        year.alias("year"),
        F.when(F.col("genres") != "(no genres listed)", F.col("genres")).alias("genres"),
    )
    return ratings, movies


def stratified_split(events: DataFrame, fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """Per-user split: round(fraction * n_u) of each user's events (seeded hash order) go to the second part.

    Deterministic whatever the partitioning: the order within a user is
    xxhash64(seed, user_id, item_id).
    """
    order = Window.partitionBy("user_id").orderBy(F.xxhash64(F.lit(seed), "user_id", "item_id"), "item_id")
    ranked = events.withColumn("_n", F.count(F.lit(1)).over(Window.partitionBy("user_id"))).withColumn(
        "_r", F.row_number().over(order))
    held = F.col("_r") <= F.round(F.col("_n") * fraction)
    return ranked.filter(~held).drop("_n", "_r"), ranked.filter(held).drop("_n", "_r")


def holdout_entities(events: DataFrame, key: str, fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """Hold out a seeded ``fraction`` of the distinct ``key`` values entirely: (kept events, held-out events)."""
    ids = events.select(key).distinct()
    ranked = ids.withColumn("_h", F.xxhash64(F.lit(seed), key)).withColumn(
        "_r", F.percent_rank().over(Window.orderBy("_h", key)))
    held = ranked.filter(F.col("_r") < fraction).select(key)
    return events.join(held, on=key, how="left_anti"), events.join(held, on=key, how="inner")


@dataclasses.dataclass
class Prepared:
    """Parquet paths of one train window's features (see ``prepare``)."""

    spec: dict
    state_json: str
    examples: str
    user_features: str
    item_features: str
    heldout_examples: str | None = None


def prepare(spark, work: str, name: str, train: DataFrame, users, items, user_decls, item_decls,
            heldout: DataFrame | None = None, warm_items_only: bool = True) -> Prepared:
    """Fit the feature state on ``train`` and write examples, user and item features.

    ``heldout`` events (if any) become ``heldout_examples`` with the same
    features (rows of entities unknown to the features are kept: their ids
    map to the unseen index). With ``warm_items_only`` the item table keeps
    only items of the training window (the catalogue ranked in the warm test).
    """
    state = features.fit_feature_state(train, users, items, user_decls=user_decls, item_decls=item_decls)
    user_f = features.build_side_features(train, users, state, "user")
    item_f = features.build_side_features(train, items, state, "item")
    if warm_items_only:
        item_f = item_f.filter(F.col("item_idx") >= features.FIRST_INDEX)
    out = {n: os.path.join(work, name, n) for n in ("user_features", "item_features", "examples", "heldout")}
    user_f.write.mode("overwrite").parquet(out["user_features"])
    item_f.write.mode("overwrite").parquet(out["item_features"])
    uf, itf = spark.read.parquet(out["user_features"]), spark.read.parquet(out["item_features"])
    features.training_examples(train, uf, itf).write.mode("overwrite").parquet(out["examples"])
    held_path = None
    if heldout is not None:
        features.training_examples(heldout, uf, itf).write.mode("overwrite").parquet(out["heldout"])
        held_path = out["heldout"]
    return Prepared(state.model_spec(), state.to_json(), out["examples"], out["user_features"],
                    out["item_features"], held_path)
