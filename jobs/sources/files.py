"""The ``files`` source: any interactions table plus optional users and items tables, Parquet or CSV.

The dataclasses mirror the config's ``source.files`` section key for key
(``flows.config`` takes its defaults from them), so the config builds them
from its own dump: ``FilesSource(**cfg.source.files.model_dump())`` (nested
mappings become the nested dataclasses) or pydantic's
``TypeAdapter(FilesSource).validate_python(dump)``. Paths stay as given (plain
strings, like the config's) and become a ``Location`` where the files are read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

from pyspark.sql import Column as SparkColumn
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.schema import PROBLEM_COL, RAW_COL, FeatureDecl
from jobs.sources.canonical import (
    Parsed,
    SourceTables,
    null_if_empty,
    read_csv_strings,
    read_parquet_rows,
    timestamp_column,
)
from jobs.storage import Location
from jobs.validate import Column, CsvSample, ParquetSample, Problems, check_csv, check_parquet

FORMATS = ("parquet", "csv")
TS_FORMATS = ("unix_seconds", "unix_millis", "iso8601")


def _one_of(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: got {value!r}, expected one of {', '.join(allowed)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileTable:
    """One table of files (``source.files.<table>``).

    Attributes:
        path: a file or a folder of files: a local path (relative to the
            working directory) or any URI Spark and pyarrow both read.
        format: parquet | csv (CSV files have a header line).
        sep, encoding: CSV separator and text encoding.
    """

    path: str
    format: Literal["parquet", "csv"] = "parquet"
    sep: str = ","
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        _one_of("format", self.format, FORMATS)

    @property
    def location(self) -> Location:
        return Location(self.path)


@dataclasses.dataclass(frozen=True, kw_only=True)
class InteractionColumns:
    """Which source column holds each canonical interactions column.

    Attributes:
        user_id, item_id, ts: the source's column names.
        rating: the rating column, or None for implicit feedback (every event counts).
    """

    user_id: str = "user_id"
    item_id: str = "item_id"
    rating: str | None = "rating"
    ts: str = "ts"


@dataclasses.dataclass(frozen=True, kw_only=True)
class InteractionsFile(FileTable):
    """The interactions table (``source.files.interactions``).

    Attributes:
        columns: the column mapping (a mapping of the same keys is accepted).
        ts_format: unix_seconds | unix_millis | iso8601 (Parquet timestamp columns need none).
    """

    columns: InteractionColumns = InteractionColumns()
    ts_format: Literal["unix_seconds", "unix_millis", "iso8601"] = "unix_seconds"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.columns, Mapping):
            object.__setattr__(self, "columns", InteractionColumns(**self.columns))
        _one_of("ts_format", self.ts_format, TS_FORMATS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SideFile(FileTable):
    """A users or items table (``source.files.users`` / ``.items``).

    Attributes:
        id_column: the column holding the user (or item) id.
        features: the side columns to use and how (``FeatureDecl.column``
            names the source column; mappings of FeatureDecl's keys are accepted).
    """

    id_column: str
    features: tuple[FeatureDecl, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        decls = tuple(FeatureDecl(**d) if isinstance(d, Mapping) else d for d in self.features)
        object.__setattr__(self, "features", decls)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FilesSource:
    """The ``files`` source (``source.files``): interactions plus optional users and items tables."""

    interactions: InteractionsFile
    users: SideFile | None = None
    items: SideFile | None = None

    def __post_init__(self) -> None:
        if isinstance(self.interactions, Mapping):
            object.__setattr__(self, "interactions", InteractionsFile(**self.interactions))
        for side in ("users", "items"):
            table = getattr(self, side)
            if isinstance(table, Mapping):
                object.__setattr__(self, side, SideFile(**table))


# -- checking and reading -----------------------------------------------------------------------
_DECL_KIND = {"continuous": "number", "categorical": "categorical", "multi_categorical": "multi_categorical"}
Sample = CsvSample | ParquetSample


def _check_table(problems: Problems, table: FileTable, key: str, columns: Sequence[Column],
                 optional: bool = False) -> Sample | None:
    hint = f"Check {key}.path and {key}.format."
    if table.format == "csv":
        return check_csv(problems, table.location, columns=columns, sep=table.sep, encoding=table.encoding, hint=hint,
                         optional=optional)
    return check_parquet(problems, table.location, columns=columns, hint=hint, optional=optional)


def _read_table(spark: SparkSession, table: FileTable, checked: Sample) -> DataFrame:
    if table.format == "csv":
        return read_csv_strings(spark, checked, table.sep, table.encoding)
    return read_parquet_rows(spark, table.location)


def _typed_id(parsed: Parsed, df: DataFrame, column: str, checked: Sample) -> SparkColumn:
    """An id column: bigint or string as sampled (CSV) or stored (Parquet); integers stay integers."""
    if isinstance(df.schema[column].dataType, T.StringType):
        return parsed.id(F.col(f"`{column}`"), checked.id_type(column))
    return F.col(f"`{column}`").cast("bigint")


def _side_columns(df: DataFrame, decls: Sequence[FeatureDecl]) -> list[SparkColumn]:
    """Declared side columns; a value that does not parse becomes null (imputed later), the row stays."""
    out = []
    for d in decls:
        col = F.col(f"`{d.column}`")
        dtype = df.schema[d.column].dataType
        if d.kind == "continuous":
            value = F.trim(col).try_cast("double") if isinstance(dtype, T.StringType) else col.cast("double")
        elif d.kind == "multi_categorical" and isinstance(dtype, T.ArrayType):
            value = F.array_join(col.cast("array<string>"), d.separator)
        elif isinstance(dtype, T.StringType):
            value = null_if_empty(F.trim(col))
        else:
            value = col
        out.append(value.alias(d.column))
    return out


def load_files(spark: SparkSession, spec: FilesSource) -> SourceTables:
    """The ``files`` source: mapped columns of Parquet or CSV tables.

    Ids keep their type (a CSV id column whose sampled values are all
    integers becomes bigint, otherwise string). A users or items table that
    holds no rows is read as absent (no side table, no side features).
    """
    inter = spec.interactions
    problems = Problems()
    key = "source.files.interactions"
    names = inter.columns
    columns = [Column(names.user_id, "id", f"{key}.columns.user_id"),
               Column(names.item_id, "id", f"{key}.columns.item_id"),
               Column(names.ts, inter.ts_format, f"{key}.columns.ts")]
    if names.rating is not None:
        columns.append(Column(names.rating, "number", f"{key}.columns.rating"))
    checked_inter = _check_table(problems, inter, key, columns)
    checked_sides = {}
    for side, table in (("users", spec.users), ("items", spec.items)):
        if table is None:
            continue
        key = f"source.files.{side}"
        side_columns = [Column(table.id_column, "id", f"{key}.id_column")]
        side_columns += [Column(d.column, _DECL_KIND[d.kind], f"{key}.features") for d in table.features]
        checked_sides[side] = _check_table(problems, table, key, side_columns, optional=True)
    problems.raise_if_any(f"files ({inter.location.display()})")

    df = _read_table(spark, inter, checked_inter)
    parsed = Parsed()
    rating = F.lit(None).cast("double")
    if names.rating is not None:
        rating_col = F.col(f"`{names.rating}`")
        rating = parsed.number(rating_col) if inter.format == "csv" else rating_col.cast("double")
    interactions = df.select(
        _typed_id(parsed, df, names.user_id, checked_inter).alias("user_id"),
        _typed_id(parsed, df, names.item_id, checked_inter).alias("item_id"),
        rating.alias("rating"),
        timestamp_column(F.col(f"`{names.ts}`"), df.schema[names.ts].dataType, inter.ts_format).alias("ts"),
        F.col(RAW_COL), parsed.problem().alias(PROBLEM_COL),
    )
    sides: dict[str, DataFrame] = {}
    decls: dict[str, tuple[FeatureDecl, ...]] = {}
    for side, table in (("users", spec.users), ("items", spec.items)):
        if table is None or checked_sides[side].empty:
            continue
        raw = _read_table(spark, table, checked_sides[side])
        parsed = Parsed()
        ident = _typed_id(parsed, raw, table.id_column, checked_sides[side])
        sides[side] = raw.select(
            ident.alias(f"{side[:-1]}_id"), *_side_columns(raw, table.features),
            F.col(RAW_COL), parsed.problem().alias(PROBLEM_COL),
        )
        decls[side] = tuple(table.features)
    return SourceTables(
        interactions=interactions, users=sides.get("users"), items=sides.get("items"), name="files",
        user_features=decls.get("users", ()), item_features=decls.get("items", ()),
    )
