"""Ingest: validate the canonical tables, keep the run's window, quarantine bad rows.

Nothing is dropped silently: every row that is not kept for the run is either
outside the run's window (valid events after the end of ``ds``, which belong
to later runs) or written to the quarantine with the raw row and a reason:

=====================  ========================================================
reason                 the row
=====================  ========================================================
unparseable_line       does not split into the format's fields, or an id or
                       rating is not a number where the format needs one
null_or_empty_id       has a null or blank user or item id
rating_out_of_range    has a rating outside the declared range
bad_timestamp          has a missing timestamp or one that does not parse
future_timestamp       has a timestamp after the wall clock ``now``
duplicate_event        repeats an earlier row exactly (user, item, rating, ts)
unknown_user           names a user missing from the supplied users table
unknown_item           names an item missing from the supplied items table
duplicate_id           (users, items) repeats an id already in the table
empty_value            (tags) has an empty tag
=====================  ========================================================

The wall clock is an argument (``now``): jobs never read the clock, so a test
or a backfill decides what "the future" is.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.schema import (
    EVENT_COLUMNS,
    PROBLEM_COL,
    RAW_COL,
    REASON_BAD_TIMESTAMP,
    REASON_DUPLICATE,
    REASON_DUPLICATE_ID,
    REASON_EMPTY,
    REASON_FUTURE,
    REASON_NULL_ID,
    REASON_RATING_RANGE,
    REASON_UNKNOWN_ITEM,
    REASON_UNKNOWN_USER,
)

if TYPE_CHECKING:
    from jobs.sources import SourceTables


class SchemaError(ValueError):
    """A table lacks a column or has one of the wrong type."""


class QuarantineError(RuntimeError):
    """Too large a share of the interactions was quarantined: the source is probably broken."""


@dataclasses.dataclass
class IngestResult:
    """Output of ``ingest_interactions`` and ``ingest_source``.

    Attributes:
        interactions: valid events up to the end of ds
            (user_id, item_id, rating: double, ts: timestamp).
        quarantine: DataFrame[table: string, reason: string, raw: string].
        users, items: the valid side tables (one row per id), when supplied.
        tags: valid tags up to the end of ds (user_id, item_id, tag, ts), when supplied.
    """

    interactions: DataFrame
    quarantine: DataFrame
    users: DataFrame | None = None
    items: DataFrame | None = None
    tags: DataFrame | None = None


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
                f"Ingest reads the canonical tables a jobs.sources loader returns ({', '.join(expected)}); "
                f"pass the loader's table, or rename the column to '{column}' before ingest."
            )
        if not isinstance(fields[column], types):
            wanted = " or ".join(t.__name__.replace("Type", "").lower() for t in types)
            raise SchemaError(
                f"{table}: column '{column}' has type {fields[column].simpleString()}, expected {wanted}."
            )


_ID_TYPES = (T.IntegerType, T.LongType, T.StringType, T.ShortType)
_NUMERIC = (T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.ShortType, T.DecimalType, T.NullType)


def _id_invalid(col: Column, dtype: T.DataType) -> Column:
    if isinstance(dtype, T.StringType):
        return col.isNull() | (F.trim(col) == "")
    return col.isNull()


def _with_raw(df: DataFrame, columns: list[str]) -> DataFrame:
    """``columns`` plus ``_raw`` (the source's raw row, or the row as JSON) and ``_problem``."""
    source_cols = [c for c in df.columns if c not in (RAW_COL, PROBLEM_COL)]
    raw = F.col(RAW_COL) if RAW_COL in df.columns else F.to_json(F.struct(*[F.col(c) for c in source_cols]))
    problem = F.col(PROBLEM_COL) if PROBLEM_COL in df.columns else F.lit(None).cast("string")
    return df.select(*columns, raw.alias(RAW_COL), problem.alias(PROBLEM_COL))


def _first_reason(*cases: tuple[Column, str]) -> Column:
    """The reason of the first true condition (null when none is)."""
    reason = F.col(PROBLEM_COL)
    for condition, name in cases:
        reason = F.coalesce(reason, F.when(condition, F.lit(name)))
    return reason


def _quarantine(rows: DataFrame, table: str) -> DataFrame:
    return rows.select(F.lit(table).alias("table"), F.col("_reason").alias("reason"), F.col(RAW_COL).alias("raw"))


def _flag_unknown(df: DataFrame, ids: DataFrame | None, key: str, reason: str) -> DataFrame:
    """Set ``_reason`` to ``reason`` on rows whose ``key`` is not among ``ids``."""
    if ids is None:
        return df
    known = ids.select(key).distinct().withColumn("_known", F.lit(True))
    flagged = df.join(known, on=key, how="left")
    return flagged.withColumn(
        "_reason", F.coalesce(F.col("_reason"), F.when(F.col("_known").isNull(), F.lit(reason)))
    ).drop("_known")


def ingest_interactions(
    interactions: DataFrame,
    ds: dt.date,
    *,
    rating_min: float | None = 1.0,
    rating_max: float | None = 5.0,
    now: dt.datetime | None = None,
    users: DataFrame | None = None,
    items: DataFrame | None = None,
    table: str = "interactions",
) -> IngestResult:
    """Validate interactions and keep the events of the run for ``ds``.

    A row belongs to the run when its timestamp is before the end of ds, or
    is missing, or lies after ``now`` (those are bad rows in any run).
    Valid events after ds and not after ``now`` belong to later runs.

    Args:
        interactions: DataFrame[user_id, item_id, rating (numeric, nullable), ts: timestamp]
            (plus ``_raw``/``_problem`` from a file source).
        ds: the run date; events at or after the end of ds are outside the run.
        rating_min, rating_max: the declared rating range (inclusive); None: unchecked.
        now: the wall clock; timestamps after it are quarantined. None: unchecked.
        users, items: the valid side tables; events naming ids missing from
            them are quarantined (None: not checked).
        table: name used in messages and in the quarantine's ``table`` column.

    Returns:
        IngestResult with the valid in-run events (exact duplicates
        collapsed to one) and the quarantined rows with their reasons.
    """
    require_columns(
        interactions,
        table,
        {"user_id": _ID_TYPES, "item_id": _ID_TYPES, "rating": _NUMERIC, "ts": (T.TimestampType,)},
    )
    types = {f.name: f.dataType for f in interactions.schema.fields}
    df = _with_raw(
        interactions, ["user_id", "item_id", F.col("rating").cast("double").alias("rating"), "ts"]
    )
    ts, rating = F.col("ts"), F.col("rating")
    future = (ts > F.lit(now)) if now is not None else F.lit(False)
    out_of_range = F.lit(False)
    if rating_min is not None:
        out_of_range = out_of_range | (rating < F.lit(float(rating_min)))
    if rating_max is not None:
        out_of_range = out_of_range | (rating > F.lit(float(rating_max)))
    reason = _first_reason(
        (_id_invalid(F.col("user_id"), types["user_id"]), REASON_NULL_ID),
        (_id_invalid(F.col("item_id"), types["item_id"]), REASON_NULL_ID),
        (ts.isNull(), REASON_BAD_TIMESTAMP),
        (future, REASON_FUTURE),
        (F.coalesce(out_of_range, F.lit(False)), REASON_RATING_RANGE),
    )
    # Valid events after ds belong to later runs: not bad, just outside this one.
    df = df.withColumn("_reason", reason).filter(ts.isNull() | (ts < F.lit(end_of_day(ds))) | future)
    df = _flag_unknown(df, users, "user_id", REASON_UNKNOWN_USER)
    df = _flag_unknown(df, items, "item_id", REASON_UNKNOWN_ITEM)
    bad = df.filter(F.col("_reason").isNotNull())
    good = df.filter(F.col("_reason").isNull())

    # Exact duplicates: keep one, quarantine the others.
    cols = list(EVENT_COLUMNS)
    copy_number = F.row_number().over(Window.partitionBy(*cols).orderBy(RAW_COL))
    good = good.withColumn("_copy", copy_number)
    dupes = good.filter(F.col("_copy") > 1).withColumn("_reason", F.lit(REASON_DUPLICATE))
    kept = good.filter(F.col("_copy") == 1)
    quarantine = _quarantine(bad, table).unionByName(_quarantine(dupes, table))
    return IngestResult(interactions=kept.select(*cols), quarantine=quarantine)


def ingest_side_table(df: DataFrame, key: str, *, table: str) -> tuple[DataFrame, DataFrame]:
    """Validate a users or items table: one row per id.

    Returns:
        (valid rows without ``_raw``/``_problem``, quarantine rows).
        Of several rows with one id the row with the smallest raw text is kept.
    """
    columns = [c for c in df.columns if c not in (RAW_COL, PROBLEM_COL)]
    dtype = df.schema[key].dataType
    rows = _with_raw(df, columns).withColumn("_reason", _first_reason((_id_invalid(F.col(key), dtype), REASON_NULL_ID)))
    bad = rows.filter(F.col("_reason").isNotNull())
    good = rows.filter(F.col("_reason").isNull()).withColumn(
        "_copy", F.row_number().over(Window.partitionBy(key).orderBy(RAW_COL))
    )
    dupes = good.filter(F.col("_copy") > 1).withColumn("_reason", F.lit(REASON_DUPLICATE_ID))
    kept = good.filter(F.col("_copy") == 1).select(*columns)
    return kept, _quarantine(bad, table).unionByName(_quarantine(dupes, table))


def ingest_tags(
    tags: DataFrame,
    ds: dt.date,
    *,
    now: dt.datetime | None = None,
    users: DataFrame | None = None,
    items: DataFrame | None = None,
) -> tuple[DataFrame, DataFrame]:
    """Validate tags (user_id, item_id, tag, ts) and keep those of the run.

    Returns:
        (valid tags with ts before the end of ds, quarantine rows).
    """
    types = {f.name: f.dataType for f in tags.schema.fields}
    df = _with_raw(tags, ["user_id", "item_id", "tag", "ts"])
    ts = F.col("ts")
    future = (ts > F.lit(now)) if now is not None else F.lit(False)
    reason = _first_reason(
        (_id_invalid(F.col("user_id"), types["user_id"]), REASON_NULL_ID),
        (_id_invalid(F.col("item_id"), types["item_id"]), REASON_NULL_ID),
        (ts.isNull(), REASON_BAD_TIMESTAMP),
        (future, REASON_FUTURE),
        (F.col("tag").isNull() | (F.trim("tag") == ""), REASON_EMPTY),
    )
    df = df.withColumn("_reason", reason).filter(ts.isNull() | (ts < F.lit(end_of_day(ds))) | future)
    df = _flag_unknown(df, users, "user_id", REASON_UNKNOWN_USER)
    df = _flag_unknown(df, items, "item_id", REASON_UNKNOWN_ITEM)
    kept = df.filter(F.col("_reason").isNull()).select("user_id", "item_id", "tag", "ts")
    return kept, _quarantine(df.filter(F.col("_reason").isNotNull()), "tags")


def ingest_source(
    source: SourceTables,
    ds: dt.date,
    *,
    now: dt.datetime | None,
    rating_range: tuple[float | None, float | None] | None = None,
) -> IngestResult:
    """Validate every table of a ``jobs.sources.SourceTables`` for the run of ``ds``.

    Args:
        source: the source's canonical tables.
        ds: the run date.
        now: the wall clock (timestamps after it are quarantined).
        rating_range: (min, max) overriding the source's declared range;
            None keeps the source's (a None bound is unchecked).

    Returns:
        IngestResult with every valid table and one quarantine of all tables.
    """
    low, high = rating_range or source.rating_range or (None, None)
    quarantines = []
    users = items = None
    if source.users is not None:
        users, q = ingest_side_table(source.users, "user_id", table="users")
        quarantines.append(q)
    if source.items is not None:
        items, q = ingest_side_table(source.items, "item_id", table="items")
        quarantines.append(q)
    result = ingest_interactions(
        source.interactions, ds, rating_min=low, rating_max=high, now=now, users=users, items=items
    )
    quarantines.insert(0, result.quarantine)
    tags = None
    if source.tags is not None:
        tags, q = ingest_tags(source.tags, ds, now=now, users=users, items=items)
        quarantines.append(q)
    quarantine = quarantines[0]
    for q in quarantines[1:]:
        quarantine = quarantine.unionByName(q)
    return IngestResult(
        interactions=result.interactions, quarantine=quarantine, users=users, items=items, tags=tags
    )


def quarantine_counts(quarantine: DataFrame) -> dict[str, dict[str, int]]:
    """Quarantined rows per table and reason: {table: {reason: count}}."""
    counts: dict[str, dict[str, int]] = {}
    for row in quarantine.groupBy("table", "reason").count().collect():
        counts.setdefault(row["table"], {})[row["reason"]] = int(row["count"])
    return {table: dict(sorted(reasons.items())) for table, reasons in sorted(counts.items())}


def check_quarantine_share(
    counts: Mapping[str, Mapping[str, int]], kept_events: int, *, max_share: float, where: str = ""
) -> float:
    """The quarantined share of the run's interaction rows; raises when it exceeds ``max_share``.

    Args:
        counts: ``quarantine_counts`` output.
        kept_events: valid interactions kept for the run.
        max_share: the largest tolerated share in [0, 1].
        where: where the quarantined rows can be inspected (for the message).

    Returns:
        quarantined / (quarantined + kept) over the interactions table.
    """
    reasons = counts.get("interactions", {})
    bad = sum(reasons.values())
    total = bad + kept_events
    share = bad / total if total else 0.0
    if share > max_share:
        detail = ", ".join(f"{reason} {n:,}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        raise QuarantineError(
            f"ingest: {share:.1%} of the run's interaction rows were quarantined ({bad:,} of {total:,}: {detail}), "
            f"above ingest.max_quarantine_share = {max_share:.1%}. "
            + (f"The rows and their reasons are in {where}. " if where else "")
            + "Fix the source, or raise ingest.max_quarantine_share if this is expected."
        )
    return share
