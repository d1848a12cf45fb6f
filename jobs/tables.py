"""Warehouse layout and atomic, idempotent publishing.

This module is the only one that knows table paths. Layout under the
warehouse root (any URI Spark's Hadoop file system can write; a local folder
by default)::

    recommendations/ds=YYYY-MM-DD/model=NAME/part-*.parquet
    user_features/ds=YYYY-MM-DD/part-*.parquet
    item_features/ds=YYYY-MM-DD/part-*.parquet
    metrics/ds=YYYY-MM-DD/part-*.parquet
    quarantine/ds=YYYY-MM-DD/part-*.parquet
    models/ds=YYYY-MM-DD/model=NAME/{model.keras, feature_state.json, ...}
    _work/ds=YYYY-MM-DD/run=ID/...      intermediate data of one run
    _staging/, _trash/                  publishing scratch (never read)

Every published partition holds ``_manifest.json`` and then ``_SUCCESS``
(both start with '_' so that Spark, pyarrow, pandas and DuckDB globs over
``*.parquet`` skip them).

Publishing protocol (Spark's dynamic partition overwrite is neither atomic
nor marked): the new partition is written completely under ``_staging``,
manifest and marker last; then the old partition, if any, is renamed into
``_trash`` and the staged one renamed into place; then the trash is removed.
A crash before the swap leaves the old partition untouched; a crash between
the two renames is repaired by ``recover`` (the next publish of that
partition calls it), which puts the newest complete copy back.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from pyspark.sql import DataFrame, SparkSession

SUCCESS_MARKER = "_SUCCESS"
MANIFEST = "_manifest.json"
SCHEMA_VERSION = 1

TABLES = ("recommendations", "user_features", "item_features", "training_examples", "metrics", "quarantine", "models")


class PublishError(RuntimeError):
    """Publishing could not complete; the previously published data is intact."""


def partition_path(root: str, table: str, ds: str, **keys: str) -> str:
    """Path of one partition, e.g. ``root/recommendations/ds=…/model=…``."""
    if table not in TABLES:
        raise ValueError(f"unknown table '{table}', expected one of {', '.join(TABLES)}")
    parts = [root.rstrip("/"), table, f"ds={ds}"] + [f"{k}={v}" for k, v in keys.items()]
    return "/".join(parts)


def work_path(root: str, ds: str, run_id: str, name: str = "") -> str:
    """Scratch folder of one run (intermediate tables, never read downstream)."""
    base = f"{root.rstrip('/')}/_work/ds={ds}/run={run_id}"
    return f"{base}/{name}" if name else base


class Warehouse:
    """File operations on the warehouse through Spark's Hadoop FileSystem.

    Args:
        spark: the SparkSession (its Hadoop configuration picks the file system).
        root: the warehouse root URI or local folder.
    """

    def __init__(self, spark: SparkSession, root: str):
        self.spark = spark
        self.root = root.rstrip("/")
        jvm = spark.sparkContext._jvm
        self._Path = jvm.org.apache.hadoop.fs.Path
        hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
        self._fs = self._Path(self._qualify(self.root)).getFileSystem(hadoop_conf)

    @staticmethod
    def _qualify(path: str) -> str:
        if "://" in path or path.startswith("file:"):
            return path
        import os.path

        return "file://" + os.path.abspath(path)

    def _p(self, path: str):
        return self._Path(self._qualify(path))

    # -- plain file operations -------------------------------------------------
    def exists(self, path: str) -> bool:
        return bool(self._fs.exists(self._p(path)))

    def delete(self, path: str) -> None:
        if self.exists(path):
            self._fs.delete(self._p(path), True)

    def mkdirs(self, path: str) -> None:
        self._fs.mkdirs(self._p(path))

    def rename(self, src: str, dst: str) -> None:
        self.mkdirs(dst.rsplit("/", 1)[0])
        if not self._fs.rename(self._p(src), self._p(dst)):
            raise PublishError(f"could not rename {src} to {dst}")

    def write_text(self, path: str, text: str) -> None:
        stream = self._fs.create(self._p(path), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def read_text(self, path: str) -> str:
        jvm = self.spark.sparkContext._jvm
        stream = self._fs.open(self._p(path))
        try:
            return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
        finally:
            stream.close()

    def list_dir(self, path: str) -> list[str]:
        if not self.exists(path):
            return []
        return sorted(str(s.getPath().getName()) for s in self._fs.listStatus(self._p(path)))

    def copy_from_local(self, local_dir: str, dst: str) -> None:
        self._fs.copyFromLocalFile(False, True, self._Path("file://" + local_dir), self._p(dst))

    # -- publishing -------------------------------------------------------------
    def is_published(self, path: str) -> bool:
        """True when the partition at ``path`` carries its success marker."""
        return self.exists(f"{path}/{SUCCESS_MARKER}")

    def read_manifest(self, path: str) -> dict:
        if not self.is_published(path):
            raise FileNotFoundError(f"{path} is not a published partition (no {SUCCESS_MARKER})")
        return json.loads(self.read_text(f"{path}/{MANIFEST}"))

    def _scratch(self, kind: str, final: str) -> str:
        rel = final[len(self.root) + 1 :] if final.startswith(self.root + "/") else final.replace("/", "_")
        return f"{self.root}/{kind}/{rel}/{uuid.uuid4().hex}"

    def recover(self, final: str) -> None:
        """Repair a crash between the two renames of a publish of ``final``."""
        if self.is_published(final):
            return
        trash_dir = self._scratch("_trash", final).rsplit("/", 1)[0]
        for name in reversed(self.list_dir(trash_dir)):
            candidate = f"{trash_dir}/{name}"
            if self.is_published(candidate):
                self.delete(final)
                self.rename(candidate, final)
                return

    def publish(
        self,
        final: str,
        write: Callable[[str], Any],
        manifest: Mapping[str, Any],
    ) -> dict:
        """Write a partition with ``write(staging_path)`` and swap it in atomically.

        Args:
            final: the partition path (from ``partition_path``).
            write: writes the partition's data files into the folder it is given.
            manifest: JSON-serialisable facts about the partition; the schema
                version and publish time are added.

        Returns:
            The manifest as written.
        """
        self.recover(final)
        staging = self._scratch("_staging", final)
        try:
            write(staging)
            if not self.exists(staging):
                self.mkdirs(staging)
            self.delete(f"{staging}/{SUCCESS_MARKER}")  # Spark's own marker: ours goes last
            full = {
                "schema_version": SCHEMA_VERSION,
                **manifest,
                "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            }
            self.write_text(f"{staging}/{MANIFEST}", json.dumps(full, indent=2, sort_keys=True, default=str))
            self.write_text(f"{staging}/{SUCCESS_MARKER}", "")
        except Exception:
            self.delete(staging)
            raise
        trash = None
        if self.exists(final):
            trash = self._scratch("_trash", final)
            self.rename(final, trash)
        self.rename(staging, final)
        if trash:
            self.delete(trash)
        return full

    def publish_dataframe(
        self,
        df: DataFrame,
        final: str,
        manifest: Mapping[str, Any],
        *,
        sort_by: tuple[str, ...] = (),
        rows_per_file: int = 2_000_000,
        side_files: Mapping[str, str] | None = None,
    ) -> dict:
        """Publish a DataFrame as the Parquet files of one partition.

        Adds ``row_count`` and ``columns`` to the manifest. Rows are range-
        partitioned and sorted by ``sort_by`` so that files are ordered.
        ``side_files`` ({name: text}) are written beside the data; name them
        with a leading ``_`` so that Parquet readers skip them.
        """
        df = df.cache()
        rows = df.count()
        n_files = max(1, -(-rows // rows_per_file))
        out = df.repartitionByRange(n_files, *sort_by) if sort_by else df.coalesce(n_files)
        if sort_by:
            out = out.sortWithinPartitions(*sort_by)
        columns = [{"name": f.name, "type": f.dataType.simpleString()} for f in df.schema.fields]
        try:
            def write(path: str) -> None:
                out.write.mode("overwrite").parquet(path)
                for name, text in (side_files or {}).items():
                    self.write_text(f"{path}/{name}", text)

            return self.publish(final, write, {**manifest, "row_count": rows, "columns": columns})
        finally:
            df.unpersist()


class RunPaths:
    """Paths of one run for ``ds``: its scratch folders and published partitions.

    Args:
        root: warehouse root.
        ds: the run date, ``YYYY-MM-DD``.
        run_id: unique id of this run (scratch data of concurrent runs never mix).
    """

    def __init__(self, root: str, ds: str, run_id: str):
        self.root = root.rstrip("/")
        self.ds = ds
        self.run_id = run_id

    @property
    def work_root(self) -> str:
        return work_path(self.root, self.ds, self.run_id)

    def work(self, *names: str) -> str:
        """A scratch path of this run, e.g. ``work("eval", "examples")``."""
        return work_path(self.root, self.ds, self.run_id, "/".join(names))

    def partition(self, table: str, **keys: str) -> str:
        """The published partition of ``table`` for this run's ds."""
        return partition_path(self.root, table, self.ds, **keys)
