"""Offline evaluation of a night's models on the holdout, in Spark.

Every evaluation returns the same small layout, DataFrame[slice, metric, k,
value, users] (``layout``), which ``metric_rows`` collects and
``metrics_table`` turns into the published ``metrics`` table (one row per
model x scorer x slice x metric x k).

Modules, one responsibility each:

* ``ranking``: the relevant pairs; Precision, Recall, nDCG (binary or graded), MAP, MRR and HitRate at K;
* ``beyond``: coverage, novelty, popularity bias, exposure Gini, genre diversity;
* ``rating``: RMSE and MAE, and the user-mean / item-mean baselines;
* ``slices``: warm and cold users and items, users by training activity;
* ``holdout``: the one definition of the ranking holdout, handed to training for early stopping;
* ``table``: the metrics table;
* ``layout``: the evaluation frames' columns.
"""

from jobs.evaluate.beyond import BEYOND_METRICS, beyond_accuracy, item_genres
from jobs.evaluate.holdout import HOLDOUT_COLUMNS, ranking_holdout, sample_users
from jobs.evaluate.layout import ALL, EVALUATION_COLUMNS
from jobs.evaluate.ranking import (
    METRICS,
    RANKING_METRICS,
    per_user_metrics,
    per_user_ranking,
    ranking_evaluation,
    ranking_metrics,
    relevant_items,
)
from jobs.evaluate.rating import RATING_METRICS, mean_baselines, rating_evaluation
from jobs.evaluate.slices import (
    COLD_ITEMS,
    COLD_USERS,
    DEFAULT_ACTIVITY_EDGES,
    WARM_ITEMS,
    WARM_USERS,
    activity_buckets,
    item_slices,
    slice_pairs,
    user_slices,
)
from jobs.evaluate.table import (
    METRICS_TABLE_KEY,
    METRICS_TABLE_SCHEMA,
    MetricRow,
    metric_rows,
    metrics_table,
)

__all__ = [
    "ALL",
    "BEYOND_METRICS",
    "COLD_ITEMS",
    "COLD_USERS",
    "DEFAULT_ACTIVITY_EDGES",
    "EVALUATION_COLUMNS",
    "HOLDOUT_COLUMNS",
    "METRICS",
    "METRICS_TABLE_KEY",
    "METRICS_TABLE_SCHEMA",
    "RANKING_METRICS",
    "RATING_METRICS",
    "WARM_ITEMS",
    "WARM_USERS",
    "MetricRow",
    "activity_buckets",
    "beyond_accuracy",
    "item_genres",
    "item_slices",
    "mean_baselines",
    "metric_rows",
    "metrics_table",
    "per_user_metrics",
    "per_user_ranking",
    "ranking_evaluation",
    "ranking_holdout",
    "ranking_metrics",
    "rating_evaluation",
    "relevant_items",
    "sample_users",
    "slice_pairs",
    "user_slices",
]
