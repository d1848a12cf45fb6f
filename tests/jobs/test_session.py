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


def test_executors_run_the_archives_python_when_an_environment_archive_is_shipped():
    from jobs.session import ARCHIVE_PYTHON, executor_interpreter

    assert executor_interpreter({}, "/venv/bin/python") == "/venv/bin/python"
    assert executor_interpreter({"spark.archives": "hdfs:///envs/nightrec-env.tar.gz#environment"},
                                "/venv/bin/python") == ARCHIVE_PYTHON == "./environment/bin/python"
    assert executor_interpreter({"spark.archives": "env.tar.gz#env",
                                 "spark.executorEnv.PYSPARK_PYTHON": "./env/bin/python"}, "/venv/bin/python") == "./env/bin/python"
    # a container image with its own interpreter, no archive
    assert executor_interpreter({"spark.executorEnv.PYSPARK_PYTHON": "/opt/py/bin/python"}, "/venv/bin/python") == "/opt/py/bin/python"
