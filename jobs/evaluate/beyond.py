"""Beyond-accuracy metrics of a recommendation table: coverage, novelty, popularity bias, exposure, diversity.

With the recommendation lists cut at K (rank <= K), the catalogue C (M items;
recommended items outside it are added to it, so nothing is dropped),
n_i the training events of item i and N = sum_i n_i, c_i the number of
lists item i appears in:

* coverage = #{i in C : c_i > 0} / M: the share of the catalogue recommended to anyone.
* novelty = mean over recommended slots (u, i) of -log2(max(n_i, 1) / N): the self-information
  of the item's share of training events, in bits; an item without training events counts as one
  event (finite, the rarest an item can be).
* popularity_bias = mean over recommended slots of pct_i = #{j in C : n_j < n_i} / (M - 1): the
  popularity percentile of the item among the catalogue (0 the least, 1 the most popular; 0 when M = 1).
* exposure_gini = (2 sum_{r=1..M} r c_(r)) / (M sum_i c_i) - (M + 1) / M, with c_(1) <= ... <= c_(M)
  every item's count in ascending order (items never recommended included, with c = 0):
  0 when every item is recommended equally often, (M - 1) / M when one item takes every slot.
* genre_diversity (intra-list diversity) = mean over users of the mean over pairs {i, j} of their
  list of 1 - |G_i ∩ G_j| / |G_i ∪ G_j| (1 - Jaccard of the genre sets); only items with at least
  one genre count, and only users with two such items are averaged.

``users`` is the number of users with a list (for genre_diversity: with two
items that have genres). A metric that is undefined (no recommendations) has
no row.
"""

from __future__ import annotations

import re

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.evaluate.layout import ALL

BEYOND_METRICS = ("coverage", "novelty", "popularity_bias", "exposure_gini", "genre_diversity")


def item_genres(items: DataFrame, *, column: str = "genres", separator: str = "|") -> DataFrame:
    """The genre set of each item: DataFrame[item_id, genres: array<string>] (distinct, no empty strings).

    Args:
        items: DataFrame[item_id, column] with ``column`` an array<string> or a ``separator``-joined string.
    """
    if column not in items.columns:
        raise ValueError(f"items have no column {column!r} (columns: {items.columns}); name the genre column")
    values = F.col(column)
    if not isinstance(items.schema[column].dataType, T.ArrayType):
        values = F.split(F.coalesce(values.cast("string"), F.lit("")), re.escape(separator))
    genres = F.array_distinct(F.filter(F.transform(values, lambda g: F.trim(g)), lambda g: g != ""))
    return items.select("item_id", genres.alias("genres"))


def beyond_accuracy(recs: DataFrame, *, train: DataFrame, catalogue: DataFrame, k: int,
                    genres: DataFrame | None = None) -> DataFrame:
    """Coverage, novelty, popularity bias, exposure Gini and (with ``genres``) genre diversity of the top-k lists.

    Args:
        recs: DataFrame[user_id, rank, item_id, ...].
        train: the training window's events, DataFrame[item_id, ...] (the popularity counts).
        catalogue: DataFrame[item_id], one row per recommendable item.
        k: the lists are cut at rank <= k.
        genres: DataFrame[item_id, genres: array<string>] (``item_genres``); None: no diversity row.

    Returns:
        DataFrame[slice ("all"), metric, k: int, value: double, users: long] (formulas: module docstring).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top = recs.where(F.col("rank") <= k).select("user_id", "item_id")
    n_users = top.select("user_id").distinct().count()
    counts = train.groupBy("item_id").agg(F.count(F.lit(1)).alias("n"))
    population = (catalogue.select("item_id").unionByName(top.select("item_id")).distinct()
                  .join(counts, on="item_id", how="left").select("item_id", F.coalesce("n", F.lit(0)).alias("n")))
    total = population.agg(F.sum("n")).first()[0] or 0
    m = population.count()
    if m == 0:
        raise ValueError("beyond_accuracy: the catalogue is empty and nothing was recommended; pass the "
                         "recommendable items as catalogue (DataFrame[item_id])")
    by_popularity = Window.orderBy("n")
    # rank() - 1 is #{j : n_j < n_i}; rank ties take the lowest rank.
    items = population.withColumn("pct", (F.rank().over(by_popularity) - 1) / F.lit(max(m - 1, 1)))
    slots = top.join(items, on="item_id", how="left")
    exposure = items.join(top.groupBy("item_id").agg(F.count(F.lit(1)).alias("c")), on="item_id", how="left") \
        .select(F.coalesce("c", F.lit(0)).alias("c"))
    ordered = exposure.withColumn("r", F.row_number().over(Window.orderBy("c")))
    frames = [
        exposure.agg((F.sum((F.col("c") > 0).cast("long")) / F.lit(m)).alias("value"))
        .withColumn("metric", F.lit("coverage")),
        slots.agg(F.avg(-F.log2(F.greatest(F.col("n"), F.lit(1)) / F.lit(max(total, 1)))).alias("value"))
        .withColumn("metric", F.lit("novelty")),
        slots.agg(F.avg("pct").alias("value")).withColumn("metric", F.lit("popularity_bias")),
        ordered.agg((F.lit(2.0) * F.sum(F.col("r") * F.col("c")) / (F.lit(m) * F.sum("c"))
                     - F.lit((m + 1) / m)).alias("value")).withColumn("metric", F.lit("exposure_gini")),
    ]
    frames = [f.withColumn("users", F.lit(n_users)) for f in frames]
    if genres is not None:
        frames.append(_genre_diversity(recs.where(F.col("rank") <= k), genres))
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out.where(F.col("value").isNotNull() & (F.col("users") > 0)).select(
        F.lit(ALL).alias("slice"), "metric", F.lit(int(k)).alias("k"), F.col("value").cast("double").alias("value"),
        F.col("users").cast("long").alias("users"))


def _genre_diversity(top: DataFrame, genres: DataFrame) -> DataFrame:
    """DataFrame[value, metric, users] of the mean intra-list genre distance (module docstring)."""
    listed = top.select("user_id", "rank", "item_id").join(genres.where(F.size("genres") > 0), on="item_id")
    a, b = listed.alias("a"), listed.alias("b")
    pairs = a.join(b, (F.col("a.user_id") == F.col("b.user_id")) & (F.col("a.rank") < F.col("b.rank")))
    shared = F.size(F.array_intersect("a.genres", "b.genres"))
    union = F.size(F.array_union("a.genres", "b.genres"))
    per_user = pairs.groupBy(F.col("a.user_id").alias("user_id")).agg(
        F.avg(F.lit(1.0) - shared / union).alias("ild"))
    return per_user.agg(F.avg("ild").alias("value"), F.count(F.lit(1)).alias("users")).withColumn(
        "metric", F.lit("genre_diversity"))
