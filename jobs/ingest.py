"""Ingest: validate the canonical interactions, keep the run's window, quarantine bad rows.

Nothing is dropped silently: every row that is not kept for the run is either
outside the run's window (events after the end of ``ds``, which belong to
later runs) or written to the quarantine table with the raw row and a reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

QUARANTINE_COLUMNS = ("table", "reason", "raw")

REASON_NULL_ID = "null_or_empty_id"
REASON_RATING_RANGE = "rating_out_of_range"
REASON_BAD_TIMESTAMP = "bad_timestamp"
REASON_DUPLICATE = "duplicate_event"


class SchemaError(ValueError):
    """A table lacks a column or has one of the wrong type."""


@dataclasses.dataclass
class IngestResult:
    """Output of ``ingest_interactions``.

    Attributes:
        interactions: valid events up to the end of ds
            (user_id, item_id, rating: double, ts: timestamp).
        quarantine: DataFrame[table: string, reason: string, raw: string (JSON)].
    """

    interactions: DataFrame
    quarantine: DataFrame


def end_of_day(ds: dt.date) -> dt.datetime:
    """The first instant after ``ds`` (UTC): a run for ds sees events before it."""
    return dt.datetime.combine(ds + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)


def require_columns(df: DataFrame, table: str, expected: dict[str, tuple[type, ...]]) -> None:
    """Fail with one clear message when a column is missing or of the wrong type.

    Args:
        df: the table.
        table: its name (or file) for the message.
        expected: column name -> accepted Spark type classes.
    """
    fields = {f.name: f.dataType for f in df.schema.fields}
    for column, types in expected.items():
        if column not in fields:
            raise SchemaError(
                f"{table}: missing column '{column}'. Found columns: {', '.join(fields) or '(none)'}. "
                f"Map your column to '{column}' in the source config."
            )
        if not isinstance(fields[column], types):
            wanted = " or ".join(t.__name__.replace("Type", "").lower() for t in types)
            raise SchemaError(
                f"{table}: column '{column}' has type {fields[column].simpleString()}, expected {wanted}."
            )


_ID_TYPES = (T.IntegerType, T.LongType, T.StringType, T.ShortType)
_NUMERIC = (T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.ShortType, T.DecimalType)


def _id_invalid(col: Column, dtype: T.DataType) -> Column:
    if isinstance(dtype, T.StringType):
        return col.isNull() | (F.trim(col) == "")
    return col.isNull()


def ingest_interactions(
    interactions: DataFrame,
    ds: dt.date,
    *,
    rating_min: float = 1.0,
    rating_max: float = 5.0,
    table: str = "interactions",
) -> IngestResult:
    """Validate interactions and keep the events of the run for ``ds``.

    Args:
        interactions: DataFrame[user_id, item_id, rating (numeric, nullable), ts: timestamp].
        ds: the run date; events at or after the end of ds are outside the run.
        rating_min, rating_max: the declared rating range (inclusive).
        table: name used in messages and in the quarantine's ``table`` column.

    Returns:
        IngestResult with the valid in-window events (exact duplicates
        collapsed to one) and the quarantined rows with their reasons.
    """
    require_columns(
        interactions,
        table,
        {"user_id": _ID_TYPES, "item_id": _ID_TYPES, "rating": _NUMERIC, "ts": (T.TimestampType,)},
    )
    types = {f.name: f.dataType for f in interactions.schema.fields}
    cutoff = F.lit(end_of_day(ds))
    df = interactions.withColumn("rating", F.col("rating").cast("double"))
    reason = (
        F.when(_id_invalid(F.col("user_id"), types["user_id"]), F.lit(REASON_NULL_ID))
        .when(_id_invalid(F.col("item_id"), types["item_id"]), F.lit(REASON_NULL_ID))
        .when(F.col("ts").isNull(), F.lit(REASON_BAD_TIMESTAMP))
        .when(
            F.col("rating").isNotNull() & ((F.col("rating") < rating_min) | (F.col("rating") > rating_max)),
            F.lit(REASON_RATING_RANGE),
        )
    )
    df = df.withColumn("_reason", reason)
    # Events after the end of ds belong to later runs: not bad, just outside this one.
    df = df.filter(F.col("_reason").isNotNull() | (F.col("ts") < cutoff))
    bad = df.filter(F.col("_reason").isNotNull())
    good = df.filter(F.col("_reason").isNull()).drop("_reason")

    # Exact duplicates: keep one, quarantine the others.
    cols = ["user_id", "item_id", "rating", "ts"]
    copy_number = F.row_number().over(Window.partitionBy(*cols).orderBy(*cols))
    good = good.withColumn("_dup", copy_number)
    dupes = good.filter(F.col("_dup") > 1).drop("_dup").withColumn("_reason", F.lit(REASON_DUPLICATE))
    kept = good.filter(F.col("_dup") == 1).drop("_dup")

    quarantine = bad.unionByName(dupes).select(
        F.lit(table).alias("table"),
        F.col("_reason").alias("reason"),
        F.to_json(F.struct(*[F.col(c) for c in interactions.columns])).alias("raw"),
    )
    return IngestResult(interactions=kept.select(*cols), quarantine=quarantine)
