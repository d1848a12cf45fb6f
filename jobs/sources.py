"""Sources: where the events, users and items come from.

Every source returns the same canonical ``SourceTables``:

* interactions: ``user_id``, ``item_id`` (the source's own values and types),
  ``rating`` (double, may be null for implicit feedback), ``ts`` (timestamp, UTC);
* users (optional): ``user_id`` plus side-information columns;
* items (optional): ``item_id`` plus side-information columns; ``genres`` is a
  ``|``-separated string where the source has genres.
"""

from __future__ import annotations

import dataclasses

from pyspark.sql import DataFrame, SparkSession

from jobs import synthetic


@dataclasses.dataclass
class SourceTables:
    """The canonical tables of one source (see the module docstring)."""

    interactions: DataFrame
    users: DataFrame | None = None
    items: DataFrame | None = None
    name: str = "source"


def load_synthetic(spark: SparkSession, spec: synthetic.SyntheticSpec, *, in_spark: bool = False) -> SourceTables:
    """The built-in synthetic dataset.

    Args:
        spark: the SparkSession.
        spec: size and seed of the dataset.
        in_spark: generate the ratings inside Spark tasks (for millions of
            ratings) instead of in this process.
    """
    world = synthetic.make_world(spec)
    if in_spark:
        ratings = synthetic.synthetic_ratings_spark(spark, world)
    else:
        ratings = spark.createDataFrame(synthetic.synthetic_ratings(world))
    return SourceTables(
        interactions=ratings,
        users=spark.createDataFrame(world.users),
        items=spark.createDataFrame(world.items),
        name="synthetic",
    )
