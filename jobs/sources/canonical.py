"""The canonical tables every loader returns, and the readers and parsers that build them from files.

File readers keep the line or row as read in ``_raw`` and mark rows that
cannot be used in ``_problem`` (``jobs.schema``); ids, numbers and timestamps
are parsed with ``try_cast``-like rules, so one bad value never fails a job:
ingest sends its row to the quarantine.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from pyspark.sql import Column as SparkColumn
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.schema import PROBLEM_COL, RAW_COL, REASON_UNPARSEABLE, FeatureDecl
from jobs.storage import Location
from jobs.validate import CsvSample


@dataclasses.dataclass(frozen=True)
class SourceTables:
    """The canonical tables of one source (see ``jobs.sources``).

    Attributes:
        interactions: DataFrame[user_id, item_id, rating: double (null: implicit), ts: timestamp]
            (plus ``_raw``/``_problem`` when read from files).
        users, items: DataFrame[{side}_id, side columns] or None.
        tags: DataFrame[user_id, item_id, tag, ts] or None.
        name: the source kind, for messages.
        user_features, item_features: the side columns to use and how to encode them.
        rating_range: the ratings the source declares valid (inclusive), or None.
    """

    interactions: DataFrame
    users: DataFrame | None = None
    items: DataFrame | None = None
    tags: DataFrame | None = None
    name: str = "source"
    user_features: tuple[FeatureDecl, ...] = ()
    item_features: tuple[FeatureDecl, ...] = ()
    rating_range: tuple[float, float] | None = None


# -- reading --------------------------------------------------------------------------------
def read_text_lines(spark: SparkSession, file: Location, encoding: str) -> DataFrame:
    """Every non-empty line of a text file as ``_raw`` (decoded with ``encoding``; no quoting)."""
    return spark.read.csv(file.uri, schema=f"{RAW_COL} string", sep="\u0001", quote="", encoding=encoding,
                          header=False)


def split_fields(lines: DataFrame, sep: str, names: Sequence[str]) -> DataFrame:
    """Split ``_raw`` into string columns ``names``; a wrong field count sets ``_problem``."""
    parts = F.split(F.col(RAW_COL), re.escape(sep), -1)
    cols = [F.try_element_at(parts, F.lit(i + 1)).alias(n) for i, n in enumerate(names)]
    problem = F.when(F.size(parts) != len(names), F.lit(REASON_UNPARSEABLE))
    return lines.select(F.col(RAW_COL), problem.alias(PROBLEM_COL), *cols)


def read_csv_strings(spark: SparkSession, sample: CsvSample, sep: str, encoding: str) -> DataFrame:
    """The CSV file ``sample`` was taken from (it has a header), every column a string, plus ``_raw``, ``_problem``."""
    schema = ", ".join(f"`{h}` string" for h in sample.header) + ", _corrupt string"
    df = spark.read.csv(
        sample.file.uri, schema=schema, header=True, sep=sep, encoding=encoding, escape='"',
        mode="PERMISSIVE", columnNameOfCorruptRecord="_corrupt", enforceSchema=True,
    )
    raw = F.coalesce(F.col("_corrupt"), F.to_json(F.struct(*[F.col(f"`{h}`") for h in sample.header])))
    problem = F.when(F.col("_corrupt").isNotNull(), F.lit(REASON_UNPARSEABLE))
    return df.select(raw.alias(RAW_COL), problem.alias(PROBLEM_COL), *[F.col(f"`{h}`") for h in sample.header])


def read_parquet_rows(spark: SparkSession, location: Location) -> DataFrame:
    """A Parquet file or folder with its columns, plus ``_raw`` (the row as JSON) and a null ``_problem``."""
    df = spark.read.parquet(location.uri)
    raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns]))
    return df.select(raw.alias(RAW_COL), F.lit(None).cast("string").alias(PROBLEM_COL),
                     *[F.col(f"`{c}`") for c in df.columns])


# -- typed columns from strings ------------------------------------------------------------------
class Parsed:
    """Typed columns of a frame of strings; remembers which non-empty values did not parse."""

    def __init__(self) -> None:
        self.failures: list[SparkColumn] = []

    def _typed(self, text: SparkColumn, typed: SparkColumn) -> SparkColumn:
        self.failures.append(F.coalesce((F.trim(text) != "") & typed.isNull(), F.lit(False)))
        return typed

    def id(self, text: SparkColumn, spark_type: str) -> SparkColumn:
        """An id: the trimmed string, or a bigint when the source's ids are integers."""
        trimmed = F.trim(text)
        return trimmed if spark_type == "string" else self._typed(text, trimmed.try_cast("bigint"))

    def number(self, text: SparkColumn) -> SparkColumn:
        return self._typed(text, F.trim(text).try_cast("double"))

    def problem(self) -> SparkColumn:
        """``_problem``: the split problem, else unparseable when any typed value failed."""
        failed = F.lit(False)
        for failure in self.failures:
            failed = failed | failure
        return F.coalesce(F.col(PROBLEM_COL), F.when(failed, F.lit(REASON_UNPARSEABLE)))


def timestamp_column(col: SparkColumn, dtype: T.DataType | None, ts_format: str) -> SparkColumn:
    """A UTC timestamp from unix seconds/millis or ISO-8601 text; null when it does not parse."""
    if isinstance(dtype, T.TimestampType | T.TimestampNTZType | T.DateType):
        return col.cast("timestamp")
    if ts_format == "iso8601":
        return F.try_to_timestamp(F.trim(col.cast("string")))
    number = F.trim(col.cast("string")).try_cast("bigint") if not isinstance(dtype, T.IntegralType) else col.cast("bigint")
    # Beyond these the timestamp functions overflow (and throw under ANSI mode).
    if ts_format == "unix_millis":
        return F.when(F.abs(number) < F.lit(10**14), F.timestamp_millis(number))
    return F.when(F.abs(number) < F.lit(10**11), F.timestamp_seconds(number))


def null_if_empty(col: SparkColumn) -> SparkColumn:
    return F.when(F.trim(col) != "", col)
