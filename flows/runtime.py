"""Process-wide resources of flows: the SparkSession, chosen once from the config."""

from __future__ import annotations

import os

from pyspark.sql import SparkSession

from flows.config import NightrecConfig
from jobs.session import build_spark
from jobs.storage import Location


def spark_for(cfg: NightrecConfig) -> SparkSession:
    """The SparkSession for this config (built on first use, then reused).

    On a local warehouse Spark's shuffle and checkpoint scratch lives under
    ``<warehouse>/_work/spark``; elsewhere Spark's own defaults apply.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    local = Location(cfg.warehouse).local_path
    scratch = os.path.join(local, "_work", "spark") if local else None
    return build_spark(
        **cfg.spark.model_dump(),
        local_dir=os.path.join(scratch, "local") if scratch else None,
        checkpoint_dir=os.path.join(scratch, "checkpoints") if scratch else None,
    )
