import json
import os

import pandas as pd
import pytest

from jobs import tables


def test_partition_paths():
    assert tables.partition_path("/w", "recommendations", "2024-01-02", model="mf") == \
        "/w/recommendations/ds=2024-01-02/model=mf"
    with pytest.raises(ValueError, match="unknown table 'recs'"):
        tables.partition_path("/w", "recs", "2024-01-02")


def test_publish_writes_data_then_manifest_and_marker(spark, tmp_path):
    wh = tables.Warehouse(spark, str(tmp_path))
    final = tables.partition_path(str(tmp_path), "metrics", "2024-01-02")
    df = spark.createDataFrame([(1, "a"), (2, "b"), (3, "c")], "n int, s string")
    manifest = wh.publish_dataframe(df, final, {"model": "x"}, sort_by=("n",))
    assert manifest["row_count"] == 3 and manifest["model"] == "x"
    names = os.listdir(final)
    assert tables.SUCCESS_MARKER in names and tables.MANIFEST in names
    on_disk = json.loads(open(os.path.join(final, tables.MANIFEST)).read())
    assert on_disk["row_count"] == 3 and on_disk["schema_version"] == tables.SCHEMA_VERSION
    # Plain readers see only the data files.
    assert sorted(pd.read_parquet(final).n) == [1, 2, 3]
    assert not os.listdir(os.path.join(str(tmp_path), "_staging", "metrics", "ds=2024-01-02"))


def test_republish_replaces_and_failed_publish_keeps_old(spark, tmp_path):
    wh = tables.Warehouse(spark, str(tmp_path))
    final = tables.partition_path(str(tmp_path), "metrics", "2024-01-02")
    wh.publish_dataframe(spark.createDataFrame([(1,)], "n int"), final, {})
    wh.publish_dataframe(spark.createDataFrame([(7,), (8,)], "n int"), final, {})
    assert sorted(pd.read_parquet(final).n) == [7, 8]

    def crash(path):
        spark.createDataFrame([(99,)], "n int").write.parquet(path)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        wh.publish(final, crash, {})
    assert sorted(pd.read_parquet(final).n) == [7, 8]
    assert wh.is_published(final)


def test_recover_restores_partition_after_crash_between_renames(spark, tmp_path):
    wh = tables.Warehouse(spark, str(tmp_path))
    final = tables.partition_path(str(tmp_path), "metrics", "2024-01-02")
    wh.publish_dataframe(spark.createDataFrame([(5,)], "n int"), final, {})
    # Simulate a crash after the old partition was moved to the trash.
    trash = wh._scratch("_trash", final)
    wh.rename(final, trash)
    assert not wh.is_published(final)
    wh.recover(final)
    assert wh.is_published(final)
    assert pd.read_parquet(final).n.tolist() == [5]


def test_read_manifest_refuses_unpublished(spark, tmp_path):
    wh = tables.Warehouse(spark, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a published partition"):
        wh.read_manifest(str(tmp_path / "metrics" / "ds=2024-01-01"))
