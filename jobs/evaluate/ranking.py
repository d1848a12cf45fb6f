"""Ranking metrics of top-K recommendations against held-out events, in Spark.

For each evaluated user u with relevant set R_u (``relevant_items``: held-out
items the user did not already have in training) and recommendations
r_1, r_2, ... (rank 1 best), with rel(i) = 1 when i is in R_u and hits@K =
#{k <= K : r_k in R_u}:

* Precision@K = hits@K / K (K even when fewer than K items were recommended).
* Recall@K = hits@K / |R_u|.
* nDCG@K = DCG@K / IDCG@K, DCG@K = sum_{k <= K, r_k in R_u} g(r_k) / log2(k + 1),
  IDCG@K = the same sum over the min(K, |R_u|) largest gains of R_u placed at
  ranks 1, 2, ...; binary gains g = 1, or graded (``graded=True``) g(i) = 2^rating(i) - 1
  with rating(i) the held-out rating of the pair (the largest, if rated twice).
  A user whose gains are all 0 (graded, every rating 0) has nDCG 0.
* AP@K = (1 / min(|R_u|, K)) * sum_{k <= K, r_k in R_u} Precision@k; MAP@K is its mean.
* MRR@K = 1 / (rank of the first hit) when it is <= K, else 0.
* HitRate@K = 1 when hits@K >= 1, else 0.

Every figure is the mean over the users with at least one relevant item;
such a user without recommendations counts as zero in every metric (never
dropped); users without relevant items are not evaluated.

Agreement with ``pyspark.ml.evaluation.RankingEvaluator`` (Spark's
``mllib.evaluation.RankingMetrics``, 4.x): precisionAtK, recallAtK,
meanAveragePrecisionAtK and ndcgAtK use the same formulas and denominators
for binary gains (Spark's MAP@K also divides by min(|R_u|, K); its
natural-log discount cancels in the ratio). Where they differ: Spark
averages over every row it is given, a row with an empty ground truth
counting 0, where users without relevant items are not evaluated here; and
graded gains have no Spark counterpart to check against: RankingEvaluator
takes no relevance column, Scala's RankingMetrics takes relevance triplets
but its ideal DCG follows the labels' given order (the true ideal only when
they come sorted by relevance), and PySpark 4.3's Python ``RankingMetrics``
drops the relevance values of triplets and returns the binary nDCG (the last
pinned by a test). MRR and HitRate have no Spark counterpart either.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.evaluate.layout import ALL, long_form

#: The ranking metrics, as named in the ``metric`` column of the metrics table.
RANKING_METRICS = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")
#: The metrics of ``ranking_metrics``.
METRICS = ("precision", "recall", "ndcg", "map")


def relevant_items(holdout: DataFrame, train: DataFrame | None = None, *, min_rating: float | None = None) -> DataFrame:
    """Held-out (user_id, item_id) pairs that count as relevant, with the pair's held-out rating.

    Items the user already has in ``train`` are removed (they are excluded
    from recommendations). With ``min_rating`` only ratings >= it count.
    Items outside the scored catalogue stay relevant: they count in |R_u|
    and can never be hit.

    Args:
        holdout: DataFrame[user_id, item_id, rating, ...].
        train: DataFrame[user_id, item_id, ...] (None: nothing is removed).

    Returns:
        DataFrame[user_id, item_id, rating: double (the pair's largest held-out rating; null for
        implicit feedback)], one row per pair.
    """
    truth = holdout
    if min_rating is not None:
        truth = truth.filter(F.col("rating") >= min_rating)
    truth = truth.groupBy("user_id", "item_id").agg(F.max(F.col("rating").cast("double")).alias("rating"))
    if train is not None:
        truth = truth.join(train.select("user_id", "item_id").distinct(), on=["user_id", "item_id"], how="left_anti")
    return truth


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"cut-offs k must be >= 1 (at least one), got {list(ks)}")
    return ks


def _gain(truth: DataFrame, graded: bool) -> Column:
    if not graded:
        return F.lit(1.0)
    if "rating" not in truth.columns:
        raise ValueError(f"graded nDCG needs a rating column in the relevant pairs, got columns {truth.columns}; "
                         "build them with relevant_items(holdout, train) or pass graded=False")
    return F.pow(F.lit(2.0), F.col("rating")) - F.lit(1.0)


def per_user_ranking(recs: DataFrame, truth: DataFrame, ks: Sequence[int], *, graded: bool = False,
                     by: Sequence[str] = ()) -> DataFrame:
    """Every ranking metric of every evaluated user at each cut-off (formulas: module docstring).

    Args:
        recs: DataFrame[user_id, rank (1 = best), item_id, ...].
        truth: DataFrame[user_id, item_id, rating (graded only), *by]: the relevant pairs of each
            group; a user is evaluated once per group it has pairs in.
        ks: the cut-offs K.
        graded: nDCG gains 2^rating - 1 instead of 1 (a null rating is refused).
        by: grouping columns of ``truth`` (e.g. ``slice``).

    Returns:
        DataFrame[*by, user_id, k: int, n_relevant: long, hits: long, precision, recall, ndcg, map, mrr,
        hit_rate: double], one row per group, user with relevant items and k.
    """
    ks = _check_ks(ks)
    keys = [*by, "user_id"]
    pairs = truth.select(*keys, "item_id", _gain(truth, graded).alias("_gain"))
    if graded:
        nulls = pairs.where(F.col("_gain").isNull()).limit(1).count()
        if nulls:
            raise ValueError("graded nDCG: some relevant pairs have no held-out rating (implicit feedback); "
                             "use graded=False")
    pairs = pairs.groupBy(*keys, "item_id").agg(F.max("_gain").alias("_gain"))
    ideal_order = Window.partitionBy(*keys).orderBy(F.col("_gain").desc(), F.col("item_id"))
    ideal = pairs.withColumn("_pos", F.row_number().over(ideal_order)).groupBy(*keys).agg(
        F.count(F.lit(1)).alias("n_relevant"),
        *[F.sum(F.when(F.col("_pos") <= k, F.col("_gain") / F.log2(F.col("_pos") + 1))).alias(f"_idcg{k}")
          for k in ks],
    )
    hits = recs.where(F.col("rank") <= ks[-1]).select("user_id", "item_id", "rank").join(
        pairs, on=["user_id", "item_id"], how="inner")
    hits = hits.withColumn("_hit_no", F.row_number().over(Window.partitionBy(*keys).orderBy("rank")))
    within = {k: F.col("rank") <= k for k in ks}
    per_hit = hits.groupBy(*keys).agg(*[
        agg.alias(f"{name}{k}") for k in ks for name, agg in (
            ("_hits", F.sum(F.when(within[k], 1).otherwise(0))),
            ("_dcg", F.sum(F.when(within[k], F.col("_gain") / F.log2(F.col("rank") + 1)))),
            ("_ap", F.sum(F.when(within[k], F.col("_hit_no") / F.col("rank")))),
            ("_rr", F.max(F.when(within[k], 1.0 / F.col("rank")))),
        )
    ])
    joined = ideal.join(per_hit, on=keys, how="left")
    per_k = F.explode(F.array(*[
        F.struct(
            F.lit(k).alias("k"),
            F.coalesce(F.col(f"_hits{k}"), F.lit(0)).cast("long").alias("hits"),
            F.coalesce(F.col(f"_dcg{k}"), F.lit(0.0)).alias("dcg"),
            F.coalesce(F.col(f"_idcg{k}"), F.lit(0.0)).alias("idcg"),
            F.coalesce(F.col(f"_ap{k}"), F.lit(0.0)).alias("ap"),
            F.coalesce(F.col(f"_rr{k}"), F.lit(0.0)).alias("rr"),
        ) for k in ks
    ])).alias("_m")
    m = joined.select(*keys, "n_relevant", per_k)
    k, n_rel, hit_count = F.col("_m.k"), F.col("n_relevant"), F.col("_m.hits")
    return m.select(
        *keys, k.alias("k"), n_rel.alias("n_relevant"), hit_count.alias("hits"),
        (hit_count / k).alias("precision"),
        (hit_count / n_rel).alias("recall"),
        F.when(F.col("_m.idcg") > 0, F.col("_m.dcg") / F.col("_m.idcg")).otherwise(F.lit(0.0)).alias("ndcg"),
        (F.col("_m.ap") / F.least(n_rel, k)).alias("map"),
        F.col("_m.rr").alias("mrr"),
        (hit_count > 0).cast("double").alias("hit_rate"),
    )


def ranking_evaluation(recs: DataFrame, truth: DataFrame, ks: Sequence[int], *, graded: bool = False) -> DataFrame:
    """Mean ranking metrics per slice and cut-off, in the layout of the metrics table.

    Args:
        recs: DataFrame[user_id, rank, item_id, ...].
        truth: DataFrame[user_id, item_id, rating (graded only), slice (optional)]: the relevant pairs,
            with ``slice`` as ``jobs.evaluate.slices.slice_pairs`` adds it (every pair in ``"all"``
            when the column is absent).
        ks: the cut-offs K.
        graded: graded nDCG gains (see ``per_user_ranking``).

    Returns:
        DataFrame[slice, metric (``RANKING_METRICS``), k: int, value: double, users: long (the
        slice's users with relevant items)], one row per slice x metric x k.
    """
    if "slice" not in truth.columns:
        truth = truth.withColumn("slice", F.lit(ALL))
    per_user = per_user_ranking(recs, truth, ks, graded=graded, by=("slice",))
    means = per_user.groupBy("slice", "k").agg(
        F.count(F.lit(1)).alias("users"), *[F.avg(m).alias(m) for m in RANKING_METRICS])
    return long_form(means, RANKING_METRICS)


def per_user_metrics(recs: DataFrame, truth: DataFrame, k: int) -> DataFrame:
    """Binary-gain metrics of every user in ``truth`` at one cut-off.

    Args:
        recs: DataFrame[user_id, rank, item_id] (rank 1..).
        truth: DataFrame[user_id, item_id] relevant pairs.
        k: cut-off.

    Returns:
        DataFrame[user_id, n_relevant, hits, precision, recall, ndcg, map, mrr, hit_rate].
    """
    return per_user_ranking(recs, truth, [k]).drop("k")


def ranking_metrics(recs: DataFrame, truth: DataFrame, k: int) -> dict[str, float]:
    """Mean Precision@k, Recall@k, nDCG@k and MAP@k over users in ``truth`` (binary gains).

    Returns:
        {"precision": …, "recall": …, "ndcg": …, "map": …, "users": n}; 0.0 for every metric when no
        user has relevant items.
    """
    row = per_user_metrics(recs, truth, k).agg(
        *[F.avg(m).alias(m) for m in METRICS], F.count(F.lit(1)).alias("users")
    ).first()
    result = {m: float(row[m]) if row[m] is not None else 0.0 for m in METRICS}
    result["users"] = int(row["users"])
    return result
