"""The record of a night's attempts, and the reuse of the steps an earlier attempt finished.

``_work/ds=…/run=WORK/_run.json`` (beside the work folder's datasets) says
what the attempts ran on (the fingerprint: config hash, source fingerprint,
nightrec version), how each attempt ended, and the result of every step that
completed. A new attempt for the same ds whose fingerprint matches an
unfinished work folder continues in it: a finished step is not run again,
its recorded result is returned (``RunRecord.step``) and the summary lists
it as reused. ``fresh`` starts a new work folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from jobs.run_catalogue import Dataset, RunCatalogue
from jobs.storage import Location

RECORD = "_run.json"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _encode(result: Any) -> Any:
    if result is None:
        return None
    if isinstance(result, Dataset):
        return {"dataset": result.name}
    return {"value": result.to_record()}


def _decode(data: Any, kind: type | None, cat: RunCatalogue) -> Any:
    if data is None:
        return None
    if "dataset" in data:
        return cat.dataset(data["dataset"])
    return kind.from_record(data["value"], cat)


def _complete(result: Any) -> bool:
    """Whether the datasets a recorded result names are still complete (else the step runs again)."""
    datasets = [result] if isinstance(result, Dataset) else \
        [v for v in vars(result).values() if isinstance(v, Dataset)] if result is not None else []
    return all(d.complete() for d in datasets)


class RunRecord:
    """One work folder's record; the driver is its only writer (under the ds's run lock).

    Use ``RunRecord.open``.
    """

    def __init__(self, location: Location, data: dict, run_id: str, log: Callable[[str], None]):
        self.location, self.data, self.run_id, self.log = location, data, run_id, log
        self.reused: list[str] = []

    @property
    def work_id(self) -> str:
        return self.data["work_id"]

    @classmethod
    def open(cls, warehouse: Location, ds: dt.date, run_id: str, fingerprint: dict, *, fresh: bool = False,
             log: Callable[[str], None] = print) -> "RunRecord":
        """The record this attempt writes to: an unfinished work folder of ``ds`` with the same fingerprint
        (the newest), or a new one named after ``run_id``."""
        day = warehouse / "_work" / f"ds={ds.isoformat()}"
        if not fresh:
            candidates = []
            for folder in day.list():
                loc = folder / RECORD
                if folder.name.startswith("run=") and loc.is_file():
                    data = json.loads(loc.read_text())
                    if data.get("fingerprint") == fingerprint and data["attempts"][-1]["status"] != "succeeded":
                        candidates.append((data["attempts"][-1]["started_at"], loc, data))
            if candidates:
                _, loc, data = max(candidates, key=lambda c: c[0])
                record = cls(loc, data, run_id, log)
                record._attempt()
                last = data["attempts"][-2]
                log(f"resuming the work of run {last['run_id']} ({last['status']}): {len(data['steps'])} "
                    f"finished step(s) are reused")
                return record
        loc = day / f"run={run_id}" / RECORD
        record = cls(loc, {"ds": ds.isoformat(), "work_id": run_id, "fingerprint": fingerprint, "attempts": [],
                           "steps": {}}, run_id, log)
        record._attempt()
        return record

    def _attempt(self) -> None:
        self.data["attempts"].append({"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                                      "started_at": _now(), "status": "running"})
        self._save()

    def _save(self) -> None:
        self.location.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=str))

    def step(self, name: str, kind: type | None, compute: Callable[[], Any], cat: RunCatalogue) -> Any:
        """The result of step ``name``: recorded by an earlier attempt (and its datasets still complete), or
        ``compute()``d now and recorded.

        Args:
            kind: the result's dataclass (with ``to_record`` / ``from_record``); None for a ``Dataset`` result.
        """
        done = self.data["steps"].get(name)
        if done is not None:
            result = _decode(done["result"], kind, cat)
            if _complete(result):
                self.reused.append(name)
                self.log(f"{name}: reused from run {done['run_id']}")
                return result
        start = time.perf_counter()
        result = compute()
        self.data["steps"][name] = {"run_id": self.run_id, "seconds": round(time.perf_counter() - start, 1),
                                    "finished_at": _now(), "result": _encode(result)}
        self._save()
        return result

    def finish(self, status: str, error: str | None = None) -> None:
        """Record how this attempt ended ("succeeded" or "failed")."""
        attempt = self.data["attempts"][-1]
        attempt.update({"status": status, "finished_at": _now()})
        if error:
            attempt["error"] = error[:2000]
        self._save()

    @property
    def resumed_from(self) -> str | None:
        """The run whose work this attempt continued (None for a first attempt)."""
        return self.data["attempts"][0]["run_id"] if len(self.data["attempts"]) > 1 else None


def stale_work(warehouse: Location, *, keep_days: float, live_runs: set[str]) -> list[Location]:
    """Work folders nobody will resume: unfinished (failed or killed) ones superseded by a later success of
    their ds or older than ``keep_days``, and not of a live run. (A succeeded run removes its own folder
    unless ``keep_work_dir``; then it is the user's.)"""
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=keep_days)
    stale = []
    for day in (warehouse / "_work").list():
        if not day.name.startswith("ds="):
            continue
        records = []
        for folder in day.list():
            loc = folder / RECORD
            data = json.loads(loc.read_text()) if loc.is_file() else None
            records.append((folder, data))
        succeeded = [d["attempts"][-1]["started_at"] for _, d in records
                     if d and d["attempts"][-1]["status"] == "succeeded"]
        last_success = max(succeeded, default=None)
        for folder, data in records:
            runs = {a["run_id"] for a in data["attempts"]} if data else {folder.name.removeprefix("run=")}
            if runs & live_runs or (data and data["attempts"][-1]["status"] == "succeeded"):
                continue
            started = data["attempts"][-1]["started_at"] if data else None
            if data is None or (last_success and started <= last_success) or \
                    dt.datetime.fromisoformat(started) < cutoff:
                stale.append(folder)
    return stale
