"""Settings of jobs.session.build_spark that scoring's speed depends on (the session fixture is built by it)."""

import glob

import pyarrow.parquet as pq


def test_arrow_batches_are_not_measured_row_by_row(spark):
    # Int.MaxValue switches off the per-row size check of the batches fed to Python workers.
    assert spark.conf.get("spark.sql.execution.arrow.maxBytesPerBatch") == str(2**31 - 1)


def test_score_columns_are_written_without_a_dictionary(spark, tmp_path):
    frame = spark.createDataFrame([(u, u % 3, u / 7.0) for u in range(200)], "user_id long, item_id long, score float")
    frame.coalesce(1).write.parquet(str(tmp_path / "recs"))
    (part,) = glob.glob(str(tmp_path / "recs" / "*.parquet"))
    chunks = pq.ParquetFile(part).metadata.row_group(0)
    encodings = {chunks.column(i).path_in_schema: chunks.column(i).encodings for i in range(chunks.num_columns)}
    assert "PLAIN_DICTIONARY" in encodings["item_id"]  # 3 distinct ids: the dictionary stays
    assert not any("DICTIONARY" in e for e in encodings["score"])
    assert pq.read_table(part).column("score").to_pylist()[7] == 1.0
