"""Every source format loads into the canonical tables (fixtures written by hand in tests/fixtures)."""

import datetime as dt
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import sources
from jobs.schema import FeatureDecl
from jobs.storage import Location
from jobs.validate import SourceError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ML_LATEST_SMALL = Path("/work/shared/data/ml-latest-small")


def _utc(seconds):
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).replace(tzinfo=None)


def _rows(df, *columns):
    return sorted(tuple(r[c] for c in columns) for r in df.collect())


def test_movielens_100k(spark):
    src = sources.load_movielens_100k(spark, str(FIXTURES / "ml-100k"))
    assert src.name == "movielens_100k" and src.rating_range == (1.0, 5.0)
    assert _rows(src.interactions, "user_id", "item_id", "rating", "ts") == [
        (1, 1, 5.0, _utc(874965758)), (1, 2, 3.0, _utc(876893171)), (2, 1, 4.0, _utc(878542960)),
        (2, 4, 2.0, _utc(889751712)), (3, 3, 1.0, _utc(876893119)),
    ]
    assert _rows(src.users, "user_id", "age", "gender", "occupation", "zip") == [
        (1, 24, "M", "technician", "85711"), (2, 53, "F", "other", "94043"), (3, 23, "M", "writer", "32067"),
    ]
    assert _rows(src.items, "item_id", "title", "year", "genres") == [
        (1, "Toy Story (1995)", 1995, "Animation|Children's|Comedy"),
        (2, "GoldenEye (1995)", 1995, "Action|Adventure|Thriller"),
        (3, "Belle époque (1992)", 1992, "Comedy|Romance"),   # Latin-1 title; year from the title
        (4, "unknown", None, "unknown"),
    ]
    assert [d.column for d in src.user_features] == ["age", "gender", "occupation", "zip"]
    assert {r._problem for r in src.interactions.collect()} == {None}


def test_movielens_1m(spark):
    src = sources.load_movielens_1m(spark, str(FIXTURES / "ml-1m"))
    assert _rows(src.interactions, "user_id", "item_id", "rating") == [
        (1, 661, 3.0), (1, 1193, 5.0), (2, 1193, 4.0), (3, 29, 2.0), (3, 2355, 5.0),
    ]
    assert _rows(src.users, "user_id", "gender", "age", "occupation", "zip") == [
        (1, "F", "1", "10", "48067"), (2, "M", "56", "16", "70072"), (3, "M", "25", "15", "55117"),
    ]
    items = {r.item_id: r for r in src.items.collect()}
    assert items[29].title == "Cité des enfants perdus, La (1995)" and items[29].year == 1995
    assert items[661].genres == "Animation|Children's|Musical"
    # age and occupation are codes in 1M: categorical
    assert {d.column: d.kind for d in src.user_features}["age"] == "categorical"


def test_movielens_latest_fixture(spark):
    src = sources.load_movielens_latest(spark, str(FIXTURES / "ml-latest"))
    assert src.users is None and src.rating_range == (0.5, 5.0)
    assert _rows(src.interactions, "user_id", "item_id", "rating") == [(1, 1, 4.0), (1, 3, 4.5), (2, 1, 0.5), (2, 7, 3.5)]
    assert _rows(src.items, "item_id", "title", "year", "genres") == [
        (1, "Toy Story (1995)", 1995, "Adventure|Animation|Children|Comedy|Fantasy"),
        (3, "American President, The (1995)", 1995, "Comedy|Drama|Romance"),   # quoted, with a comma
        (5, "Babylon 5 (1994-1998)", 1994, None),                              # (no genres listed)
        (7, "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)", 2001, "Comedy|Romance"),
    ]
    assert _rows(src.tags, "user_id", "item_id", "tag") == [(1, 7, "Paris"), (2, 1, "fun, family"), (2, 1, "pixar")]
    assert [d.column for d in src.item_features] == ["year", "genres", "tags"]


@pytest.mark.skipif(not ML_LATEST_SMALL.exists(), reason="needs /work/shared/data/ml-latest-small")
def test_movielens_latest_small_from_shared_data(spark):
    src = sources.load_movielens_latest(spark, str(ML_LATEST_SMALL))
    ratings = pd.read_csv(ML_LATEST_SMALL / "ratings.csv")
    stats = src.interactions.agg({"user_id": "count", "rating": "avg"}).first()
    assert stats[0] == len(ratings) == 100836
    assert stats[1] == pytest.approx(ratings.rating.mean())
    assert src.items.count() == 9742
    assert src.tags.count() == 3683
    assert src.interactions.filter("_problem is not null").count() == 0


def test_generic_csv_with_column_mapping_and_string_ids(spark, tmp_path):
    (tmp_path / "events.csv").write_text(
        "who;what;stars;when\nu1;i1;4;2024-01-02T10:00:00\nu2;i1;;2024-01-03T11:00:00\nu1;i2;x;2024-01-04\n"
    )
    (tmp_path / "items.csv").write_text("sku;tags;price\ni1;a|b;9.5\ni2;;oops\n")
    spec = sources.FilesSource(
        interactions=sources.InteractionsFile(
            path=str(tmp_path / "events.csv"), format="csv", sep=";", ts_format="iso8601",
            columns=sources.InteractionColumns(user_id="who", item_id="what", rating="stars", ts="when"),
        ),
        items=sources.SideFile(
            path=str(tmp_path / "items.csv"), format="csv", sep=";", id_column="sku",
            features=(FeatureDecl("tags", "multi_categorical"), FeatureDecl("price", "continuous")),
        ),
    )
    src = sources.load_files(spark, spec)
    got = _rows(src.interactions, "user_id", "item_id", "rating", "ts", "_problem")
    assert got == [
        ("u1", "i1", 4.0, dt.datetime(2024, 1, 2, 10), None),
        ("u1", "i2", None, dt.datetime(2024, 1, 4), "unparseable_line"),  # 'x' is not a rating
        ("u2", "i1", None, dt.datetime(2024, 1, 3, 11), None),            # empty rating: implicit event
    ]
    assert _rows(src.items, "item_id", "tags", "price") == [("i1", "a|b", 9.5), ("i2", None, None)]
    # the declared columns are typed by their kind: continuous -> double, multi-valued stays a string
    assert src.items.schema["price"].dataType.simpleString() == "double"
    assert src.items.schema["tags"].dataType.simpleString() == "string"


def test_generic_parquet_implicit_feedback_unix_millis(spark, tmp_path):
    table = pa.table({"u": pa.array([7, 8], pa.int32()), "i": ["a", "b"], "t": pa.array([1_700_000_000_000, 5])})
    pq.write_table(table, tmp_path / "events.parquet")
    spec = sources.FilesSource(interactions=sources.InteractionsFile(
        path=str(tmp_path), columns=sources.InteractionColumns(user_id="u", item_id="i", rating=None, ts="t"),
        ts_format="unix_millis"))
    src = sources.load_files(spark, spec)
    assert src.interactions.schema["user_id"].dataType.simpleString() == "bigint"
    assert _rows(src.interactions, "user_id", "item_id", "rating", "ts") == [
        (7, "a", None, _utc(1_700_000_000)), (8, "b", None, dt.datetime(1970, 1, 1, 0, 0, 0, 5000)),
    ]


def test_folder_not_found_is_one_source_error(spark, tmp_path):
    with pytest.raises(SourceError) as err:
        sources.load_movielens_100k(spark, str(tmp_path / "missing"))
    lines = str(err.value).splitlines()
    assert len(lines) == 2  # the heading and one problem, not one per file
    assert lines[1].startswith(f"  {tmp_path / 'missing'}: folder: expected the MovieLens 100K folder "
                               "(u.data, u.user, u.item), found nothing at that path. Check source.path")
    assert not os.path.exists(tmp_path / "missing")


# -- optional tables without rows are read as absent ----------------------------------------------------------
@pytest.mark.parametrize("content", ["userId,movieId,tag,timestamp\n", ""], ids=["header_only", "empty"])
def test_movielens_tags_without_rows_are_no_tags(spark, copy_fixture, content):
    folder = copy_fixture("ml-latest")
    (folder / "tags.csv").write_text(content)
    src = sources.load_movielens_latest(spark, str(folder))
    assert src.tags is None
    assert [d.column for d in src.item_features] == ["year", "genres"]  # no tags feature to encode
    assert _rows(src.interactions, "user_id", "item_id", "rating") == [(1, 1, 4.0), (1, 3, 4.5), (2, 1, 0.5),
                                                                        (2, 7, 3.5)]


def test_files_side_tables_without_rows_are_absent(spark, tmp_path):
    (tmp_path / "events.csv").write_text("u,i,r,t\n1,10,4,1700000000\n2,11,3,1700000100\n")
    (tmp_path / "users.csv").write_text("uid,age\n")  # the header, no rows
    pq.write_table(pa.table({"sku": pa.array([], pa.int64()), "year": pa.array([], pa.int32())}),
                   tmp_path / "items.parquet")
    spec = sources.FilesSource(
        interactions=sources.InteractionsFile(path=str(tmp_path / "events.csv"), format="csv",
                                              columns=sources.InteractionColumns(user_id="u", item_id="i", rating="r",
                                                                                 ts="t")),
        users=sources.SideFile(path=str(tmp_path / "users.csv"), format="csv", id_column="uid",
                               features=(FeatureDecl("age", "continuous"),)),
        items=sources.SideFile(path=str(tmp_path / "items.parquet"), id_column="sku",
                               features=(FeatureDecl("year", "continuous"),)),
    )
    src = sources.load_files(spark, spec)
    assert (src.users, src.items, src.user_features, src.item_features) == (None, None, (), ())
    assert _rows(src.interactions, "user_id", "item_id", "rating", "ts") == [
        (1, 10, 4.0, _utc(1_700_000_000)), (2, 11, 3.0, _utc(1_700_000_100))]


def test_an_empty_side_table_with_a_wrong_header_is_still_refused(tmp_path):
    (tmp_path / "events.csv").write_text("user_id,item_id,rating,ts\n1,10,4,1700000000\n")
    (tmp_path / "users.csv").write_text("id,age\n")
    spec = sources.FilesSource(
        interactions=sources.InteractionsFile(path=str(tmp_path / "events.csv"), format="csv"),
        users=sources.SideFile(path=str(tmp_path / "users.csv"), format="csv", id_column="uid"),
    )
    with pytest.raises(SourceError, match=r"users.csv: column 'uid' \(source.files.users.id_column\): expected a "
                                          r"column named 'uid' in the header, found columns id, age"):
        sources.load_files(None, spec)


# -- the files source mirrors the config ---------------------------------------------------------------------
def test_files_source_builds_from_a_config_dump(tmp_path):
    """``FilesSource(**dump)`` of the config's nested keys gives the typed source (paths read as Locations)."""
    dump = {
        "interactions": {"path": "events.csv", "format": "csv", "sep": ";", "encoding": "utf-8",
                         "columns": {"user_id": "who", "item_id": "what", "rating": None, "ts": "when"},
                         "ts_format": "iso8601"},
        "users": None,
        "items": {"path": str(tmp_path / "items"), "format": "parquet", "sep": ",", "encoding": "utf-8",
                  "id_column": "sku",
                  "features": [{"column": "genres", "kind": "multi_categorical", "separator": "/", "prefix": None}]},
    }
    built = sources.FilesSource(**dump)
    assert built == sources.FilesSource(
        interactions=sources.InteractionsFile(
            path="events.csv", format="csv", sep=";", ts_format="iso8601",
            columns=sources.InteractionColumns(user_id="who", item_id="what", rating=None, ts="when")),
        items=sources.SideFile(path=str(tmp_path / "items"), id_column="sku",
                               features=(FeatureDecl("genres", "multi_categorical", separator="/"),)),
    )
    assert built.interactions.location == Location("file://" + os.path.abspath("events.csv"))
    with pytest.raises(ValueError, match="format: got 'json', expected one of parquet, csv"):
        sources.FilesSource(interactions={"path": "e", "format": "json"})
