"""The one place a SparkSession is built.

Everything else in ``jobs/`` takes a session or DataFrames as arguments.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from pyspark.sql import SparkSession

#: The driver JVM's logging: warnings and errors, without Spark's start-up notes.
LOG4J2_PROPERTIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2.properties")

#: Where the executors' interpreter is inside an environment archive shipped as ``...#environment``.
ARCHIVE_PYTHON = "./environment/bin/python"

# Settings every nightrec session needs, whatever the master.
_BASE_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.sources.partitionOverwriteMode": "static",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
    "spark.python.worker.reuse": "true",
    # Below Int.MaxValue (Spark 4.3 defaults to 64 MiB), the JVM measures the Arrow
    # batch it feeds a Python worker after every row, and for array columns that walks
    # every list offset so far: a third of the JVM's time in exhaustive scoring.
    # Batches stay bounded by spark.sql.execution.arrow.maxRecordsPerBatch.
    "spark.sql.execution.arrow.maxBytesPerBatch": str(2**31 - 1),
    # Recommendation scores are distinct floats: Parquet's dictionary encoding of a
    # `score` column hashes every value and then falls back to plain anyway (same
    # file size; a quarter of the time spent writing a recommendations table).
    "spark.hadoop.parquet.enable.dictionary#score": "false",
}


def build_spark(
    *,
    master: str = "local[*]",
    app_name: str = "nightrec",
    driver_memory: str = "4g",
    shuffle_partitions: int = 8,
    local_dir: str | None = None,
    checkpoint_dir: str | None = None,
    conf: Mapping[str, str] | None = None,
    python: str | None = None,
) -> SparkSession:
    """Build (or return the running) SparkSession with nightrec's settings.

    Args:
        master: Spark master URL, ``local[*]`` or ``spark://host:7077``.
        app_name: application name shown in the Spark UI and logs.
        driver_memory: JVM heap of the driver, e.g. ``"4g"``.
        shuffle_partitions: ``spark.sql.shuffle.partitions``.
        local_dir: scratch directory for shuffle files (``spark.local.dir``).
        checkpoint_dir: directory for RDD checkpoints (needed by long ALS runs).
        conf: extra Spark settings; they win over the defaults above.
        python: interpreter of the Python workers (default: this one). With an environment archive
            in ``conf`` (``spark.archives``, see ``jobs.pack``) the executors' interpreter is the
            archive's, ``spark.executorEnv.PYSPARK_PYTHON`` of ``conf`` (default
            ``./environment/bin/python``), and ``python`` is only the driver's.

    Returns:
        The active SparkSession.
    """
    python = python or sys.executable
    conf = dict(conf or {})
    executor_python = executor_interpreter(conf, python)
    # PySpark reads PYSPARK_PYTHON when it starts Python workers: the driver's own (local mode) or,
    # on a cluster, what each executor should run.
    os.environ["PYSPARK_PYTHON"] = executor_python
    if master.startswith("local"):
        # everything runs on this machine: bind to loopback (no "hostname resolves to a loopback address")
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    java_options = f"-Dlog4j2.configurationFile=file:{LOG4J2_PROPERTIES}"
    conf["spark.driver.extraJavaOptions"] = f"{java_options} {conf.get('spark.driver.extraJavaOptions', '')}".strip()
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.pyspark.driver.python", python)
        .config("spark.executorEnv.PYSPARK_PYTHON", executor_python)
    )
    if executor_python == python:
        builder = builder.config("spark.pyspark.python", python)
    for key, value in _BASE_CONF.items():
        builder = builder.config(key, value)
    if local_dir:
        os.makedirs(local_dir, exist_ok=True)
        builder = builder.config("spark.local.dir", local_dir)
    for key, value in conf.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    if checkpoint_dir:
        spark.sparkContext.setCheckpointDir(checkpoint_dir)
    return spark


def executor_interpreter(conf: Mapping[str, str], driver_python: str) -> str:
    """The Python the executors run: the driver's own, unless ``conf`` ships an environment archive.

    With ``spark.archives`` set (a packed environment, ``jobs.pack.pack_environment``), the
    executors run the archive's interpreter: ``spark.executorEnv.PYSPARK_PYTHON`` when ``conf``
    sets it, else ``./environment/bin/python`` (the archive unpacked as ``#environment``).
    """
    if conf.get("spark.archives"):
        return conf.get("spark.executorEnv.PYSPARK_PYTHON") or ARCHIVE_PYTHON
    return conf.get("spark.executorEnv.PYSPARK_PYTHON") or driver_python
