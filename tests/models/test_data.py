"""Parquet -> batches and tf.data, read through jobs.storage (local folders and mock://)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.data import count_rows, iter_batches, make_dataset, parquet_files, row_group_units


def _write(root, n_files=3, rows=10):
    folder = root / "examples"
    for f in range(n_files):
        ids = np.arange(f * rows, (f + 1) * rows)
        tags = [[int(i % 3)] * int(i % 4) for i in ids]   # lengths 0..3
        part = folder / f"part-{f}.parquet"
        part.parent.mkdirs()
        pq.write_table(pa.table({"id": ids, "tags": pa.array(tags, pa.list_(pa.int32())), "x": ids * 0.5}),
                       part.path, filesystem=part.fs)
    (folder / "_SUCCESS").write_text("")
    return folder


@pytest.mark.parametrize("where", ["root", "mock_root"])
def test_batches_cover_all_rows_once_and_pad_lists(where, request):
    path = _write(request.getfixturevalue(where))
    files = parquet_files(path)
    assert files == [path / f"part-{f}.parquet" for f in range(3)]  # the marker is skipped
    assert count_rows(files) == 30
    batches = list(iter_batches(files, {"id": 0, "tags": 3, "x": 0}, 7, shuffle=True, seed=5, pool_rows=8))
    ids = np.concatenate([b["id"] for b in batches])
    assert sorted(ids.tolist()) == list(range(30))
    assert [len(b["id"]) for b in batches][:-1] == [7] * (len(batches) - 1)
    for b in batches:
        for i, tags, x in zip(b["id"], b["tags"], b["x"]):
            n = i % 4
            assert tags.tolist() == [i % 3] * n + [-1] * (3 - n)
            assert x == i * 0.5


def test_the_shuffle_pool_mixes_the_last_rows_read_with_earlier_ones(root):
    # Three files of 100 rows, file f holding ids f*100.. (as examples files group one user's rows).
    files = parquet_files(_write(root, n_files=3, rows=100))
    batches = list(iter_batches(files, {"id": 0}, 20, shuffle=True, seed=3, pool_rows=100))
    ids = np.concatenate([b["id"] for b in batches])
    assert sorted(ids.tolist()) == list(range(300))
    # The pool keeps half its rows when it drains, so the first file's batches are the only ones that can
    # come from a single file (draining the whole pool would batch each file's rows on their own).
    assert [len(b["id"]) for b in batches] == [20] * 15
    files_per_batch = [len(set((b["id"] // 100).tolist())) for b in batches]
    assert files_per_batch[:2] == [1, 1] and min(files_per_batch[2:]) >= 2


def test_shuffle_is_deterministic_by_seed_and_shards_split_files(root):
    files = parquet_files(_write(root))
    cols = {"id": 0}
    a = np.concatenate([b["id"] for b in iter_batches(files, cols, 4, seed=1)])
    b = np.concatenate([b["id"] for b in iter_batches(files, cols, 4, seed=1)])
    c = np.concatenate([b["id"] for b in iter_batches(files, cols, 4, seed=2)])
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    shard0 = np.concatenate([b["id"] for b in iter_batches(files, cols, 4, num_shards=2, shard_index=0)])
    shard1 = np.concatenate([b["id"] for b in iter_batches(files, cols, 4, num_shards=2, shard_index=1)])
    assert sorted(shard0.tolist() + shard1.tolist()) == list(range(30))
    assert set(shard0.tolist()).isdisjoint(shard1.tolist())


def test_tf_dataset_types_and_drop_remainder(root):
    files = parquet_files(_write(root))
    ds = make_dataset(files, {"id": 0, "tags": 3, "x": 0}, 8, shuffle=False, drop_remainder=True)
    batches = list(ds)
    assert len(batches) == 3  # 30 rows -> 3 full batches of 8
    assert batches[0]["tags"].shape == (8, 3)
    assert batches[0]["id"].dtype.name == "int32" and batches[0]["x"].dtype.name == "float32"


def test_one_file_splits_across_workers_by_row_group(mock_root):
    part = mock_root / "one" / "part-0.parquet"
    part.parent.mkdirs()
    pq.write_table(pa.table({"id": np.arange(30)}), part.path, filesystem=part.fs, row_group_size=10)
    files = parquet_files(mock_root / "one")
    assert row_group_units(files) == [(part, 0), (part, 1), (part, 2)]
    shards = [np.concatenate([b["id"] for b in iter_batches(files, {"id": 0}, 4, num_shards=2, shard_index=i)])
              for i in range(2)]
    # Row groups 0 and 2 go to worker 0, row group 1 to worker 1.
    assert sorted(shards[0].tolist()) == list(range(10)) + list(range(20, 30))
    assert sorted(shards[1].tolist()) == list(range(10, 20))


def test_repeat_reads_the_shard_again_with_a_new_shuffle(root):
    files = parquet_files(_write(root))
    ds = make_dataset(files, {"id": 0}, 10, shuffle=True, seed=3, repeat=True, drop_remainder=True)
    batches = [b["id"].numpy() for b in ds.take(6)]     # two passes over 30 rows
    first, second = np.concatenate(batches[:3]), np.concatenate(batches[3:])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(30))
    assert first.tolist() != second.tolist()
