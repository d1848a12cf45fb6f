"""Bad files stop the run before any Spark work (the loaders get no SparkSession here) with one message."""

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import sources
from jobs.validate import SourceError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NO_SPARK = None  # any Spark call would fail: the checks must come first


def _copy(name, tmp_path):
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def test_missing_file_names_the_file(tmp_path):
    folder = _copy("ml-100k", tmp_path)
    (folder / "u.user").unlink()
    with pytest.raises(SourceError) as err:
        sources.load_movielens_100k(NO_SPARK, str(folder))
    assert f"{folder / 'u.user'}: file: expected a file (or a folder of files), found nothing at that path" in str(err.value)


def test_wrong_separator_names_file_expected_and_found(tmp_path):
    folder = _copy("ml-1m", tmp_path)
    (folder / "ratings.dat").write_text("1,1193,5,978300760\n2,661,3,978302109\n")
    with pytest.raises(SourceError) as err:
        sources.load_movielens_1m(NO_SPARK, str(folder))
    message = str(err.value)
    assert "ratings.dat: every line: expected 4 fields separated by '::' (user id, item id, rating, timestamp)" in message
    assert "found 1 fields in line 1: '1,1193,5,978300760'" in message


def test_missing_csv_column_names_column_and_found_columns(tmp_path):
    folder = _copy("ml-latest", tmp_path)
    (folder / "ratings.csv").write_text("userId,movieId,rating\n1,1,4.0\n")
    with pytest.raises(SourceError) as err:
        sources.load_movielens_latest(NO_SPARK, str(folder))
    assert ("ratings.csv: column 'timestamp': expected a column named 'timestamp' in the header, "
            "found columns userId, movieId, rating") in str(err.value)


def test_csv_column_of_the_wrong_type(tmp_path):
    folder = _copy("ml-latest", tmp_path)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,2015-10-24\n2,1,3.0,2015-10-25\n")
    with pytest.raises(SourceError) as err:
        sources.load_movielens_latest(NO_SPARK, str(folder))
    assert ("ratings.csv: column 'timestamp': expected a timestamp in unix seconds (an integer), "
            "found '2015-10-24', '2015-10-25' (none of the first 2 rows parse)") in str(err.value)


def test_one_bad_row_is_not_a_schema_error(tmp_path):
    folder = _copy("ml-latest", tmp_path)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,yesterday\n2,1,3.0,1445714994\n")
    with pytest.raises(AttributeError):  # the checks pass; the loader then reaches for Spark
        sources.load_movielens_latest(NO_SPARK, str(folder))


def test_parquet_types_and_mapped_columns_in_one_message(tmp_path):
    pq.write_table(pa.table({"u": [1], "i": [2], "stars": ["five"], "when": [3]}), tmp_path / "e.parquet")
    pq.write_table(pa.table({"sku": [2], "year": ["1999"]}), tmp_path / "items.parquet")
    spec = sources.FilesSource(
        interactions=sources.InteractionsFile(path=str(tmp_path / "e.parquet"), user_id="u", item_id="i",
                                              rating="stars", ts="ts"),
        items=sources.SideFile(path=str(tmp_path / "items.parquet"), id_column="sku",
                               features=(sources.FeatureDecl("year", "continuous"),)),
    )
    with pytest.raises(SourceError) as err:
        sources.load_files(NO_SPARK, spec)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("source files (")
    assert any("e.parquet: column 'ts' (source.files.interactions.ts): expected a column named 'ts', "
               "found columns u, i, stars, when" in line for line in lines)
    assert any("e.parquet: column 'stars' (source.files.interactions.rating): expected a number, "
               "found type string" in line for line in lines)
    assert any("items.parquet: column 'year' (source.files.items.features): expected a number, "
               "found type string" in line for line in lines)
