"""One commit per night: every partition staged and validated first, then swapped in together.

Layout under the warehouse root (besides the tables themselves)::

    _staging/run=RUN/<table>/ds=…[/model=…]/     a run's complete partitions, before the commit
    _commits/ds=…/run=RUN.pending.json           the commit intent: every partition of the night
    _commits/ds=…/run=RUN.json, _commits/ds=….json  the commit record (that run's; the ds's latest)
    _latest/model=NAME.json, _latest/night.json  the pointers readers follow
    _versions/<table>/ds=…[/model=…]/<when>-run=OLD/   replaced copies, kept for ``keep_versions`` commits

The commit (``NightCommit.commit``), learning from table formats' immutable
versions and one atomic pointer, but keeping plain Parquet folders:

1. the intent is written: from here on the night will be completed, even
   after a kill (``recover``, which every nightrec command runs first);
2. each staged partition is swapped with the published one, the old copy
   kept under ``_versions`` (on a local disk one atomic exchange, so the
   partition is never missing; elsewhere two renames, and a kill between
   them is repaired by ``recover``); a rename never lands inside an
   existing folder (``Location.move_to`` refuses);
3. the commit record is written last, then the ``latest`` pointers move
   (forward only: a backfill of an older ds leaves them where they are).

A reader that follows a pointer or a commit record sees the tables of one
night; a reader of a partition folder that holds ``_SUCCESS`` sees a
complete partition.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from pyspark.sql import DataFrame

from jobs.run_catalogue import MANIFEST, SCHEMA_VERSION, SUCCESS_MARKER, Dataset, partition_location
from jobs.run_lock import LOCKS, RunLock, RunLockedError, read_holder
from jobs.storage import Location

STAGING, COMMITS, LATEST, VERSIONS = "_staging", "_commits", "_latest", "_versions"


class CommitError(RuntimeError):
    """The night could not be committed; the previously committed night is intact."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


@dataclasses.dataclass(frozen=True)
class StagedPartition:
    """One complete partition of a night, waiting for the commit.

    Attributes:
        table: the table name; keys: its partition keys below ds (e.g. (("model", "mf"),)).
        path: the published partition, relative to the warehouse root.
        manifest: the manifest written in it.
    """

    table: str
    keys: tuple[tuple[str, str], ...]
    path: str
    manifest: dict

    @property
    def name(self) -> str:
        """``table`` or ``table/value`` (``recommendations/two_tower``)."""
        return "/".join([self.table, *(v for _, v in self.keys)])


def commit_record(warehouse: Location, ds: dt.date | str) -> dict | None:
    """The latest commit record of ``ds``, or None when that night was never committed."""
    day = ds.isoformat() if isinstance(ds, dt.date) else ds
    loc = warehouse / COMMITS / f"ds={day}.json"
    return json.loads(loc.read_text()) if loc.is_file() else None


def is_committed(warehouse: Location, ds: dt.date | str) -> bool:
    """True when ``ds`` has a commit record and every partition it lists is in place, complete, of that run."""
    record = commit_record(warehouse, ds)
    if record is None:
        return False
    for part in record["partitions"]:
        final = warehouse / part["path"]
        if not (final / SUCCESS_MARKER).exists():
            return False
        if json.loads((final / MANIFEST).read_text()).get("run_id") != record["run_id"]:
            return False
    return True


def committed_nights(warehouse: Location) -> list[str]:
    """The ds (YYYY-MM-DD) of every committed night (``is_committed``), oldest first."""
    days = (name[len("ds="):-len(".json")] for name in (warehouse / COMMITS).names()
            if name.startswith("ds=") and name.endswith(".json"))
    return sorted(day for day in days if is_committed(warehouse, day))


def pointers(warehouse: Location) -> dict[str, dict]:
    """The ``latest`` pointers: {"night": …, "model=NAME": …} (each: ds, run_id, commit and partitions)."""
    folder = warehouse / LATEST
    return {loc.name[: -len(".json")]: json.loads(loc.read_text()) for loc in folder.list()
            if loc.name.endswith(".json")}


class NightCommit:
    """Stages the partitions of one night and commits them together.

    Args:
        warehouse: the warehouse root.
        ds: the night.
        run_id: the committing run (written in every manifest and in the record).
        keep_versions: replaced copies kept per partition (older ones are removed at commit).
        on_step: called with the name of each protocol step as it is reached (progress, fault tests).
    """

    def __init__(self, warehouse: Location, ds: dt.date, run_id: str, *, keep_versions: int = 3,
                 on_step: Callable[[str], None] = lambda step: None):
        self.warehouse, self.ds, self.run_id = warehouse, ds, run_id
        self.keep_versions, self.on_step = keep_versions, on_step
        self.staged: list[StagedPartition] = []

    @property
    def staging_root(self) -> Location:
        return self.warehouse / STAGING / f"run={self.run_id}"

    # -- staging ------------------------------------------------------------------------------------------
    def _stage(self, table: str, keys: Mapping[str, str], write: Callable[[Location], None],
               manifest: Mapping[str, Any]) -> StagedPartition:
        final = partition_location(self.warehouse, table, self.ds, **keys)
        rel = final.relative_to(self.warehouse)
        staged = self.staging_root / rel
        staged.delete()
        write(staged)
        staged.mkdirs()
        (staged / SUCCESS_MARKER).delete()  # Spark's own marker: ours goes last
        full = {"schema_version": SCHEMA_VERSION, **manifest, "table": table, **keys, "ds": self.ds.isoformat(),
                "run_id": self.run_id, "published_at": _now()}
        (staged / MANIFEST).write_text(_dump(full))
        (staged / SUCCESS_MARKER).write_text("")
        part = StagedPartition(table, tuple(keys.items()), rel, full)
        self.staged = [p for p in self.staged if p.path != rel] + [part]
        return part

    def staged_location(self, part: StagedPartition) -> Location:
        return self.staging_root / part.path

    def stage_dataframe(self, table: str, df: DataFrame, manifest: Mapping[str, Any], *,
                        sort_by: tuple[str, ...] = (), rows_per_file: int = 2_000_000,
                        side_files: Mapping[str, str] | None = None, **keys: str) -> StagedPartition:
        """Stage a DataFrame as the Parquet files of one partition.

        Adds ``row_count`` and ``columns`` to the manifest. Rows are range-
        partitioned and sorted by ``sort_by`` so that files are ordered.
        ``side_files`` ({name: text}) are written beside the data; name them
        with a leading ``_`` so that Parquet readers skip them.
        """
        df = df.cache()
        try:
            rows = df.count()
            n_files = max(1, -(-rows // rows_per_file))
            out = df.repartitionByRange(n_files, *sort_by).sortWithinPartitions(*sort_by) if sort_by \
                else df.coalesce(n_files)
            columns = [{"name": f.name, "type": f.dataType.simpleString()} for f in df.schema.fields]

            def write(staged: Location) -> None:
                out.write.mode("overwrite").parquet(staged.uri)
                for name, text in (side_files or {}).items():
                    (staged / name).write_text(text)

            return self._stage(table, keys, write, {**manifest, "row_count": rows, "columns": columns})
        finally:
            df.unpersist()

    def stage_dataset(self, table: str, dataset: Dataset, manifest: Mapping[str, Any], *,
                      beside: Mapping[str, Dataset] | None = None, **keys: str) -> StagedPartition:
        """Stage a complete folder dataset (a saved model) as one partition, files copied as they are;
        ``beside`` ({folder name: dataset}) adds other datasets as sub-folders (its embedding tables)."""
        for part in (dataset, *(beside or {}).values()):
            if not part.complete():
                raise CommitError(f"dataset '{part.name}' at {part.location.display()} is incomplete; "
                                  f"it cannot be published")

        def write(staged: Location) -> None:
            dataset.location.copy_to(staged)
            for name, part in (beside or {}).items():
                part.location.copy_to(staged / name)

        return self._stage(table, keys, write, manifest)

    def stage_files(self, table: str, write: Callable[[Location], Mapping[str, Any] | None],
                    manifest: Mapping[str, Any], **keys: str) -> StagedPartition:
        """Stage a partition whose files ``write(folder)`` writes itself (e.g. pyarrow writers in Spark tasks:
        ``jobs.embeddings.write_embedding_table``); the manifest is ``manifest`` and what ``write`` returns."""
        full = dict(manifest)

        def run(staged: Location) -> None:
            full.update(write(staged) or {})

        return self._stage(table, keys, run, full)

    def abort(self) -> None:
        """Remove everything staged (nothing was committed)."""
        self.staging_root.delete()

    # -- the commit ---------------------------------------------------------------------------------------
    def _intent(self) -> Location:
        return self.warehouse / COMMITS / f"ds={self.ds.isoformat()}" / f"run={self.run_id}.pending.json"

    def commit(self, facts: Mapping[str, Any]) -> dict:
        """Swap every staged partition in, then write the commit record and move the pointers.

        Args:
            facts: what the record says beside the partitions (config, versions, source fingerprint, …).

        Returns:
            The commit record.
        """
        if not self.staged:
            raise CommitError(f"nothing staged for ds={self.ds}")
        record = {**facts, "ds": self.ds.isoformat(), "run_id": self.run_id,
                  "partitions": [{"table": p.table, "keys": dict(p.keys), "path": p.path, "manifest": p.manifest}
                                 for p in self.staged]}
        self._intent().write_text(_dump(record))
        self.on_step("commit:intent-written")
        return _complete(self.warehouse, record, self.on_step, self.keep_versions)


def _version_folder(warehouse: Location, rel: str, run_id: str) -> Location:
    """Where a replaced copy is kept: named by when it was replaced (so names sort by age), then its run."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return warehouse / VERSIONS / rel / f"{stamp}-run={run_id}"


def _manifest_run(partition: Location) -> str | None:
    manifest = partition / MANIFEST
    return json.loads(manifest.read_text()).get("run_id") if manifest.is_file() else None


def _swap_in(warehouse: Location, rel: str, run_id: str, keep_versions: int,
             on_step: Callable[[str], None]) -> None:
    """Put run ``run_id``'s staged copy of partition ``rel`` in place (idempotent: a repeat is a no-op)."""
    final = warehouse / rel
    staged = warehouse / STAGING / f"run={run_id}" / rel
    if _manifest_run(final) == run_id:
        if staged.exists():  # swapped by an exchange: the old copy is still at the staged name
            old = _manifest_run(staged) or "unknown"
            staged.move_to(_version_folder(warehouse, rel, old))
        return
    if not staged.exists():
        raise CommitError(f"the staged copy of {rel} of run {run_id} is missing; it cannot be committed")
    if final.exists():
        old = _manifest_run(final) or "unknown"
        if staged.swap_with(final):  # one atomic exchange: the partition is never missing
            on_step("commit:swapped")
            staged.move_to(_version_folder(warehouse, rel, old))
        else:
            final.move_to(_version_folder(warehouse, rel, old))
            on_step("commit:between-renames")
            staged.move_to(final)
    else:
        staged.move_to(final)
    _prune_versions(warehouse, rel, keep_versions)


def _prune_versions(warehouse: Location, rel: str, keep: int) -> None:
    versions = sorted((warehouse / VERSIONS / rel).list(), key=lambda loc: loc.name, reverse=True)
    for old in versions[keep:]:
        old.delete()


def _complete(warehouse: Location, record: dict, on_step: Callable[[str], None], keep_versions: int) -> dict:
    """Steps 2-3 of the commit of ``record`` (also what ``recover`` runs for an interrupted one)."""
    for part in record["partitions"]:
        _swap_in(warehouse, part["path"], record["run_id"], keep_versions, on_step)
    on_step("commit:partitions-swapped")
    record = {**record, "committed_at": _now()}
    day = record["ds"]
    (warehouse / COMMITS / f"ds={day}" / f"run={record['run_id']}.json").write_text(_dump(record))
    (warehouse / COMMITS / f"ds={day}.json").write_text(_dump(record))
    on_step("commit:record-written")
    _move_pointers(warehouse, record)
    (warehouse / COMMITS / f"ds={day}" / f"run={record['run_id']}.pending.json").delete()
    (warehouse / STAGING / f"run={record['run_id']}").delete()
    return record


def _move_pointers(warehouse: Location, record: dict) -> None:
    """``_latest/night.json`` and one ``_latest/model=NAME.json`` per model of the night, forward only."""
    night_tables = {p["table"]: p["path"] for p in record["partitions"] if not p["keys"]}
    by_model: dict[str, dict[str, str]] = {}
    for p in record["partitions"]:
        if "model" in p["keys"]:
            by_model.setdefault(p["keys"]["model"], {})[p["table"]] = p["path"]
    base = {"ds": record["ds"], "run_id": record["run_id"],
            "commit": f"{COMMITS}/ds={record['ds']}/run={record['run_id']}.json"}
    with RunLock(warehouse, "pointers", record["run_id"], lease_s=60, wait_s=120):
        targets = {"night": night_tables, **{f"model={m}": {**night_tables, **t} for m, t in by_model.items()}}
        for name, partitions in targets.items():
            loc = warehouse / LATEST / f"{name}.json"
            current = json.loads(loc.read_text()) if loc.is_file() else None
            if current is None or current["ds"] <= record["ds"]:
                loc.write_text(_dump({**base, "partitions": partitions}))


def recover(warehouse: Location, log: Callable[[str], None] = print) -> list[str]:
    """Complete every interrupted commit of the warehouse (a run killed after writing its intent).

    Each night is recovered under its run lock; a commit whose run still holds the lock is live and
    left alone.

    Returns:
        The nights recovered, as "ds=… run=…".
    """
    done = []
    for day_folder in (warehouse / COMMITS).list():
        if not day_folder.is_dir():
            continue
        for intent in day_folder.list():
            if not intent.name.endswith(".pending.json"):
                continue
            record = json.loads(intent.read_text())
            try:
                with RunLock(warehouse, f"ds={record['ds']}", f"recovery-{os.getpid()}-{threading.get_ident()}",
                             lease_s=120, log=log):
                    if not intent.exists():
                        continue
                    _complete(warehouse, record, lambda step: None, keep_versions=3)
            except RunLockedError:
                continue  # the run is alive and committing
            message = f"ds={record['ds']} run={record['run_id']}"
            log(f"recovered the interrupted commit of {message}: its partitions are in place and committed")
            done.append(message)
    return done


def committed_partitions(warehouse: Location, model: str | None = None) -> dict[str, dict]:
    """The latest committed partition of each table (``nightrec tables``): {table: {ds, run_id, path}}."""
    out = {}
    for name, pointer in sorted(pointers(warehouse).items()):
        if model is not None and name not in ("night", f"model={model}"):
            continue
        for table, path in pointer["partitions"].items():
            key = table if "model=" not in path else f"{table}/{path.rsplit('model=', 1)[1]}"
            out[key] = {"ds": pointer["ds"], "run_id": pointer["run_id"], "path": path}
    return dict(sorted(out.items()))


def live_runs(warehouse: Location) -> set[str]:
    """Run ids that hold an unexpired run lock (their scratch and staging must be left alone)."""
    now = dt.datetime.now(dt.timezone.utc)
    holders = (read_holder(loc) for loc in (warehouse / LOCKS).list() if loc.name.endswith(".json"))
    return {h.run_id for h in holders if h is not None and not h.expired(now)}


def cleanup_staging(warehouse: Location, *, live: set[str], log: Callable[[str], None] = print) -> int:
    """Remove the staging folders of runs that are neither live nor committing; returns how many."""
    pending = {intent.name.split("run=", 1)[1][: -len(".pending.json")]
               for day in (warehouse / COMMITS).list() if day.is_dir()
               for intent in day.list() if intent.name.endswith(".pending.json")}
    removed = 0
    for folder in (warehouse / STAGING).list():
        run = folder.name.removeprefix("run=")
        if run not in live and run not in pending:
            folder.delete()
            removed += 1
    if removed:
        log(f"cleanup: removed the staging folders of {removed} finished or dead run(s)")
    return removed
