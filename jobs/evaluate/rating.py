"""Rating metrics of predicted ratings against held-out ones, and the mean baselines, in Spark.

Over the n held-out rows (r_j the rating, p_j the prediction):

* RMSE = sqrt((1/n) sum_j (p_j - r_j)^2)
* MAE = (1/n) sum_j |p_j - r_j|

Baselines (``mean_baselines``), fitted on the training window's ratings:
``user_mean`` predicts the user's mean training rating, ``item_mean`` the
item's; a user (item) without training ratings gets the global mean.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.evaluate.layout import ALL, long_form

RATING_METRICS = ("rmse", "mae")


def rating_evaluation(rows: DataFrame) -> DataFrame:
    """RMSE and MAE per slice, in the layout of the metrics table.

    Args:
        rows: DataFrame[rating, prediction, slice (optional; ``jobs.evaluate.slices.slice_pairs``)]:
            one row per held-out rated event; rows with a null rating or prediction are refused.

    Returns:
        DataFrame[slice, metric ("rmse", "mae"), k: int (null), value: double, users: long (the rows
        the value is over)].
    """
    missing = {"rating", "prediction"} - set(rows.columns)
    if missing:
        raise ValueError(f"rating metrics need columns rating and prediction, got {rows.columns}")
    nulls = rows.where(F.col("rating").isNull() | F.col("prediction").isNull()).limit(1).count()
    if nulls:
        raise ValueError("rating metrics: some rows have a null rating or prediction; rating metrics are for "
                         "rated events (drop implicit rows first) and every row needs a prediction")
    if "slice" not in rows.columns:
        rows = rows.withColumn("slice", F.lit(ALL))
    err = F.col("prediction").cast("double") - F.col("rating").cast("double")
    wide = rows.groupBy("slice").agg(
        F.count(F.lit(1)).alias("users"),
        F.sqrt(F.avg(err * err)).alias("rmse"),
        F.avg(F.abs(err)).alias("mae"),
    ).withColumn("k", F.lit(None).cast("int"))
    return long_form(wide, RATING_METRICS)


def mean_baselines(train: DataFrame, rows: DataFrame) -> dict[str, DataFrame]:
    """The user-mean and item-mean predictions of held-out rows.

    Args:
        train: the training window's events, DataFrame[user_id, item_id, rating, ...] (null ratings ignored).
        rows: held-out rows, DataFrame[user_id, item_id, rating, ...].

    Returns:
        {"user_mean": rows + prediction, "item_mean": rows + prediction} (prediction: double).
    """
    rated = train.where(F.col("rating").isNotNull())
    mean = rated.agg(F.avg(F.col("rating").cast("double"))).first()[0]
    if mean is None:
        raise ValueError("mean baselines need rated training events; the training window has no ratings "
                         "(implicit feedback has no rating metrics)")
    out = {}
    for name, key in (("user_mean", "user_id"), ("item_mean", "item_id")):
        means = rated.groupBy(key).agg(F.avg(F.col("rating").cast("double")).alias("_mean"))
        out[name] = rows.join(means, on=key, how="left").withColumn(
            "prediction", F.coalesce("_mean", F.lit(float(mean)))).drop("_mean")
    return out
