"""Process-wide resources of flows: the SparkSession, chosen once from the config."""

from __future__ import annotations

import os

from pyspark.sql import SparkSession

from flows.config import NightrecConfig
from jobs.session import build_spark


def spark_for(cfg: NightrecConfig) -> SparkSession:
    """The SparkSession for this config (built on first use, then reused)."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    scratch = os.path.abspath(os.path.join(cfg.warehouse, "_work", "spark")) if "://" not in cfg.warehouse else None
    return build_spark(
        master=cfg.spark.master,
        driver_memory=cfg.spark.driver_memory,
        shuffle_partitions=cfg.spark.shuffle_partitions,
        local_dir=os.path.join(scratch, "local") if scratch else None,
        checkpoint_dir=os.path.join(scratch, "checkpoints") if scratch else None,
        conf=cfg.spark.conf,
    )
