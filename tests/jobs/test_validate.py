"""Bad files stop the run before any Spark work (the loaders get no SparkSession here) with one message.

The messages name the file, what was expected, what was found and what to
change: a config key for the ``files`` source, what the file should hold and
which ``source.kind`` reads which release for MovieLens (which has no column
mapping). The checks read through ``jobs.storage``, so they run the same on
pyarrow's in-memory ``mock://`` file system.
"""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import sources
from jobs.schema import FeatureDecl
from jobs.validate import SourceError

NO_SPARK = None  # any Spark call would fail: the checks must come first


def _message(load, *args):
    with pytest.raises(SourceError) as err:
        load(NO_SPARK, *args)
    return str(err.value)


def test_missing_file_names_the_file(copy_fixture):
    folder = copy_fixture("ml-100k")
    (folder / "u.user").unlink()
    message = _message(sources.load_movielens_100k, str(folder))
    assert f"{folder / 'u.user'}: file: expected a file (or a folder of files), found nothing at that path" in message
    assert "MovieLens 100K's u.user holds 'user id|age|gender|occupation|zip' lines." in message


def test_wrong_separator_names_file_expected_and_found(copy_fixture):
    folder = copy_fixture("ml-1m")
    (folder / "ratings.dat").write_text("1,1193,5,978300760\n2,661,3,978302109\n")
    message = _message(sources.load_movielens_1m, str(folder))
    assert "ratings.dat: every line: expected 4 fields separated by '::' (user id, item id, rating, timestamp)" in message
    assert "found 1 fields in line 1: '1,1193,5,978300760'" in message
    # a ratings file in another release's layout: the message says which kind reads which release
    assert "movielens_latest reads ml-latest and ml-latest-small (ratings.csv)" in message


@pytest.mark.parametrize("ratings, problem", [
    ("userId,movieId,rating\n1,1,4.0\n",
     "ratings.csv: column 'timestamp': expected a column named 'timestamp' in the header, "
     "found columns userId, movieId, rating."),
    ("user,item,stars,when\n1,1,4.0,964982703\n",  # every column missing: said once
     "ratings.csv: header: expected the columns 'userId', 'movieId', 'rating', 'timestamp', "
     "found columns user, item, stars, when."),
], ids=["one_missing", "all_missing"])
def test_missing_csv_columns_say_what_the_movielens_file_holds(copy_fixture, ratings, problem):
    """MovieLens sources have no column mapping: the hint is the file's layout and the source kinds."""
    folder = copy_fixture("ml-latest")
    (folder / "ratings.csv").write_text(ratings)
    message = _message(sources.load_movielens_latest, str(folder))
    assert len(message.splitlines()) == 2
    assert problem + " MovieLens latest's ratings.csv holds the header userId,movieId,rating,timestamp." in message
    assert "Check source.path (the dataset's folder) and source.kind: movielens_100k reads ml-100k" in message
    assert "map" not in message.lower() and "source.files" not in message


def test_csv_column_of_the_wrong_type(copy_fixture):
    folder = copy_fixture("ml-latest")
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,2015-10-24\n2,1,3.0,2015-10-25\n")
    message = _message(sources.load_movielens_latest, str(folder))
    assert ("ratings.csv: column 'timestamp': expected a timestamp in unix seconds (an integer), "
            "found '2015-10-24', '2015-10-25' (none of the first 2 rows parse)") in message


def test_a_required_file_with_only_its_header_is_refused(copy_fixture):
    folder = copy_fixture("ml-latest")
    (folder / "movies.csv").write_text("movieId,title,genres\n")
    message = _message(sources.load_movielens_latest, str(folder))
    assert f"{folder / 'movies.csv'}: content: expected rows below the header, found only the header line." in message


def test_one_bad_row_is_not_a_schema_error(copy_fixture):
    folder = copy_fixture("ml-latest")
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,yesterday\n2,1,3.0,1445714994\n")
    with pytest.raises(AttributeError):  # the checks pass; the loader then reaches for Spark
        sources.load_movielens_latest(NO_SPARK, str(folder))


def test_parquet_types_and_mapped_columns_in_one_message(tmp_path):
    pq.write_table(pa.table({"u": [1], "i": [2], "stars": ["five"], "when": [3]}), tmp_path / "e.parquet")
    pq.write_table(pa.table({"sku": [2], "year": ["1999"]}), tmp_path / "items.parquet")
    spec = sources.FilesSource(
        interactions=sources.InteractionsFile(
            path=str(tmp_path / "e.parquet"), columns=sources.InteractionColumns(user_id="u", item_id="i",
                                                                                 rating="stars", ts="ts")),
        items=sources.SideFile(path=str(tmp_path / "items.parquet"), id_column="sku",
                               features=(FeatureDecl("year", "continuous"),)),
    )
    lines = _message(sources.load_files, spec).splitlines()
    assert lines[0] == f"source files ({tmp_path / 'e.parquet'}) cannot be read:"
    assert any("e.parquet: column 'ts' (source.files.interactions.columns.ts): expected a column named 'ts', "
               "found columns u, i, stars, when. Set source.files.interactions.columns.ts to the name of the column "
               "that holds it." in line for line in lines)
    assert any("e.parquet: column 'stars' (source.files.interactions.columns.rating): expected a number, "
               "found type string" in line for line in lines)
    assert any("items.parquet: column 'year' (source.files.items.features): expected a number, "
               "found type string" in line for line in lines)


def test_files_source_missing_table_names_its_path_key(tmp_path):
    (tmp_path / "e.csv").write_text("user_id,item_id,rating,ts\n1,2,3.0,1700000000\n")
    spec = sources.FilesSource(
        interactions=sources.InteractionsFile(path=str(tmp_path / "e.csv"), format="csv"),
        users=sources.SideFile(path=str(tmp_path / "nope.csv"), format="csv", id_column="user_id"),
    )
    message = _message(sources.load_files, spec)
    assert (f"{tmp_path / 'nope.csv'}: file: expected a file (or a folder of files), found nothing at that path. "
            "Check source.files.users.path and source.files.users.format.") in message


# -- the same checks on a file system that is not the local disk -----------------------------------------
def test_checks_read_through_the_storage_layer(mock_fixture):
    folder = mock_fixture("ml-latest")
    (folder / "ratings.csv").write_text("userId,movieId,rating\n1,1,4.0\n")
    message = _message(sources.load_movielens_latest, folder.uri)
    assert message.splitlines()[0] == f"source movielens_latest at {folder.uri} cannot be read:"
    assert (f"{folder.uri}/ratings.csv: column 'timestamp': expected a column named 'timestamp' in the header, "
            "found columns userId, movieId, rating.") in message


def test_good_files_on_another_file_system_pass_the_checks(mock_fixture):
    folder = mock_fixture("ml-latest")
    with pytest.raises(AttributeError):  # every check passed; only the Spark read is left
        sources.load_movielens_latest(NO_SPARK, folder)


def test_u_genre_is_read_from_the_source_folder(mock_fixture):
    """u.genre sets the number of genre flags u.item must have: three genres here, so 5 + 3 fields."""
    folder = mock_fixture("ml-100k")
    (folder / "u.genre").write_text("Action|0\nComedy|1\nDrama|2\n")
    message = _message(sources.load_movielens_100k, folder)
    assert f"{folder.uri}/u.item: every line: expected 8 fields separated by '|'" in message


def test_parquet_folder_on_another_file_system(tmp_path):
    from jobs.storage import Location

    folder = Location(f"mock:///{tmp_path.name}/events")
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table({"user_id": [1], "item_id": ["a"], "when": [5]}), buffer)
    (folder / "part-0.parquet").write_bytes(buffer.getvalue().to_pybytes())
    spec = sources.FilesSource(interactions=sources.InteractionsFile(
        path=folder.uri, columns=sources.InteractionColumns(rating=None)))
    message = _message(sources.load_files, spec)
    assert (f"{folder.uri}: column 'ts' (source.files.interactions.columns.ts): expected a column named 'ts', "
            "found columns user_id, item_id, when.") in message


# -- load_source picks the loader of the spec's kind -------------------------------------------------------
def test_load_source_dispatches_on_the_kind(tmp_path):
    spec = sources.SourceSpec(kind="movielens_1m", path=str(tmp_path / "ml-1m"))
    message = _message(sources.load_source, spec)
    assert "expected the MovieLens 1M folder (ratings.dat, users.dat, movies.dat)" in message
    files = sources.SourceSpec(kind="files", files=sources.FilesSource(
        interactions=sources.InteractionsFile(path=str(tmp_path / "events.parquet"))))
    assert _message(sources.load_source, files).startswith(f"source files ({tmp_path / 'events.parquet'}) cannot")
    with pytest.raises(ValueError, match="source kind movielens_latest needs the path of the dataset's folder"):
        sources.SourceSpec(kind="movielens_latest")
