"""Parquet -> batches and tf.data, read through jobs.storage (local folders and mock://)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.data import count_rows, iter_batches, make_dataset, parquet_files, row_group_units
from tests.fixtures.models import write_table


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


def _reference_batches(files, columns, batch_size, *, seed, pool_rows, num_shards=1, shard_index=0,
                       drop_remainder=False):
    """The shuffled batches ``iter_batches`` must yield, written out plainly: the shard's units in a seeded
    order, each row group read as record batches of at most 8192 rows, converted one by one; when the pool
    holds ``pool_rows`` rows, its rows in one seeded order are batched, all but ``pool_rows // 2`` of them."""
    rng = np.random.default_rng(seed)
    units = [(f, g) for f in files for g in range(pq.ParquetFile(f.local_path).num_row_groups)][shard_index::num_shards]
    units = [units[i] for i in rng.permutation(len(units))]
    pool, out = [], []

    def rows_of(table):
        got = {}
        for name, pad in columns.items():
            column = table.column(name).to_pylist()
            got[name] = (np.array([([*v, *[-1] * pad])[:pad] for v in column], np.int32) if pad
                         else np.array(column))
        return [{n: got[n][i] for n in columns} for i in range(table.num_rows)]

    def drain(final):
        nonlocal pool
        order = rng.permutation(len(pool))
        keep = 0 if final else pool_rows // 2
        n_full = max(0, len(pool) - keep) // batch_size
        for b in range(n_full):
            out.append([pool[i] for i in order[b * batch_size:(b + 1) * batch_size]])
        rest = [pool[i] for i in order[n_full * batch_size:]]
        pool = []
        if rest and final and not drop_remainder:
            out.append(rest)
        elif rest and not final:
            pool = rest

    for f, g in units:
        for record_batch in pq.ParquetFile(f.local_path).read_row_group(g).to_batches(max_chunksize=8192):
            pool.extend(rows_of(record_batch))
            if len(pool) >= pool_rows:
                drain(False)
    if pool:
        drain(True)
    return [{n: np.stack([r[n] for r in batch]) for n in columns} for batch in out]


@pytest.mark.parametrize("batch_size, pool_rows, shards, drop", [(1000, 5000, 1, False), (512, 20000, 2, True),
                                                                 (3000, 65536, 3, False)])
def test_batches_are_pinned_to_the_plain_pool_algorithm(root, batch_size, pool_rows, shards, drop):
    # Row groups of 20,000 rows are read as record batches of 8192, 8192 and 3616 rows: the pool drains inside them.
    rng = np.random.default_rng(0)
    for f, rows in enumerate((45_000, 12_000)):
        table = pa.table({"id": np.arange(rows, dtype=np.int64) + 100_000 * f,
                          "tags": pa.array([list(range(int(k) % 4)) for k in rng.integers(0, 4, rows)],
                                           pa.list_(pa.int32())),
                          "x": rng.normal(size=rows)})
        write_table(root / "t" / f"f{f}", table, row_group_size=20_000)
    files = parquet_files(root / "t")
    columns = {"id": 0, "tags": 2, "x": 0}
    for index in range(shards):
        expected = _reference_batches(files, columns, batch_size, seed=11, pool_rows=pool_rows, num_shards=shards,
                                      shard_index=index, drop_remainder=drop)
        got = list(iter_batches(files, columns, batch_size, seed=11, pool_rows=pool_rows, num_shards=shards,
                                shard_index=index, drop_remainder=drop))
        assert len(got) == len(expected) > 0
        for g, e in zip(got, expected):
            for name in columns:
                np.testing.assert_array_equal(g[name], e[name])
    # make_dataset hands over the same batches (stacked 16 at a time, split again inside tf.data), in model dtypes
    expected = _reference_batches(files, columns, batch_size, seed=11, pool_rows=65536, drop_remainder=drop)
    got = list(make_dataset(files, columns, batch_size, seed=11, drop_remainder=drop).as_numpy_iterator())
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g["id"].dtype == np.int32 and g["x"].dtype == np.float32 and g["tags"].dtype == np.int32
        np.testing.assert_array_equal(g["id"], e["id"])
        np.testing.assert_array_equal(g["tags"], e["tags"])
        np.testing.assert_array_equal(g["x"], e["x"].astype(np.float32))
