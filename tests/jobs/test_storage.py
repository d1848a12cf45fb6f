"""jobs.storage: one decision of local folder or URI, and the same operations on every file system.

The non-local cases run on pyarrow's in-memory ``mock://`` file system, so
the code paths taken for an object store or HDFS (no local path, uploads
and downloads through temporary folders) are exercised without a server.
"""

import os
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.storage import Location, StorageError, to_uri


@pytest.mark.parametrize("given, expected", [
    ("/abs/y/", "file:///abs/y"),
    ("file:/a/b", "file:///a/b"),
    ("file:///a/b/", "file:///a/b"),
    ("file:///a/../b", "file:///b"),
    ("S3A://bkt/k/", "s3a://bkt/k"),
    ("hdfs://nn:8020/w", "hdfs://nn:8020/w"),
])
def test_to_uri(given, expected):
    assert to_uri(given) == expected


def test_relative_path_is_made_absolute_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loc = Location("warehouse/x")
    assert loc.uri == "file://" + str(tmp_path / "warehouse" / "x")
    assert loc.local_path == str(tmp_path / "warehouse" / "x")
    # The decision is taken once: changing directory later does not move the location.
    monkeypatch.chdir("/")
    assert loc.local_path == str(tmp_path / "warehouse" / "x")


def test_bad_locations_are_refused():
    with pytest.raises(ValueError, match="non-empty path or URI"):
        Location("")
    with pytest.raises(ValueError, match="bad child name"):
        Location("/w") / "../etc"


def test_children_parent_and_relative_paths():
    root = Location("/w")
    child = root / "a/b"
    assert child.uri == "file:///w/a/b" and child.name == "b"
    assert child.parent == root / "a"
    assert child.relative_to(root) == "a/b"
    with pytest.raises(ValueError, match="is not below"):
        Location("/other").relative_to(root)
    assert pickle.loads(pickle.dumps(child)) == child


@pytest.fixture(params=["local", "mock"])
def root(request, tmp_path):
    if request.param == "local":
        return Location(str(tmp_path / "w"))
    return Location(f"mock:///{tmp_path.name}/w")


def test_text_listing_and_data_files(root):
    (root / "t/part-0.parquet").write_text("a")
    (root / "t/sub/part-1.parquet").write_text("b")
    (root / "t/_SUCCESS").write_text("")
    (root / "t/.part-0.crc").write_text("")
    (root / "t/_tmp/part-9.parquet").write_text("")
    assert (root / "t/part-0.parquet").read_text() == "a"
    assert root.names() == ["t"]
    assert (root / "t").names() == [".part-0.crc", "_SUCCESS", "_tmp", "part-0.parquet", "sub"]
    assert [f.relative_to(root) for f in (root / "t").files(".parquet")] == ["t/part-0.parquet", "t/sub/part-1.parquet"]
    assert (root / "t/part-0.parquet").files() == [root / "t/part-0.parquet"]
    assert (root / "missing").files() == [] and (root / "missing").names() == []
    assert (root / "t").is_dir() and (root / "t/_SUCCESS").is_file() and not (root / "nope").exists()


def test_move_refuses_an_existing_destination(root):
    (root / "a/x").write_text("1")
    (root / "b/y").write_text("2")
    with pytest.raises(StorageError, match="the destination exists"):
        (root / "a").move_to(root / "b")
    assert (root / "b").names() == ["y"]  # nothing landed inside the existing folder
    (root / "a").move_to(root / "c/d")
    assert not (root / "a").exists() and (root / "c/d/x").read_text() == "1"
    with pytest.raises(StorageError, match="does not exist"):
        (root / "a").move_to(root / "e")


def test_delete_is_recursive_and_quiet_when_missing(root):
    (root / "d/e/f").write_text("1")
    (root / "d").delete()
    assert not (root / "d").exists()
    (root / "d").delete()


def test_folders_round_trip_through_local_copies(root, tmp_path):
    table = pa.table({"n": [1, 2, 3]})
    with (root / "m").writing_folder() as folder:
        pq.write_table(table, os.path.join(folder, "part.parquet"))
    assert [f.name for f in (root / "m").files()] == ["part.parquet"]
    with (root / "m/part.parquet").open_input() as handle:
        assert pq.read_table(handle).column("n").to_pylist() == [1, 2, 3]
    with (root / "m").local_folder() as folder:
        assert os.listdir(folder) == ["part.parquet"]
        copy = folder
    assert os.path.exists(copy) == root.is_local  # a temporary copy is removed afterwards
    assert (root / "m").mtime_ns() > 0 and (root / "missing").mtime_ns() == 0


def test_a_failed_write_block_uploads_nothing(root):
    if root.is_local:
        pytest.skip("a local folder is written in place")
    with pytest.raises(RuntimeError):
        with (root / "m").writing_folder() as folder:
            open(os.path.join(folder, "half"), "w").write("x")
            raise RuntimeError("crash")
    assert not (root / "m").exists()


def test_unknown_scheme_names_the_location():
    with pytest.raises(StorageError, match="nosuch://x/y: no file system for scheme 'nosuch'"):
        Location("nosuch://x/y").exists()


def test_swap_exchanges_two_local_folders_atomically(tmp_path):
    a, b = Location(str(tmp_path / "a")), Location(str(tmp_path / "b"))
    (a / "x").write_text("A")
    (b / "y").write_text("B")
    assert a.swap_with(b)
    assert a.names() == ["y"] and b.names() == ["x"]
    assert not Location("mock:///s/a").swap_with(Location("mock:///s/b"))  # no atomic swap there: nothing done


def test_of_two_racing_renames_onto_one_name_exactly_one_wins(tmp_path):
    import concurrent.futures

    root = Location(str(tmp_path))
    for n in range(8):
        (root / f"staged{n}/part").write_text(str(n))
    target = root / "final"

    def attempt(n):
        try:
            (root / f"staged{n}").move_to(target)
            return n
        except StorageError:
            return None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        winners = [n for n in pool.map(attempt, range(8)) if n is not None]
    assert len(winners) == 1
    assert target.names() == ["part"] and (target / "part").read_text() == str(winners[0])  # nothing nested


@pytest.mark.parametrize("where", ["local", "mock"])
def test_create_exclusive(where, tmp_path):
    root = Location(str(tmp_path)) if where == "local" else Location(f"mock:///{tmp_path.name}")
    lock = root / "locks/a.json"
    assert lock.create_exclusive("first")
    assert not lock.create_exclusive("second")
    assert lock.read_text() == "first"
