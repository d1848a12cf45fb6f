"""Offline ranking metrics of top-K recommendations against held-out events.

For each evaluated user u with relevant set R_u (held-out items not already
seen in training) and recommendations r_1..r_K:

* Precision@K = hits / K
* Recall@K = hits / |R_u|
* nDCG@K = sum_{k: r_k in R_u} 1/log2(k+1)  /  sum_{k=1}^{min(K,|R_u|)} 1/log2(k+1)
* AP@K = (1 / min(K, |R_u|)) * sum_{k: r_k in R_u} Precision@k
  (MAP@K is its mean over users; the seeds' worked examples use the same
  cumulative precision at each hit)

Users with held-out items but no recommendations count as all-miss.
"""

from __future__ import annotations

import math

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

METRICS = ("precision", "recall", "ndcg", "map")


def relevant_items(holdout: DataFrame, train: DataFrame | None = None, *, min_rating: float | None = None) -> DataFrame:
    """Held-out (user_id, item_id) pairs that count as relevant.

    Items the user already has in ``train`` are removed (they are excluded
    from recommendations). With ``min_rating`` only ratings >= it count.
    """
    truth = holdout
    if min_rating is not None:
        truth = truth.filter(F.col("rating") >= min_rating)
    truth = truth.select("user_id", "item_id").distinct()
    if train is not None:
        truth = truth.join(train.select("user_id", "item_id").distinct(), on=["user_id", "item_id"], how="left_anti")
    return truth


def per_user_metrics(recs: DataFrame, truth: DataFrame, k: int) -> DataFrame:
    """Metrics of every user in ``truth``.

    Args:
        recs: DataFrame[user_id, rank, item_id] (rank 1..).
        truth: DataFrame[user_id, item_id] relevant pairs.
        k: cut-off.

    Returns:
        DataFrame[user_id, n_relevant, hits, precision, recall, ndcg, map].
    """
    ideal = [0.0]
    for r in range(1, k + 1):
        ideal.append(ideal[-1] + 1.0 / math.log2(r + 1))
    ideal_col = F.array(*[F.lit(v) for v in ideal])
    n_rel = truth.groupBy("user_id").agg(F.count(F.lit(1)).alias("n_relevant"))
    hits = recs.filter(F.col("rank") <= k).select("user_id", "item_id", "rank").join(
        truth, on=["user_id", "item_id"], how="inner"
    )
    hits = hits.withColumn("hit_no", F.row_number().over(Window.partitionBy("user_id").orderBy("rank")))
    per_hit = hits.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("hits"),
        F.sum(1.0 / F.log2(F.col("rank") + 1)).alias("dcg"),
        F.sum(F.col("hit_no") / F.col("rank")).alias("sum_prec"),
    )
    out = n_rel.join(per_hit, on="user_id", how="left").fillna(0, subset=["hits", "dcg", "sum_prec"])
    cut = F.least(F.col("n_relevant"), F.lit(k))
    return out.select(
        "user_id",
        "n_relevant",
        F.col("hits").cast("int").alias("hits"),
        (F.col("hits") / F.lit(k)).alias("precision"),
        (F.col("hits") / F.col("n_relevant")).alias("recall"),
        (F.col("dcg") / F.element_at(ideal_col, (cut + 1).cast("int"))).alias("ndcg"),
        (F.col("sum_prec") / cut).alias("map"),
    )


def ranking_metrics(recs: DataFrame, truth: DataFrame, k: int) -> dict[str, float]:
    """Mean Precision@k, Recall@k, nDCG@k and MAP@k over users in ``truth``.

    Returns:
        {"precision": …, "recall": …, "ndcg": …, "map": …, "users": n}.
    """
    row = per_user_metrics(recs, truth, k).agg(
        *[F.avg(m).alias(m) for m in METRICS], F.count(F.lit(1)).alias("users")
    ).first()
    result = {m: float(row[m]) if row[m] is not None else 0.0 for m in METRICS}
    result["users"] = int(row["users"])
    return result


METRICS_SCHEMA = "model string, scorer string, metric string, k int, value double, users int"


def metrics_frame(spark, results: dict[str, dict]) -> DataFrame:
    """The ``metrics`` table of a night from each model's holdout results.

    Args:
        results: {model name: {"k", "model": ranking_metrics, "popularity": ranking_metrics,
            "rating": {"rmse", "mae", "rows"} (rating models only)}}.

    Returns:
        DataFrame[model, scorer ("model" or "popularity"), metric, k, value, users]: one row per model x
        scorer x metric; a rating model's RMSE and MAE have k null and count holdout rows in ``users``.
    """
    rows = []
    for name, result in results.items():
        for scorer in ("model", "popularity"):
            for metric in METRICS:
                rows.append((name, scorer, metric, int(result["k"]), float(result[scorer][metric]),
                             int(result[scorer]["users"])))
        if "rating" in result:
            for metric in ("rmse", "mae"):
                rows.append((name, "model", metric, None, float(result["rating"][metric]),
                             int(result["rating"]["rows"])))
    return spark.createDataFrame(rows, METRICS_SCHEMA)
