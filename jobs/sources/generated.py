"""The built-in synthetic source (``jobs.synthetic``) as canonical tables."""

from __future__ import annotations

from pyspark.sql import SparkSession

from jobs import synthetic
from jobs.schema import MOVIELENS_ITEM_FEATURES, MOVIELENS_USER_FEATURES
from jobs.sources.canonical import SourceTables


def load_synthetic(spark: SparkSession, spec: synthetic.SyntheticSpec, *, in_spark: bool = False) -> SourceTables:
    """The built-in synthetic dataset.

    Args:
        spark: the SparkSession.
        spec: size and seed of the dataset.
        in_spark: generate the ratings inside Spark tasks (for millions of
            ratings) instead of in this process.

    Returns:
        SourceTables with interactions, users (user_id, age, gender,
        occupation, zip) and items (item_id, title, year, genres), ratings 1-5.
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
        user_features=MOVIELENS_USER_FEATURES,
        item_features=MOVIELENS_ITEM_FEATURES,
        rating_range=(1.0, 5.0),
    )
