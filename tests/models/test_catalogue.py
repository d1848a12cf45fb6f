"""Side tables read through jobs.storage (local and mock://) and the negative sampler."""

import numpy as np
import pyarrow as pa
import pytest

from models.catalogue import NegativeSampler, read_side_table
from models.data import parquet_files
from tests.fixtures.models import write_table


@pytest.mark.parametrize("where", ["root", "mock_root"])
def test_side_table_of_two_files_is_sorted_by_id_and_keeps_each_ids_first_row(where, request):
    folder = request.getfixturevalue(where) / "items"
    spec = {"id": {"name": "item_idx"}, "multi_categorical": [{"name": "item_tags", "max_len": 2}],
            "continuous": ["item_x"]}
    tags = pa.list_(pa.int32())
    write_table(folder, pa.table({"item_id": pa.array([30, 10], pa.int64()), "item_idx": pa.array([4, 2], pa.int32()),
                                  "item_tags": pa.array([[3], [2, 3, 4]], tags), "item_x": [0.5, 1.5]}))
    write_table(folder / "sub", pa.table({"item_id": pa.array([20, 10], pa.int64()),
                                          "item_idx": pa.array([3, 9], pa.int32()),
                                          "item_tags": pa.array([None, [4]], tags), "item_x": [2.5, 9.0]}))
    second = folder / "sub" / "part-0.parquet"
    (folder / "_SUCCESS").write_text("")
    assert parquet_files(folder) == [folder / "part-0.parquet", second]
    table = read_side_table(folder, spec, "item_id")
    # ids ascending; id 10 appears twice (part-0 first): its part-0 row is kept.
    assert table.ids.to_pylist() == [10, 20, 30]
    np.testing.assert_array_equal(table.columns["item_idx"], [2, 3, 4])
    np.testing.assert_array_equal(table.columns["item_tags"], [[2, 3], [-1, -1], [3, -1]])   # cut to max_len 2
    np.testing.assert_allclose(table.columns["item_x"], [1.5, 2.5, 0.5])
    np.testing.assert_array_equal(table.positions(pa.array([30, 11, 10], pa.int64())), [2, -1, 0])


def test_side_table_refuses_null_ids_and_an_empty_folder(mock_root):
    folder = write_table(mock_root / "bad", pa.table({"item_id": pa.array([1, None], pa.int64()),
                                                      "item_idx": pa.array([2, 3], pa.int32())}))
    with pytest.raises(ValueError, match=r"mock:///.*/bad: column item_id has 1 null ids"):
        read_side_table(folder, {"id": {"name": "item_idx"}}, "item_id")
    (mock_root / "empty").mkdirs()
    with pytest.raises(FileNotFoundError, match=r"mock:///.*/empty: no Parquet files found"):
        read_side_table(mock_root / "empty", {"id": {"name": "item_idx"}}, "item_id")
    with pytest.raises(TypeError, match=r"must be a jobs.storage.Location, got str .*wrap a path or URI"):
        read_side_table(folder.uri, {"id": {"name": "item_idx"}}, "item_id")


def test_negative_sampler_follows_popularity_and_skips_untrained_items(root):
    items = pa.table({"item_id": np.arange(5, dtype=np.int64), "item_idx": np.array([1, 2, 3, 4, 5], np.int32)})
    catalogue = read_side_table(write_table(root / "c", items), {"id": {"name": "item_idx"}}, "item_id")
    counts = np.array([0, 0, 1, 3, 0, 6], np.float64)      # per item index; idx 1 is never a candidate
    sampler = NegativeSampler(catalogue, "item_idx", counts, mode="popularity", seed=4)
    _, idx = sampler.sample(20000, step=0)
    share = np.bincount(idx.numpy(), minlength=6) / 20000
    np.testing.assert_allclose(share, [0, 0, 0.1, 0.3, 0, 0.6], atol=0.015)
    _, again = sampler.sample(20000, step=0)
    assert np.array_equal(again.numpy(), idx.numpy())      # stateless: same step, same draw
    uniform = NegativeSampler(catalogue, "item_idx", counts, mode="uniform", seed=4)
    _, idx = uniform.sample(20000, step=1)
    np.testing.assert_allclose(np.bincount(idx.numpy(), minlength=6) / 20000, [0, 0, .25, .25, .25, .25],
                               atol=0.015)
