"""The ``als`` model kind: Spark MLlib ALS on a window's events, its factors exported as embedding tables.

ALS factorises the user x item matrix into user factors x_u and item factors
y_i of ``rank`` dimensions; the score is s(u, i) = x_u . y_i, so the factors
are embedding tables exactly like a factorised Keras model's
(``jobs.embeddings``: [``{side}_id`` in the source's type, ``embedding``
list<float>], sorted by id) and the exhaustive top-K job scores them
(``jobs.recommend.from_embeddings``). Objective (Spark's ALS; Hu, Koren and
Volinsky 2008 for implicit feedback, Zhou et al. 2008 for the weighted
regularisation):

    min_{x, y} sum_{(u,i)} c_ui (p_ui - x_u . y_i)^2 + reg_param (sum_u n_u |x_u|^2 + sum_i n_i |y_i|^2)

* ``implicit``: r_ui = the pair's number of events in the window, p_ui = 1
  where r_ui > 0 (else 0, over every pair), c_ui = 1 + alpha r_ui;
* ``rating``: p_ui = the pair's latest rating, c_ui = 1, over the rated pairs only.

n_u, n_i: the user's (item's) number of rated pairs. Users and items
without events in the window have no factors and no row in the tables.
"""

from __future__ import annotations

import dataclasses

from pyspark.ml.feature import StringIndexer
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

_USER, _ITEM, _VALUE = "_als_user", "_als_item", "_als_value"


@dataclasses.dataclass(frozen=True)
class ALSSettings:
    """How to train ALS (the config's ``als`` keys; Spark's defaults).

    Attributes:
        objective: "implicit" (events) or "rating" (explicit ratings).
        rank: factor dimensions (the config's ``embedding_dim``).
        max_iter: alternating iterations.
        reg_param: the regularisation weight (scaled by each user's and item's rated pairs).
        alpha: implicit only: confidence per event, c = 1 + alpha r.
        seed: the factors' initialisation seed.
        checkpoint_interval: checkpoint the factors every this many iterations (Spark's
            ``checkpointInterval``; it needs the session's checkpoint directory).
    """

    objective: str = "implicit"
    rank: int = 10
    max_iter: int = 10
    reg_param: float = 0.1
    alpha: float = 1.0
    seed: int = 42
    checkpoint_interval: int = 10

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        if self.objective not in ("implicit", "rating"):
            raise ValueError(f"als objective must be implicit or rating, got {self.objective!r}")
        for name in ("rank", "max_iter", "checkpoint_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"als {name} must be >= 1, got {getattr(self, name)}")
        for name in ("reg_param", "alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"als {name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class ALSFactors:
    """A fitted ALS model and the id mappings that turn its factors into embedding tables.

    Attributes:
        model: the fitted ``pyspark.ml.recommendation.ALSModel`` (ids are ALS's int indices).
        users: DataFrame[user_id (source type), _als_user: int].
        items: DataFrame[item_id (source type), _als_item: int].
        settings: how it was trained.
    """

    model: ALSModel
    users: DataFrame
    items: DataFrame
    settings: ALSSettings

    def _table(self, factors: DataFrame, ids: DataFrame, side: str, index: str) -> DataFrame:
        return (factors.select(F.col("id").alias(index), F.col("features").alias("embedding"))
                .join(ids, on=index, how="inner").select(f"{side}_id", "embedding").sort(f"{side}_id"))

    def user_embeddings(self) -> DataFrame:
        """DataFrame[user_id (source type), embedding: array<float> (rank)], sorted by user_id."""
        return self._table(self.model.userFactors, self.users, "user", _USER)

    def item_embeddings(self) -> DataFrame:
        """DataFrame[item_id (source type), embedding: array<float> (rank)], sorted by item_id."""
        return self._table(self.model.itemFactors, self.items, "item", _ITEM)

    def predict(self, pairs: DataFrame) -> DataFrame:
        """``pairs`` (DataFrame[user_id, item_id, ...]) with ``prediction`` = x_u . y_i (null: ALS has no factors)."""
        indexed = pairs.join(self.users, on="user_id", how="left").join(self.items, on="item_id", how="left")
        scored = self.model.transform(indexed.where(
            F.col(_USER).isNotNull() & F.col(_ITEM).isNotNull()))
        unknown = indexed.where(F.col(_USER).isNull() | F.col(_ITEM).isNull()).withColumn(
            "prediction", F.lit(None).cast("float"))
        return scored.unionByName(unknown).drop(_USER, _ITEM)


def _index(events: DataFrame, column: str, index: str) -> DataFrame:
    """DataFrame[column, index: int]: every distinct id of ``events`` numbered 0.. (a fixed order)."""
    ids = events.select(column).distinct()
    indexer = StringIndexer(inputCol=column, outputCol=index, stringOrderType="alphabetAsc").fit(ids)
    return indexer.transform(ids).select(column, F.col(index).cast("int").alias(index))


def als_input(events: DataFrame, objective: str) -> DataFrame:
    """The values ALS fits, one row per (user, item) pair of the window.

    Args:
        events: DataFrame[user_id, item_id, rating, ts].
        objective: "implicit": the pair's event count; "rating": the pair's latest rating
            (events without a rating are ignored).

    Returns:
        DataFrame[user_id, item_id, value: float].
    """
    if objective == "rating":
        rated = events.where(F.col("rating").isNotNull())
        value = F.max_by(F.col("rating"), F.col("ts"))
    else:
        rated, value = events, F.count(F.lit(1))
    return rated.groupBy("user_id", "item_id").agg(value.cast("float").alias("value"))


def train_als(events: DataFrame, settings: ALSSettings = ALSSettings()) -> ALSFactors:
    """Fit ALS on a window's events (formulas: module docstring).

    Args:
        events: the window's events, DataFrame[user_id, item_id, rating, ts] (the source's id types).
        settings: objective and hyper-parameters.

    Returns:
        ALSFactors (``user_embeddings()`` and ``item_embeddings()`` are the embedding tables).
    """
    settings.check()
    spark = events.sparkSession
    if settings.max_iter > settings.checkpoint_interval and spark.sparkContext.getCheckpointDir() is None:
        raise ValueError(
            f"als max_iter {settings.max_iter} > checkpoint_interval {settings.checkpoint_interval} needs a "
            "checkpoint directory (without one the factors' lineage grows with every iteration until the "
            "job overflows); build the session with jobs.session.build_spark(checkpoint_dir=...) or lower max_iter")
    pairs = als_input(events, settings.objective)
    if pairs.limit(1).count() == 0:
        what = "rated events" if settings.objective == "rating" else "events"
        raise ValueError(f"als ({settings.objective}): the window has no {what} to train on")
    users, items = _index(pairs, "user_id", _USER), _index(pairs, "item_id", _ITEM)
    data = pairs.join(users, on="user_id").join(items, on="item_id").select(
        _USER, _ITEM, F.col("value").alias(_VALUE))
    als = ALS(rank=settings.rank, maxIter=settings.max_iter, regParam=settings.reg_param,
              implicitPrefs=settings.objective == "implicit", alpha=settings.alpha, seed=settings.seed,
              userCol=_USER, itemCol=_ITEM, ratingCol=_VALUE, checkpointInterval=settings.checkpoint_interval,
              coldStartStrategy="drop")
    return ALSFactors(model=als.fit(data), users=users, items=items, settings=settings)
