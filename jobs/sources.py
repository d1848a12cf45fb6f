"""Sources: where the events, users and items come from.

Every loader returns the same canonical ``SourceTables``:

* interactions: ``user_id``, ``item_id`` (the source's own values and types),
  ``rating`` (double, null for implicit feedback), ``ts`` (timestamp, UTC);
* users (optional): ``user_id`` plus side-information columns;
* items (optional): ``item_id`` plus side-information columns; ``genres`` is a
  ``|``-separated string where the source has genres, ``year`` an integer;
* tags (optional): ``user_id``, ``item_id``, ``tag``, ``ts``.

Tables read from files also carry ``_raw`` (the line or row as read, for
the quarantine) and ``_problem`` (``unparseable_line`` when the line does not
split into the expected fields or an id or rating does not parse; null
otherwise). Ingest validates the rows and drops these two columns.

Loaders of file sources check files, columns and types first (``jobs.validate``,
no Spark) and raise ``SourceError`` naming the file and column.

Formats:
  MovieLens 100K  u.data (tab: user, item, rating, unix time), u.user
                  (id|age|gender|occupation|zip), u.item (id|title|release date|
                  video release date|url|19 genre flags in u.genre's order); Latin-1.
  MovieLens 1M    ratings.dat (UserID::MovieID::Rating::Timestamp), users.dat
                  (UserID::Gender::Age::Occupation::Zip-code, age and occupation
                  as codes), movies.dat (MovieID::Title::Genres); Latin-1.
  MovieLens latest / latest-small  ratings.csv, movies.csv (year in the title),
                  tags.csv (optional); UTF-8 with a header.
  files           any interactions table plus optional users and items tables,
                  Parquet or CSV, with a column mapping and feature declarations.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Literal

import pyarrow as pa
from pyspark.sql import Column as SparkColumn
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs import synthetic
from jobs.features import MOVIELENS_ITEM_FEATURES, MOVIELENS_USER_FEATURES, FeatureDecl
from jobs.ingest import PROBLEM_COL, RAW_COL, REASON_UNPARSEABLE
from jobs.validate import Column, CsvSample, Problems, check_csv, check_delimited, check_parquet, id_type

LATIN_1 = "ISO-8859-1"

#: u.genre of MovieLens 100K, used when the file is absent.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
#: movies.csv of MovieLens latest writes this where a movie has no genre.
NO_GENRES = "(no genres listed)"
# "Toy Story (1995)", "Babylon 5 (1994-1998)", "Title (1995) " -> 1995
_TITLE_YEAR = r"\((\d{4})[^()]*\)\s*$"

#: MovieLens 1M codes age and occupation: both are categorical there.
ML1M_USER_FEATURES = (
    FeatureDecl("gender", "categorical"),
    FeatureDecl("age", "categorical"),
    FeatureDecl("occupation", "categorical"),
    FeatureDecl("zip", "categorical", prefix=1),
)
TAGS_FEATURE = FeatureDecl("tags", "multi_categorical", separator="|")


@dataclasses.dataclass
class SourceTables:
    """The canonical tables of one source (see the module docstring).

    Attributes:
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


# -- generic file tables --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class InteractionsFile:
    """An interactions table in Parquet or CSV and which of its columns mean what.

    Attributes:
        path: a file or a folder of files (any URI Spark and pyarrow both read).
        format: parquet | csv (CSV files have a header line).
        user_id, item_id, ts: the source's column names.
        rating: the rating column, or None for implicit feedback (every event counts).
        ts_format: unix_seconds | unix_millis | iso8601 (Parquet timestamp columns need none).
        sep, encoding: CSV separator and text encoding.
    """

    path: str
    format: Literal["parquet", "csv"] = "parquet"
    user_id: str = "user_id"
    item_id: str = "item_id"
    rating: str | None = "rating"
    ts: str = "ts"
    ts_format: Literal["unix_seconds", "unix_millis", "iso8601"] = "unix_seconds"
    sep: str = ","
    encoding: str = "utf-8"


@dataclasses.dataclass(frozen=True)
class SideFile:
    """A users or items table in Parquet or CSV.

    Attributes:
        path, format, sep, encoding: as for ``InteractionsFile``.
        id_column: the column holding the user (or item) id.
        features: the side columns to use and how (``FeatureDecl.column`` names the source column).
    """

    path: str
    id_column: str
    format: Literal["parquet", "csv"] = "parquet"
    features: tuple[FeatureDecl, ...] = ()
    sep: str = ","
    encoding: str = "utf-8"


@dataclasses.dataclass(frozen=True)
class FilesSource:
    """The ``files`` source: interactions plus optional users and items tables."""

    interactions: InteractionsFile
    users: SideFile | None = None
    items: SideFile | None = None
    rating_range: tuple[float, float] | None = None


# -- reading --------------------------------------------------------------------------------
def _read_lines(spark: SparkSession, path: str, encoding: str) -> DataFrame:
    """Every non-empty line of a text file as ``_raw`` (decoded with ``encoding``; no quoting)."""
    return spark.read.csv(path, schema=f"{RAW_COL} string", sep="\u0001", quote="", encoding=encoding, header=False)


def _split_lines(lines: DataFrame, sep: str, names: Sequence[str]) -> DataFrame:
    """Split ``_raw`` into string columns ``names``; a wrong field count sets ``_problem``."""
    parts = F.split(F.col(RAW_COL), re.escape(sep), -1)
    cols = [F.try_element_at(parts, F.lit(i + 1)).alias(n) for i, n in enumerate(names)]
    problem = F.when(F.size(parts) != len(names), F.lit(REASON_UNPARSEABLE))
    return lines.select(F.col(RAW_COL), problem.alias(PROBLEM_COL), *cols)


def _read_csv(spark: SparkSession, path: str, sample: CsvSample, sep: str, encoding: str) -> DataFrame:
    """A CSV file with a header, every column a string, plus ``_raw`` and ``_problem``."""
    schema = ", ".join(f"`{h}` string" for h in sample.header) + ", _corrupt string"
    df = spark.read.csv(
        path, schema=schema, header=True, sep=sep, encoding=encoding, escape='"',
        mode="PERMISSIVE", columnNameOfCorruptRecord="_corrupt", enforceSchema=True,
    )
    raw = F.coalesce(F.col("_corrupt"), F.to_json(F.struct(*[F.col(f"`{h}`") for h in sample.header])))
    problem = F.when(F.col("_corrupt").isNotNull(), F.lit(REASON_UNPARSEABLE))
    return df.select(raw.alias(RAW_COL), problem.alias(PROBLEM_COL), *[F.col(f"`{h}`") for h in sample.header])


def _read_parquet(spark: SparkSession, path: str) -> DataFrame:
    df = spark.read.parquet(path)
    raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns]))
    return df.select(raw.alias(RAW_COL), F.lit(None).cast("string").alias(PROBLEM_COL), *[F.col(f"`{c}`") for c in df.columns])


# -- typed columns from strings ------------------------------------------------------------------
class _Parsed:
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


def _timestamp(col: SparkColumn, dtype: T.DataType | None, ts_format: str) -> SparkColumn:
    """A UTC timestamp from unix seconds/millis or ISO-8601 text; null when it does not parse."""
    if isinstance(dtype, T.TimestampType | T.TimestampNTZType):
        return col.cast("timestamp")
    if isinstance(dtype, T.DateType):
        return col.cast("timestamp")
    if ts_format == "iso8601":
        return F.try_to_timestamp(F.trim(col.cast("string")))
    number = F.trim(col.cast("string")).try_cast("bigint") if not isinstance(dtype, T.IntegralType) else col.cast("bigint")
    # Beyond these the timestamp functions overflow (and throw under ANSI mode).
    if ts_format == "unix_millis":
        return F.when(F.abs(number) < F.lit(10**14), F.timestamp_millis(number))
    return F.when(F.abs(number) < F.lit(10**11), F.timestamp_seconds(number))


def _title_year(title: SparkColumn) -> SparkColumn:
    return F.regexp_extract(title, _TITLE_YEAR, 1).try_cast("int")


def _null_if_empty(col: SparkColumn) -> SparkColumn:
    return F.when(F.trim(col) != "", col)


def _movies(df: DataFrame, item: str, year: SparkColumn, genres: SparkColumn) -> DataFrame:
    """Canonical items of a MovieLens movies file: item_id, title, year, genres ('|'-separated or null)."""
    parsed = _Parsed()
    return df.select(
        parsed.id(F.col(item), "bigint").alias("item_id"),
        F.col("title"),
        year.alias("year"),
        genres.alias("genres"),
        F.col(RAW_COL), parsed.problem().alias(PROBLEM_COL),
    )


# -- synthetic ---------------------------------------------------------------------------------------
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
        user_features=MOVIELENS_USER_FEATURES,
        item_features=MOVIELENS_ITEM_FEATURES,
        rating_range=(1.0, 5.0),
    )


# -- MovieLens 100K and 1M ------------------------------------------------------------------------------
_RATING_FIELDS = (
    Column("user id", "id"), Column("item id", "id"), Column("rating", "number"), Column("timestamp", "unix_seconds"),
)


def _ratings_from_fields(df: DataFrame) -> DataFrame:
    parsed = _Parsed()
    user = parsed.id(F.col("user"), "bigint")
    item = parsed.id(F.col("item"), "bigint")
    rating = parsed.number(F.col("rating"))
    return df.select(
        user.alias("user_id"), item.alias("item_id"), rating.alias("rating"),
        _timestamp(F.col("ts"), None, "unix_seconds").alias("ts"),
        F.col(RAW_COL), parsed.problem().alias(PROBLEM_COL),
    )


def _read_genre_names(path: str) -> tuple[str, ...]:
    if not os.path.exists(path):
        return ML100K_GENRES
    pairs = []
    with open(path, encoding="latin-1") as handle:
        for line in handle:
            if "|" in line:
                name, index = line.rstrip("\r\n").rsplit("|", 1)
                pairs.append((int(index), name))
    return tuple(name for _, name in sorted(pairs))


def load_movielens_100k(spark: SparkSession, folder: str) -> SourceTables:
    """MovieLens 100K from its folder (u.data, u.user, u.item; u.genre if present)."""
    path = lambda name: os.path.join(folder, name)  # noqa: E731
    genres = _read_genre_names(path("u.genre"))
    item_fields = ["item", "title", "release", "video", "url"] + [f"g{i}" for i in range(len(genres))]
    problems = Problems()
    check_delimited(problems, path("u.data"), sep="\t", fields=_RATING_FIELDS, encoding="latin-1")
    check_delimited(problems, path("u.user"), sep="|", encoding="latin-1", fields=[
        Column("user id", "id"), Column("age", "number"), Column("gender", "text"),
        Column("occupation", "text"), Column("zip", "text")])
    check_delimited(problems, path("u.item"), sep="|", encoding="latin-1", fields=[
        Column("movie id", "id"), *[Column(n, "text") for n in ("title", "release date", "video release date",
                                                                "IMDb URL")],
        *[Column(f"genre flag {g}", "text") for g in genres]])
    problems.raise_if_any(f"movielens_100k at {folder}")

    ratings = _ratings_from_fields(
        _split_lines(_read_lines(spark, path("u.data"), LATIN_1), "\t", ["user", "item", "rating", "ts"])
    )
    users_raw = _split_lines(_read_lines(spark, path("u.user"), LATIN_1), "|",
                             ["user", "age", "gender", "occupation", "zip"])
    parsed = _Parsed()
    users = users_raw.select(
        parsed.id(F.col("user"), "bigint").alias("user_id"),
        F.trim("age").try_cast("int").alias("age"),
        _null_if_empty(F.trim("gender")).alias("gender"),
        _null_if_empty(F.trim("occupation")).alias("occupation"),
        _null_if_empty(F.trim("zip")).alias("zip"),
        F.col(RAW_COL), parsed.problem().alias(PROBLEM_COL),
    )
    items_raw = _split_lines(_read_lines(spark, path("u.item"), LATIN_1), "|", item_fields)
    flagged = [F.when(F.trim(f"g{i}") == "1", F.lit(name)) for i, name in enumerate(genres)]
    release_year = F.regexp_extract("release", r"(\d{4})\s*$", 1).try_cast("int")
    items = _movies(
        items_raw, "item", F.coalesce(release_year, _title_year(F.col("title"))),
        _null_if_empty(F.concat_ws("|", *flagged)),
    )
    return SourceTables(
        interactions=ratings, users=users, items=items, name="movielens_100k",
        user_features=MOVIELENS_USER_FEATURES, item_features=MOVIELENS_ITEM_FEATURES, rating_range=(1.0, 5.0),
    )


def load_movielens_1m(spark: SparkSession, folder: str) -> SourceTables:
    """MovieLens 1M from its folder (ratings.dat, users.dat, movies.dat)."""
    path = lambda name: os.path.join(folder, name)  # noqa: E731
    problems = Problems()
    check_delimited(problems, path("ratings.dat"), sep="::", fields=_RATING_FIELDS, encoding="latin-1")
    check_delimited(problems, path("users.dat"), sep="::", encoding="latin-1", fields=[
        Column("UserID", "id"), Column("Gender", "text"), Column("Age", "text"), Column("Occupation", "text"),
        Column("Zip-code", "text")])
    check_delimited(problems, path("movies.dat"), sep="::", encoding="latin-1", fields=[
        Column("MovieID", "id"), Column("Title", "text"), Column("Genres", "text")])
    problems.raise_if_any(f"movielens_1m at {folder}")

    ratings = _ratings_from_fields(
        _split_lines(_read_lines(spark, path("ratings.dat"), LATIN_1), "::", ["user", "item", "rating", "ts"])
    )
    users_raw = _split_lines(_read_lines(spark, path("users.dat"), LATIN_1), "::",
                             ["user", "gender", "age", "occupation", "zip"])
    parsed = _Parsed()
    users = users_raw.select(
        parsed.id(F.col("user"), "bigint").alias("user_id"),
        *[_null_if_empty(F.trim(c)).alias(c) for c in ("gender", "age", "occupation", "zip")],
        F.col(RAW_COL), parsed.problem().alias(PROBLEM_COL),
    )
    items_raw = _split_lines(_read_lines(spark, path("movies.dat"), LATIN_1), "::", ["item", "title", "genres"])
    items = _movies(items_raw, "item", _title_year(F.col("title")), _null_if_empty(F.trim("genres")))
    return SourceTables(
        interactions=ratings, users=users, items=items, name="movielens_1m",
        user_features=ML1M_USER_FEATURES, item_features=MOVIELENS_ITEM_FEATURES, rating_range=(1.0, 5.0),
    )


# -- MovieLens latest / latest-small ------------------------------------------------------------------
def load_movielens_latest(spark: SparkSession, folder: str) -> SourceTables:
    """MovieLens latest or latest-small (ratings.csv, movies.csv; tags.csv when present)."""
    path = lambda name: os.path.join(folder, name)  # noqa: E731
    problems = Problems()
    ratings_sample = check_csv(problems, path("ratings.csv"), columns=[
        Column("userId", "id"), Column("movieId", "id"), Column("rating", "number"),
        Column("timestamp", "unix_seconds")])
    movies_sample = check_csv(problems, path("movies.csv"), columns=[
        Column("movieId", "id"), Column("title", "text"), Column("genres", "text")])
    has_tags = os.path.exists(path("tags.csv"))
    tags_sample = check_csv(problems, path("tags.csv"), columns=[
        Column("userId", "id"), Column("movieId", "id"), Column("tag", "text"),
        Column("timestamp", "unix_seconds")]) if has_tags else None
    problems.raise_if_any(f"movielens_latest at {folder}")

    raw = _read_csv(spark, path("ratings.csv"), ratings_sample, ",", "utf-8")
    ratings = _ratings_from_fields(raw.select(
        F.col(RAW_COL), F.col(PROBLEM_COL), F.col("userId").alias("user"), F.col("movieId").alias("item"),
        F.col("rating"), F.col("timestamp").alias("ts")))
    movies = _read_csv(spark, path("movies.csv"), movies_sample, ",", "utf-8")
    genres = F.trim("genres")
    items = _movies(
        movies, "movieId", _title_year(F.col("title")), F.when((genres != "") & (genres != NO_GENRES), genres)
    )
    tags = None
    item_features = MOVIELENS_ITEM_FEATURES
    if tags_sample is not None:
        raw_tags = _read_csv(spark, path("tags.csv"), tags_sample, ",", "utf-8")
        parsed = _Parsed()
        tags = raw_tags.select(
            parsed.id(F.col("userId"), "bigint").alias("user_id"),
            parsed.id(F.col("movieId"), "bigint").alias("item_id"),
            F.col("tag"),
            _timestamp(F.col("timestamp"), None, "unix_seconds").alias("ts"),
            F.col(RAW_COL), parsed.problem().alias(PROBLEM_COL),
        )
        item_features = MOVIELENS_ITEM_FEATURES + (TAGS_FEATURE,)
    return SourceTables(
        interactions=ratings, items=items, tags=tags, name="movielens_latest",
        item_features=item_features, rating_range=(0.5, 5.0),
    )


# -- generic files ----------------------------------------------------------------------------------------
_DECL_KIND = {"continuous": "number", "categorical": "categorical", "multi_categorical": "multi_categorical"}


def _check_table(problems: Problems, table, columns: Sequence[Column]) -> CsvSample | pa.Schema | None:
    if table.format == "csv":
        return check_csv(problems, table.path, columns=columns, sep=table.sep, encoding=table.encoding)
    return check_parquet(problems, table.path, columns=columns)


def _read_table(spark: SparkSession, table, checked) -> DataFrame:
    if table.format == "csv":
        return _read_csv(spark, table.path, checked, table.sep, table.encoding)
    return _read_parquet(spark, table.path)


def _id_spark_type(table, checked, column: str) -> str:
    """bigint or string: from the sampled CSV values, or the Parquet column's type."""
    if table.format == "csv":
        return id_type(checked.values(column))
    return "bigint" if pa.types.is_integer(checked.field(column).type) else "string"


def _typed_id(parsed: _Parsed, df: DataFrame, column: str, spark_type: str) -> SparkColumn:
    if isinstance(df.schema[column].dataType, T.StringType):
        return parsed.id(F.col(f"`{column}`"), spark_type)
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
            value = _null_if_empty(F.trim(col))
        else:
            value = col
        out.append(value.alias(d.column))
    return out


def load_files(spark: SparkSession, spec: FilesSource) -> SourceTables:
    """The ``files`` source: mapped columns of Parquet or CSV tables.

    Ids keep their type (a CSV id column whose sampled values are all
    integers becomes bigint, otherwise string).
    """
    inter = spec.interactions
    problems = Problems()
    key = "source.files.interactions"
    columns = [Column(inter.user_id, "id", f"{key}.user_id"), Column(inter.item_id, "id", f"{key}.item_id"),
               Column(inter.ts, inter.ts_format, f"{key}.ts")]
    if inter.rating is not None:
        columns.append(Column(inter.rating, "number", f"{key}.rating"))
    checked_inter = _check_table(problems, inter, columns)
    checked_sides = {}
    for side, table in (("users", spec.users), ("items", spec.items)):
        if table is None:
            continue
        key = f"source.files.{side}"
        side_columns = [Column(table.id_column, "id", f"{key}.id_column")]
        side_columns += [Column(d.column, _DECL_KIND[d.kind], f"{key}.features") for d in table.features]
        checked_sides[side] = _check_table(problems, table, side_columns)
    problems.raise_if_any(f"files ({inter.path})")

    df = _read_table(spark, inter, checked_inter)
    parsed = _Parsed()
    id_types = {c: _id_spark_type(inter, checked_inter, c) for c in (inter.user_id, inter.item_id)}
    rating = F.lit(None).cast("double")
    if inter.rating is not None:
        rating_col = F.col(f"`{inter.rating}`")
        rating = parsed.number(rating_col) if inter.format == "csv" else rating_col.cast("double")
    interactions = df.select(
        _typed_id(parsed, df, inter.user_id, id_types[inter.user_id]).alias("user_id"),
        _typed_id(parsed, df, inter.item_id, id_types[inter.item_id]).alias("item_id"),
        rating.alias("rating"),
        _timestamp(F.col(f"`{inter.ts}`"), df.schema[inter.ts].dataType, inter.ts_format).alias("ts"),
        F.col(RAW_COL), parsed.problem().alias(PROBLEM_COL),
    )
    sides: dict[str, DataFrame] = {}
    for side, table in (("users", spec.users), ("items", spec.items)):
        if table is None:
            continue
        raw = _read_table(spark, table, checked_sides[side])
        parsed = _Parsed()
        ident = _typed_id(parsed, raw, table.id_column, _id_spark_type(table, checked_sides[side], table.id_column))
        sides[side] = raw.select(
            ident.alias(f"{side[:-1]}_id"), *_side_columns(raw, table.features),
            F.col(RAW_COL), parsed.problem().alias(PROBLEM_COL),
        )
    return SourceTables(
        interactions=interactions, users=sides.get("users"), items=sides.get("items"), name="files",
        user_features=tuple(spec.users.features) if spec.users else (),
        item_features=tuple(spec.items.features) if spec.items else (),
        rating_range=spec.rating_range,
    )
