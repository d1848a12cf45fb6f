"""The ``metrics`` table of a night: one row per model x scorer x slice x metric x k.

Columns (``METRICS_TABLE_SCHEMA``):

* ``model``: the configured model name the figures belong to;
* ``scorer``: what produced the recommendations or predictions: ``"model"`` (the model itself),
  or a baseline evaluated on the same holdout beside it (``"popularity"``, ``"als"``,
  ``"user_mean"``, ``"item_mean"``, ...);
* ``slice``: ``"all"``, ``"users:warm"``, ``"users:cold"``, ``"items:warm"``, ``"items:cold"``,
  ``"activity:1-5"``, ... (``jobs.evaluate.slices``);
* ``metric``: ``precision``, ``recall``, ``ndcg``, ``map``, ``mrr``, ``hit_rate``, ``coverage``,
  ``novelty``, ``popularity_bias``, ``exposure_gini``, ``genre_diversity``, ``rmse``, ``mae``,
  ``auc``, ``log_loss``;
* ``k``: the cut-off (null where none applies: rating and click metrics);
* ``value``: the figure;
* ``users``: the count it is over (users; held-out rows for rating metrics; held-out positives
  for click metrics).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from pyspark.sql import DataFrame, SparkSession

from jobs.evaluate.layout import EVALUATION_COLUMNS

METRICS_TABLE_SCHEMA = ("model string, scorer string, slice string, metric string, k int, value double, "
                        "users long")
#: The table's sort order (and the key of one row).
METRICS_TABLE_KEY = ("model", "scorer", "slice", "metric", "k")


@dataclasses.dataclass(frozen=True)
class MetricRow:
    """One row of the metrics table (the columns: module docstring)."""

    model: str
    scorer: str
    slice: str
    metric: str
    k: int | None
    value: float
    users: int

    def key(self) -> tuple:
        """The row's ``METRICS_TABLE_KEY`` values, sortable (a null k first)."""
        return self.model, self.scorer, self.slice, self.metric, -1 if self.k is None else self.k


def metric_rows(frame: DataFrame, *, model: str, scorer: str) -> list[MetricRow]:
    """Collect an evaluation frame DataFrame[slice, metric, k, value, users] as rows of one model and scorer.

    The frames of ``ranking_evaluation``, ``beyond_accuracy`` and
    ``rating_evaluation`` have this layout; a small frame (one row per slice x
    metric x k) is collected on the driver.
    """
    missing = [c for c in EVALUATION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"an evaluation frame needs columns {list(EVALUATION_COLUMNS)}, got {frame.columns} "
                         f"(missing {missing})")
    return sorted((MetricRow(model, scorer, r["slice"], r["metric"], None if r["k"] is None else int(r["k"]),
                             float(r["value"]), int(r["users"]))
                   for r in frame.select(*EVALUATION_COLUMNS).collect()), key=MetricRow.key)


def metrics_table(spark: SparkSession, rows: Iterable[MetricRow]) -> DataFrame:
    """The metrics table of ``rows``: DataFrame[``METRICS_TABLE_SCHEMA``], sorted by ``METRICS_TABLE_KEY``.

    A pure function of ``rows``; two rows with the same key are refused (one
    figure per model x scorer x slice x metric x k), and so is a value that is
    not finite.
    """
    rows = sorted(rows, key=MetricRow.key)
    keys = [r.key() for r in rows]
    for before, after in zip(keys, keys[1:]):
        if before == after:
            raise ValueError(f"metrics table: two values for model, scorer, slice, metric, k = {after}; "
                             "evaluate each model and scorer once")
    for r in rows:
        if not math.isfinite(r.value):
            raise ValueError(f"metrics table: {r.metric} of {r.model}/{r.scorer} ({r.slice}) is {r.value}, "
                             "expected a finite value")
    return spark.createDataFrame([dataclasses.astuple(r) for r in rows], METRICS_TABLE_SCHEMA)
