"""MovieLens folders (100K, 1M, latest / latest-small) as canonical tables.

  MovieLens 100K  u.data (tab: user, item, rating, unix time), u.user
                  (id|age|gender|occupation|zip), u.item (id|title|release date|
                  video release date|url|19 genre flags in u.genre's order); Latin-1.
  MovieLens 1M    ratings.dat (UserID::MovieID::Rating::Timestamp), users.dat
                  (UserID::Gender::Age::Occupation::Zip-code, age and occupation
                  as codes), movies.dat (MovieID::Title::Genres); Latin-1.
  MovieLens latest / latest-small  ratings.csv, movies.csv (year in the title),
                  tags.csv (optional); UTF-8 with a header.

Every file is checked first (``jobs.validate``, no Spark); a problem names the
file, what it should hold and which ``source.kind`` reads which release.
"""

from __future__ import annotations

from pyspark.sql import Column as SparkColumn
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.schema import MOVIELENS_ITEM_FEATURES, MOVIELENS_USER_FEATURES, PROBLEM_COL, RAW_COL, FeatureDecl
from jobs.sources.canonical import (
    Parsed,
    SourceTables,
    null_if_empty,
    read_csv_strings,
    read_text_lines,
    split_fields,
    timestamp_column,
)
from jobs.storage import Location
from jobs.validate import Column, Problems, check_csv, check_delimited

LATIN_1 = "ISO-8859-1"

#: u.genre of MovieLens 100K, used when the file is absent or empty.
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

# Said with a problem of a ratings file: the folder may hold another release.
_WHICH_KIND = ("Check source.path (the dataset's folder) and source.kind: movielens_100k reads ml-100k (u.data), "
               "movielens_1m reads ml-1m (ratings.dat), movielens_latest reads ml-latest and ml-latest-small "
               "(ratings.csv).")


def _holds(release: str, file: str, content: str, ratings: bool = False) -> str:
    """The hint of a MovieLens file: what it holds (and, for the ratings file, which kind reads which release)."""
    return f"{release}'s {file} holds {content}." + (f" {_WHICH_KIND}" if ratings else "")


# -- shared by the releases -----------------------------------------------------------------------
_RATING_FIELDS = (
    Column("user id", "id"), Column("item id", "id"), Column("rating", "number"), Column("timestamp", "unix_seconds"),
)


def _ratings_from_fields(df: DataFrame) -> DataFrame:
    """Canonical interactions from string columns user, item, rating, ts (unix seconds)."""
    parsed = Parsed()
    user = parsed.id(F.col("user"), "bigint")
    item = parsed.id(F.col("item"), "bigint")
    rating = parsed.number(F.col("rating"))
    return df.select(
        user.alias("user_id"), item.alias("item_id"), rating.alias("rating"),
        timestamp_column(F.col("ts"), None, "unix_seconds").alias("ts"),
        F.col(RAW_COL), parsed.problem().alias(PROBLEM_COL),
    )


def _users(df: DataFrame, *columns: SparkColumn) -> DataFrame:
    """Canonical users of a MovieLens users file: user_id (from the string column user), ``columns``."""
    parsed = Parsed()
    return df.select(parsed.id(F.col("user"), "bigint").alias("user_id"), *columns,
                     F.col(RAW_COL), parsed.problem().alias(PROBLEM_COL))


def _title_year(title: SparkColumn) -> SparkColumn:
    return F.regexp_extract(title, _TITLE_YEAR, 1).try_cast("int")


def _movies(df: DataFrame, item: str, year: SparkColumn, genres: SparkColumn) -> DataFrame:
    """Canonical items of a MovieLens movies file: item_id, title, year, genres ('|'-separated or null)."""
    parsed = Parsed()
    return df.select(
        parsed.id(F.col(item), "bigint").alias("item_id"),
        F.col("title"),
        year.alias("year"),
        genres.alias("genres"),
        F.col(RAW_COL), parsed.problem().alias(PROBLEM_COL),
    )


def _open_folder(folder: str | Location, kind: str, release: str, files: str) -> tuple[Location, Problems]:
    """The dataset folder and the Problems of its checks; a folder that is not there is the one problem said."""
    folder = Location(folder)
    problems = Problems()
    if not folder.is_dir():
        found = "a file" if folder.exists() else "nothing at that path"
        problems.add(folder.display(), "folder", f"the {release} folder ({files})", found, _WHICH_KIND)
        problems.raise_if_any(f"{kind} at {folder.display()}")
    return folder, problems


def _lines(spark: SparkSession, file: Location, sep: str, names: list[str]) -> DataFrame:
    return split_fields(read_text_lines(spark, file, LATIN_1), sep, names)


# -- MovieLens 100K and 1M ------------------------------------------------------------------------------
def _read_genre_names(file: Location) -> tuple[str, ...]:
    """The genre names of u.genre ('name|index' lines) in index order; ``ML100K_GENRES`` when absent or empty."""
    if not file.is_file():
        return ML100K_GENRES
    pairs = []
    for line in file.read_bytes().decode("latin-1").splitlines():
        if "|" in line:
            name, index = line.rsplit("|", 1)
            pairs.append((int(index), name))
    return tuple(name for _, name in sorted(pairs)) or ML100K_GENRES


def load_movielens_100k(spark: SparkSession, folder: str | Location) -> SourceTables:
    """MovieLens 100K from its folder (u.data, u.user, u.item; u.genre if present)."""
    release = "MovieLens 100K"
    folder, problems = _open_folder(folder, "movielens_100k", release, "u.data, u.user, u.item")
    genres = _read_genre_names(folder / "u.genre")
    item_fields = ["item", "title", "release", "video", "url"] + [f"g{i}" for i in range(len(genres))]
    check_delimited(problems, folder / "u.data", sep="\t", fields=_RATING_FIELDS, encoding="latin-1",
                    hint=_holds(release, "u.data", "tab-separated user id, item id, rating, timestamp", True))
    check_delimited(problems, folder / "u.user", sep="|", encoding="latin-1", fields=[
        Column("user id", "id"), Column("age", "number"), Column("gender", "text"),
        Column("occupation", "text"), Column("zip", "text")],
        hint=_holds(release, "u.user", "'user id|age|gender|occupation|zip' lines"))
    check_delimited(problems, folder / "u.item", sep="|", encoding="latin-1", fields=[
        Column("movie id", "id"), *[Column(n, "text") for n in ("title", "release date", "video release date",
                                                                "IMDb URL")],
        *[Column(f"genre flag {g}", "text") for g in genres]],
        hint=_holds(release, "u.item", f"'movie id|title|release date|video release date|IMDb URL' and "
                                       f"{len(genres)} genre flags (u.genre's genres) per line"))
    problems.raise_if_any(f"movielens_100k at {folder.display()}")

    ratings = _ratings_from_fields(_lines(spark, folder / "u.data", "\t", ["user", "item", "rating", "ts"]))
    users_raw = _lines(spark, folder / "u.user", "|", ["user", "age", "gender", "occupation", "zip"])
    users = _users(users_raw, F.trim("age").try_cast("int").alias("age"),
                   *[null_if_empty(F.trim(c)).alias(c) for c in ("gender", "occupation", "zip")])
    items_raw = _lines(spark, folder / "u.item", "|", item_fields)
    flagged = [F.when(F.trim(f"g{i}") == "1", F.lit(name)) for i, name in enumerate(genres)]
    release_year = F.regexp_extract("release", r"(\d{4})\s*$", 1).try_cast("int")
    items = _movies(
        items_raw, "item", F.coalesce(release_year, _title_year(F.col("title"))),
        null_if_empty(F.concat_ws("|", *flagged)),
    )
    return SourceTables(
        interactions=ratings, users=users, items=items, name="movielens_100k",
        user_features=MOVIELENS_USER_FEATURES, item_features=MOVIELENS_ITEM_FEATURES, rating_range=(1.0, 5.0),
    )


def load_movielens_1m(spark: SparkSession, folder: str | Location) -> SourceTables:
    """MovieLens 1M from its folder (ratings.dat, users.dat, movies.dat)."""
    release = "MovieLens 1M"
    folder, problems = _open_folder(folder, "movielens_1m", release, "ratings.dat, users.dat, movies.dat")
    check_delimited(problems, folder / "ratings.dat", sep="::", fields=_RATING_FIELDS, encoding="latin-1",
                    hint=_holds(release, "ratings.dat", "'UserID::MovieID::Rating::Timestamp' lines", True))
    check_delimited(problems, folder / "users.dat", sep="::", encoding="latin-1", fields=[
        Column("UserID", "id"), Column("Gender", "text"), Column("Age", "text"), Column("Occupation", "text"),
        Column("Zip-code", "text")],
        hint=_holds(release, "users.dat", "'UserID::Gender::Age::Occupation::Zip-code' lines"))
    check_delimited(problems, folder / "movies.dat", sep="::", encoding="latin-1", fields=[
        Column("MovieID", "id"), Column("Title", "text"), Column("Genres", "text")],
        hint=_holds(release, "movies.dat", "'MovieID::Title::Genres' lines"))
    problems.raise_if_any(f"movielens_1m at {folder.display()}")

    ratings = _ratings_from_fields(_lines(spark, folder / "ratings.dat", "::", ["user", "item", "rating", "ts"]))
    users_raw = _lines(spark, folder / "users.dat", "::", ["user", "gender", "age", "occupation", "zip"])
    users = _users(users_raw, *[null_if_empty(F.trim(c)).alias(c) for c in ("gender", "age", "occupation", "zip")])
    items_raw = _lines(spark, folder / "movies.dat", "::", ["item", "title", "genres"])
    items = _movies(items_raw, "item", _title_year(F.col("title")), null_if_empty(F.trim("genres")))
    return SourceTables(
        interactions=ratings, users=users, items=items, name="movielens_1m",
        user_features=ML1M_USER_FEATURES, item_features=MOVIELENS_ITEM_FEATURES, rating_range=(1.0, 5.0),
    )


# -- MovieLens latest / latest-small ------------------------------------------------------------------
def load_movielens_latest(spark: SparkSession, folder: str | Location) -> SourceTables:
    """MovieLens latest or latest-small (ratings.csv, movies.csv; tags.csv when present).

    A tags.csv without rows (only its header, or empty) is read as no tags.
    """
    release = "MovieLens latest"
    folder, problems = _open_folder(folder, "movielens_latest", release, "ratings.csv, movies.csv")
    ratings_sample = check_csv(problems, folder / "ratings.csv", columns=[
        Column("userId", "id"), Column("movieId", "id"), Column("rating", "number"),
        Column("timestamp", "unix_seconds")],
        hint=_holds(release, "ratings.csv", "the header userId,movieId,rating,timestamp", True))
    movies_sample = check_csv(problems, folder / "movies.csv", columns=[
        Column("movieId", "id"), Column("title", "text"), Column("genres", "text")],
        hint=_holds(release, "movies.csv", "the header movieId,title,genres"))
    tags_sample = None
    if (folder / "tags.csv").exists():
        tags_sample = check_csv(problems, folder / "tags.csv", columns=[
            Column("userId", "id"), Column("movieId", "id"), Column("tag", "text"),
            Column("timestamp", "unix_seconds")], optional=True,
            hint=_holds(release, "tags.csv", "the header userId,movieId,tag,timestamp (the file is optional)"))
    problems.raise_if_any(f"movielens_latest at {folder.display()}")

    raw = read_csv_strings(spark, ratings_sample, ",", "utf-8")
    ratings = _ratings_from_fields(raw.select(
        F.col(RAW_COL), F.col(PROBLEM_COL), F.col("userId").alias("user"), F.col("movieId").alias("item"),
        F.col("rating"), F.col("timestamp").alias("ts")))
    movies = read_csv_strings(spark, movies_sample, ",", "utf-8")
    genres = F.trim("genres")
    items = _movies(
        movies, "movieId", _title_year(F.col("title")), F.when((genres != "") & (genres != NO_GENRES), genres)
    )
    tags = None
    item_features = MOVIELENS_ITEM_FEATURES
    if tags_sample is not None and not tags_sample.empty:
        raw_tags = read_csv_strings(spark, tags_sample, ",", "utf-8")
        parsed = Parsed()
        tags = raw_tags.select(
            parsed.id(F.col("userId"), "bigint").alias("user_id"),
            parsed.id(F.col("movieId"), "bigint").alias("item_id"),
            F.col("tag"),
            timestamp_column(F.col("timestamp"), None, "unix_seconds").alias("ts"),
            F.col(RAW_COL), parsed.problem().alias(PROBLEM_COL),
        )
        item_features = MOVIELENS_ITEM_FEATURES + (TAGS_FEATURE,)
    return SourceTables(
        interactions=ratings, items=items, tags=tags, name="movielens_latest",
        item_features=item_features, rating_range=(0.5, 5.0),
    )
