"""jobs.run_lock: one run per (warehouse, ds), a lease that a killed run cannot hold forever."""

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jobs.run_lock import RunLock, RunLockedError, lock_location, read_holder
from jobs.storage import Location


def test_a_second_run_refuses_at_once_naming_the_holder(tmp_path):
    wh = Location(str(tmp_path))
    with RunLock(wh, "ds=2024-06-30", "run-a"):
        with pytest.raises(RunLockedError) as err:
            RunLock(wh, "ds=2024-06-30", "run-b").acquire()
        message = str(err.value)
        assert "run run-a on host" in message and f"pid {os.getpid()}" in message and "started" in message
        assert err.value.holder.run_id == "run-a"
        with RunLock(wh, "ds=2024-07-01", "run-c"):  # another ds is not blocked
            pass
    # released: the next run takes it
    with RunLock(wh, "ds=2024-06-30", "run-b") as lock:
        assert read_holder(lock.location).run_id == "run-b" and lock.took_over is None
    assert not lock_location(wh, "ds=2024-06-30").exists()


def test_a_stale_lock_is_taken_over_with_a_log_line(tmp_path):
    wh = Location(str(tmp_path))
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)).isoformat(timespec="seconds")
    lock_location(wh, "ds=2024-06-30").write_text(json.dumps({
        "name": "ds=2024-06-30", "run_id": "dead-run", "host": "elsewhere", "pid": 99999,
        "started_at": past, "expires_at": past}))
    lines = []
    with RunLock(wh, "ds=2024-06-30", "new-run", log=lines.append) as lock:
        assert lock.took_over.run_id == "dead-run"
        assert read_holder(lock.location).run_id == "new-run"
    assert len(lines) == 1 and "took over the lock of run dead-run on host elsewhere" in lines[0]
    assert [n for n in lock_location(wh, "x").parent.names() if n.startswith(".")] == []  # no stale copy left


def test_the_lease_is_renewed_while_the_run_lives(tmp_path):
    wh = Location(str(tmp_path))
    with RunLock(wh, "ds=1", "r", lease_s=0.6) as lock:
        first = read_holder(lock.location).expires_at
        deadline = time.monotonic() + 10
        while read_holder(lock.location).expires_at == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert read_holder(lock.location).expires_at > first
        # a live lock is never taken over, even after the first lease would have run out
        with pytest.raises(RunLockedError):
            RunLock(wh, "ds=1", "other").acquire()


def test_a_killed_holders_lock_expires_and_is_taken_over(tmp_path):
    holder = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from jobs.run_lock import RunLock
        from jobs.storage import Location
        RunLock(Location({str(tmp_path)!r}), "ds=1", "killed-run", lease_s=1.0).acquire()
        print("locked", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        wh = Location(str(tmp_path))
        with pytest.raises(RunLockedError, match="killed-run"):
            RunLock(wh, "ds=1", "next").acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        lines = []
        # the lease runs out about a second after the last renewal: wait for that, then the lock is free
        with RunLock(wh, "ds=1", "next", wait_s=30, log=lines.append) as lock:
            assert lock.took_over.run_id == "killed-run"
        assert "took over the lock of run killed-run" in lines[0]
    finally:
        proc.kill()
        proc.wait()


def test_of_many_runs_racing_for_a_stale_lock_one_wins(tmp_path):
    import concurrent.futures

    wh = Location(str(tmp_path))
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)).isoformat(timespec="seconds")
    lock_location(wh, "ds=1").write_text(json.dumps({
        "name": "ds=1", "run_id": "dead", "host": "h", "pid": 1, "started_at": past, "expires_at": past}))

    def attempt(n):
        try:
            return RunLock(wh, "ds=1", f"r{n}").acquire()
        except RunLockedError:
            return None

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = [lock for lock in pool.map(attempt, range(6)) if lock is not None]
    try:
        assert len(got) == 1
        assert read_holder(lock_location(wh, "ds=1")).run_id == got[0].run_id
    finally:
        for lock in got:
            lock.release()
