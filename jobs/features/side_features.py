"""The scoring-time feature tables: a fitted state applied to every user or item, and how they are written."""

from __future__ import annotations

from typing import Literal

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from jobs.features.encoding import side_static
from jobs.features.passes import entity_totals, finalize_entities, n_partitions, side_passes, static_arrow, with_totals
from jobs.features.state import ROWS_PER_PARTITION, FeatureState
from jobs.storage import Location


def build_side_features(
    events: DataFrame,
    table: DataFrame | None,
    state: FeatureState,
    side: Literal["user", "item"],
    *,
    items: DataFrame | None = None,
    rows_per_partition: int = ROWS_PER_PARTITION,
) -> DataFrame:
    """Encoded, imputed and scaled features of every user (or item) in ``table`` or ``events``.

    Statistics come from all of ``events`` (the training window at scoring
    time), counted to ``state.as_of``; entities without events get imputed
    values. Categories unseen in training map to index 1, nulls to 0.

    Args:
        events: DataFrame[user_id, item_id, rating, ts].
        table: the side's table (users or items), or None.
        state: the fitted state.
        side: "user" or "item".
        items: the items table, needed for the user genre affinity.

    Returns:
        DataFrame[{side}_id (source type), {side}_idx: int, categoricals int,
        multi-valued array<int>, every continuous column of the side's spec: float].
    """
    spark = events.sparkSession
    if side == "user" and state.affinity and items is None:
        raise ValueError("build_side_features(side='user'): the user genre affinity needs the items table (items=...)")
    ids = {s: events.select(f"{s}_id").distinct() for s in ("user", "item")}
    item_static = side_static(ids["item"], items if side == "user" else table, state, "item")
    static = item_static if side == "item" else side_static(ids["user"], table, state, "user")
    statics = static_arrow(static if side == "user" else None, item_static)
    bc, side_pass = side_passes(spark, state, statics, fitted=True)[side]
    n_events = events.count()
    totals = entity_totals(events, bc, side_pass, static, n_partitions(spark, n_events, rows_per_partition), n_events)
    return finalize_entities(with_totals(static, totals, side), state, side, static)


def write_feature_table(frame: DataFrame, path: str | Location) -> None:
    """Write a feature table (``user_features``/``item_features``) as Parquet at ``path``, replacing it.

    Float columns are written without dictionary encoding: statistics are
    nearly all distinct, so the dictionary is built, hashed and dropped again
    (a fallback) for nothing; ids and categoricals keep it.
    """
    writer = frame.write.mode("overwrite")
    for field in frame.schema.fields:
        if isinstance(field.dataType, (T.FloatType, T.DoubleType)):
            writer = writer.option(f"parquet.enable.dictionary#{field.name}", "false")
    writer.parquet(Location(path).uri)
