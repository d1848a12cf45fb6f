"""One run per (warehouse, ds): a lease kept in the warehouse, without a Prefect server.

The lock is a small JSON file ``_locks/<name>.json`` naming its holder (run
id, host, pid, start time) and when its lease expires. It is created
exclusively (``Location.create_exclusive``: atomic on a local disk or HDFS
folder shared by the runs); a background thread renews the lease while the
run lives. A second run refuses at once with the holder's details; a lock
whose lease has expired (its run was killed) is taken over, and the take-over
is logged. Taking over renames the stale file to a fresh name first, so of
two runs that find the same stale lock only one takes it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable

from jobs.storage import Location, StorageError

LOCKS = "_locks"


class RunLockedError(RuntimeError):
    """Another live run holds the lock; the message names it."""

    def __init__(self, message: str, holder: "LockHolder"):
        super().__init__(message)
        self.holder = holder


@dataclasses.dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, and until when (UTC, ISO 8601)."""

    name: str
    run_id: str
    host: str
    pid: int
    started_at: str
    expires_at: str

    def expired(self, now: dt.datetime) -> bool:
        return dt.datetime.fromisoformat(self.expires_at) <= now

    def describe(self) -> str:
        return (f"run {self.run_id} on host {self.host}, pid {self.pid}, started {self.started_at}, "
                f"lease until {self.expires_at}")


#: What ``_try_once`` returns while another run is between its take-over rename and its create.
_BUSY = LockHolder("?", "?", "?", 0, "?", "?")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def lock_location(warehouse: Location, name: str) -> Location:
    """Where the lock called ``name`` (e.g. ``ds=2024-06-30``) lives."""
    return warehouse / LOCKS / f"{name}.json"


def read_holder(location: Location) -> LockHolder | None:
    """The holder written in a lock file, or None when there is none (or it is being replaced)."""
    try:
        return LockHolder(**json.loads(location.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


class RunLock:
    """A lease on ``_locks/<name>.json``; use as a context manager, or ``acquire`` / ``release``.

    Args:
        warehouse: the warehouse root.
        name: what is locked, e.g. ``ds=2024-06-30`` (one run per ds) or ``pointers``.
        run_id: the holder's run id (written in the lock).
        lease_s: how long a lease lasts without renewal; a killed run's lock is free after it.
        wait_s: how long ``acquire`` waits for a live holder to let go (0: refuse at once).
        log: receives a line when a stale lock is taken over (default: stderr).
    """

    def __init__(self, warehouse: Location, name: str, run_id: str, *, lease_s: float = 120.0,
                 wait_s: float = 0.0, log: Callable[[str], None] | None = None):
        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        self.location = lock_location(warehouse, name)
        self.name, self.run_id, self.lease_s, self.wait_s = name, run_id, lease_s, wait_s
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.started_at = _now().isoformat(timespec="seconds")
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.took_over: LockHolder | None = None

    def _holder(self) -> LockHolder:
        return LockHolder(name=self.name, run_id=self.run_id, host=socket.gethostname(), pid=os.getpid(),
                          started_at=self.started_at,
                          expires_at=(_now() + dt.timedelta(seconds=self.lease_s)).isoformat(timespec="seconds"))

    def _text(self) -> str:
        return json.dumps(dataclasses.asdict(self._holder()), indent=2)

    def _try_once(self) -> LockHolder | None:
        """Take the lock if free or stale: None on success, else the live holder."""
        if self.location.create_exclusive(self._text()):
            return None
        holder = read_holder(self.location)
        if holder is None:  # between another run's take-over rename and its create
            return _BUSY
        if not holder.expired(_now()):
            return holder
        stale = self.location.parent / f".{self.location.name}.stale-{uuid.uuid4().hex}"
        try:
            self.location.move_to(stale)
        except StorageError:  # another run took it over first
            return read_holder(self.location) or holder
        stale.delete()
        if not self.location.create_exclusive(self._text()):
            return read_holder(self.location) or holder
        self.took_over = holder
        self.log(f"lock {self.name}: took over the lock of {holder.describe()}: its lease expired "
                 f"(the run was killed or lost)")
        return None

    def acquire(self) -> "RunLock":
        """Take the lock (waiting up to ``wait_s`` for a live holder), then renew it in the background.

        Raises:
            RunLockedError: a live run holds it.
        """
        deadline = time.monotonic() + self.wait_s
        busy = 0
        while True:
            holder = self._try_once()
            if holder is None:
                break
            if holder is _BUSY and busy < 50:  # another run is mid take-over: look again shortly
                busy += 1
                time.sleep(0.02)
                continue
            if time.monotonic() >= deadline:
                raise RunLockedError(
                    f"another run holds the lock {self.name} of {self.location.parent.parent.display()}: "
                    f"{holder.describe()}. Wait for it to finish; if it was killed, its lock is taken over "
                    f"once the lease has expired.", holder)
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name=f"lease {self.name}", daemon=True)
        self._renewer.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            holder = read_holder(self.location)
            if holder is None or holder.run_id != self.run_id:
                return  # taken over after our lease expired (this process stalled): stop renewing
            self.location.write_text(self._text())

    def release(self) -> None:
        """Stop renewing and remove the lock if it is still ours."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        holder = read_holder(self.location)
        if holder is not None and holder.run_id == self.run_id:
            self.location.delete()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
