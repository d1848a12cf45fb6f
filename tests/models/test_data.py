import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.data import iter_batches, make_dataset, parquet_files


def _write(tmp_path, n_files=3, rows=10):
    folder = tmp_path / "examples"
    folder.mkdir()
    for f in range(n_files):
        ids = np.arange(f * rows, (f + 1) * rows)
        tags = [[int(i % 3)] * int(i % 4) for i in ids]   # lengths 0..3
        pq.write_table(
            pa.table({"id": ids, "tags": pa.array(tags, pa.list_(pa.int32())), "x": ids * 0.5}),
            folder / f"part-{f}.parquet",
        )
    (folder / "_SUCCESS").write_text("")
    return str(folder)


def test_batches_cover_all_rows_once_and_pad_lists(tmp_path):
    path = _write(tmp_path)
    files = parquet_files(path)
    assert len(files) == 3  # the marker is skipped
    batches = list(iter_batches(files, {"id": 0, "tags": 3, "x": 0}, 7, shuffle=True, seed=5, pool_rows=8))
    ids = np.concatenate([b["id"] for b in batches])
    assert sorted(ids.tolist()) == list(range(30))
    assert [len(b["id"]) for b in batches][:-1] == [7] * (len(batches) - 1)
    for b in batches:
        for i, tags, x in zip(b["id"], b["tags"], b["x"]):
            n = i % 4
            assert tags.tolist() == [i % 3] * n + [-1] * (3 - n)
            assert x == i * 0.5


def test_the_shuffle_pool_mixes_the_last_rows_read_with_earlier_ones(tmp_path):
    # Three files of 100 rows, file f holding ids f*100.. (as examples files group one user's rows).
    files = parquet_files(_write(tmp_path, n_files=3, rows=100))
    batches = list(iter_batches(files, {"id": 0}, 20, shuffle=True, seed=3, pool_rows=100))
    ids = np.concatenate([b["id"] for b in batches])
    assert sorted(ids.tolist()) == list(range(300))
    # The pool keeps half its rows when it drains, so the first file's batches are the only ones that can
    # come from a single file (draining the whole pool would batch each file's rows on their own).
    assert [len(b["id"]) for b in batches] == [20] * 15
    files_per_batch = [len(set((b["id"] // 100).tolist())) for b in batches]
    assert files_per_batch[:2] == [1, 1] and min(files_per_batch[2:]) >= 2


def test_shuffle_is_deterministic_by_seed_and_shards_split_files(tmp_path):
    files = parquet_files(_write(tmp_path))
    cols = {"id": 0}
    a = np.concatenate([b["id"] for b in iter_batches(files, cols, 4, seed=1)])
    b = np.concatenate([b["id"] for b in iter_batches(files, cols, 4, seed=1)])
    c = np.concatenate([b["id"] for b in iter_batches(files, cols, 4, seed=2)])
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    shard0 = np.concatenate([b["id"] for b in iter_batches(files, cols, 4, num_shards=2, shard_index=0)])
    shard1 = np.concatenate([b["id"] for b in iter_batches(files, cols, 4, num_shards=2, shard_index=1)])
    assert sorted(shard0.tolist() + shard1.tolist()) == list(range(30))
    assert set(shard0.tolist()).isdisjoint(shard1.tolist())


def test_tf_dataset_types_and_drop_remainder(tmp_path):
    files = parquet_files(_write(tmp_path))
    ds = make_dataset(files, {"id": 0, "tags": 3, "x": 0}, 8, shuffle=False, drop_remainder=True)
    batches = list(ds)
    assert len(batches) == 3  # 30 rows -> 3 full batches of 8
    assert batches[0]["tags"].shape == (8, 3)
    assert batches[0]["id"].dtype.name == "int32" and batches[0]["x"].dtype.name == "float32"


def test_one_file_splits_across_workers_by_row_group(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    pq.write_table(pa.table({"id": np.arange(30)}), folder / "part-0.parquet", row_group_size=10)
    files = parquet_files(str(folder))
    assert len(files) == 1
    shards = [np.concatenate([b["id"] for b in iter_batches(files, {"id": 0}, 4, num_shards=2, shard_index=i)])
              for i in range(2)]
    # Row groups 0 and 2 go to worker 0, row group 1 to worker 1.
    assert sorted(shards[0].tolist()) == list(range(10)) + list(range(20, 30))
    assert sorted(shards[1].tolist()) == list(range(10, 20))


def test_repeat_reads_the_shard_again_with_a_new_shuffle(tmp_path):
    files = parquet_files(_write(tmp_path))
    ds = make_dataset(files, {"id": 0}, 10, shuffle=True, seed=3, repeat=True, drop_remainder=True)
    batches = [b["id"].numpy() for b in ds.take(6)]     # two passes over 30 rows
    first, second = np.concatenate(batches[:3]), np.concatenate(batches[3:])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(30))
    assert first.tolist() != second.tolist()
