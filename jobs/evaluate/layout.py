"""The layout every evaluation returns: DataFrame[slice, metric, k, value, users] (no nightrec imports).

``users`` is the count the value is over (users for ranking and
beyond-accuracy metrics, held-out rows for rating metrics); ``k`` is null
where no cut-off applies.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

#: The slice of every evaluated user and item.
ALL = "all"
#: The columns of an evaluation frame, in order.
EVALUATION_COLUMNS = ("slice", "metric", "k", "value", "users")


def long_form(wide: DataFrame, metrics: Sequence[str]) -> DataFrame:
    """DataFrame[slice, k, users, one column per metric] -> DataFrame[slice, metric, k: int, value: double,
    users: long]."""
    row = F.explode(F.array(*[F.struct(F.lit(m).alias("metric"), F.col(m).cast("double").alias("value"))
                              for m in metrics])).alias("_r")
    return wide.select("slice", "k", "users", row).select(
        "slice", F.col("_r.metric").alias("metric"), F.col("k").cast("int").alias("k"),
        F.col("_r.value").alias("value"), F.col("users").cast("long").alias("users"))
