"""Operating nights: kills at every step of the commit, resume, the run lock, reruns, backfills.

The fault tests run ``nightrec nightly`` as a user would, in a process group of its own (the driver, its
Spark JVM and Python workers, Prefect's temporary server), stop it at a named step
(``NIGHTREC_PAUSE_AT``: the run prints "nightrec: paused at STEP" and waits) and SIGKILL the whole group.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pyarrow.dataset as pads
import pytest
import yaml

from jobs import commit
from jobs.run_lock import lock_location, read_holder
from jobs.storage import Location
from tests.fixtures.tiny_night import SMALL, run_nightly

D1, D2 = "2024-03-31", "2024-04-01"
TABLES = ("recommendations/ds={ds}/model=two_tower", "user_features/ds={ds}", "item_features/ds={ds}",
          "training_examples/ds={ds}", "metrics/ds={ds}", "quarantine/ds={ds}")


@pytest.fixture(scope="module")
def committed_d1(spark, prefect_server, tmp_path_factory):
    """A warehouse with night D1 committed (a template: tests copy it)."""
    warehouse = tmp_path_factory.mktemp("ops") / "wh"
    run_nightly({**SMALL, "warehouse": str(warehouse)}, D1)
    return warehouse


def _copy(template, tmp_path):
    warehouse = tmp_path / "wh"
    shutil.copytree(template, warehouse)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**SMALL, "warehouse": str(warehouse)}))
    return warehouse


#: Every Night started, so that a failing test still stops its runs (``stop_nights``).
STARTED: list = []


@pytest.fixture(autouse=True)
def stop_nights():
    yield
    while STARTED:
        night = STARTED.pop()
        if night.proc.poll() is None:
            night.kill()


class Night:
    """``nightrec nightly`` in its own process group, its stderr read line by line."""

    def __init__(self, tmp_path, ds, *extra, pause=None):
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"prefect-{time.monotonic_ns()}")}
        env.pop("PREFECT_API_URL", None)
        if pause:
            env["NIGHTREC_PAUSE_AT"] = pause
        self.proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "nightly", "--ds", ds, "--config",
                                      str(tmp_path / "c.yaml"), *extra], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        STARTED.append(self)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        self.out: list[str] = []
        self._readers = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=lambda: self.out.extend(self.proc.stdout), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text, timeout=600):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the run ended before '{text}':\n{''.join(self.seen[-40:])}")
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no '{text}' within {timeout}s")

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def finish(self, timeout=600):
        self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=60)
        while not self.lines.empty():
            line = self.lines.get()
            if line:
                self.seen.append(line)
        return self.proc.returncode, "".join(self.out), "".join(self.seen)


def _wait_for_lease_expiry(warehouse, ds, timeout=60):
    """The killed run's lock expires a lease (3 s in SMALL) after its last renewal."""
    loc = lock_location(Location(str(warehouse)), f"ds={ds}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = read_holder(loc)
        if holder is None or holder.expired(dt.datetime.now(dt.timezone.utc)):
            return holder
        time.sleep(0.2)
    raise AssertionError("the killed run's lease did not expire")


def _read_pointer_night(warehouse, model="two_tower"):
    """What a reader that follows the latest pointer reads: every table of that night, with pyarrow."""
    pointer = commit.pointers(Location(str(warehouse)))[f"model={model}"]
    tables = {}
    for table, path in pointer["partitions"].items():
        folder = warehouse / path
        assert (folder / "_SUCCESS").exists(), path
        assert json.loads((folder / "_manifest.json").read_text())["run_id"] == pointer["run_id"], path
        if table != "models":  # a folder of model files, not a Parquet table
            tables[table] = pads.dataset(str(folder), format="parquet").to_table()
    return pointer, tables


def _assert_d1_intact(warehouse, d1_run):
    pointer, tables = _read_pointer_night(warehouse)
    assert (pointer["ds"], pointer["run_id"]) == (D1, d1_run)
    assert tables["recommendations"].num_rows > 0


def _committed(warehouse, ds):
    return commit.commit_record(Location(str(warehouse)), ds)


def test_a_kill_during_training_leaves_the_last_night_and_the_rerun_reuses_what_finished(committed_d1, tmp_path):
    warehouse = _copy(committed_d1, tmp_path)
    d1_run = _committed(warehouse, D1)["run_id"]
    night = Night(tmp_path, D2, pause="train:epoch")
    night.wait_for("nightrec: paused at train:epoch")
    night.kill()
    _assert_d1_intact(warehouse, d1_run)
    assert not (warehouse / "recommendations" / f"ds={D2}").exists()
    holder = _wait_for_lease_expiry(warehouse, D2)
    code, _, err = Night(tmp_path, D2).finish()
    assert code == 0, err[-3000:]
    assert f"took over the lock of run {holder.run_id}" in err
    record = _committed(warehouse, D2)
    assert record["resumed_from"] == holder.run_id
    assert record["steps_reused"] == ["ingest", "split", "features:eval", "holdout_examples", "evaluate:baselines"]
    pointer, _ = _read_pointer_night(warehouse)
    assert pointer["ds"] == D2


def test_two_runs_of_one_ds_one_refuses_and_a_kill_while_staging_publishes_nothing(committed_d1, tmp_path):
    warehouse = _copy(committed_d1, tmp_path)
    d1_run = _committed(warehouse, D1)["run_id"]
    first = Night(tmp_path, D2, pause="publish:staging")
    first.wait_for("features[eval]: started")  # holds the lock by now
    code, _, err = Night(tmp_path, D2).finish()
    assert code == 3, err[-3000:]
    holder = read_holder(lock_location(Location(str(warehouse)), f"ds={D2}"))
    assert f"refused: another run holds the lock ds={D2}" in err
    assert f"run {holder.run_id} on host" in err and f"pid {holder.pid}" in err and "started" in err
    first.wait_for("nightrec: paused at publish:staging")
    first.kill()
    _assert_d1_intact(warehouse, d1_run)
    assert not (warehouse / "user_features" / f"ds={D2}").exists()  # staged, not published
    _wait_for_lease_expiry(warehouse, D2)
    code, _, err = Night(tmp_path, D2).finish()
    assert code == 0, err[-3000:]
    assert _committed(warehouse, D2)["steps_reused"] == [
        "ingest", "split", "features:eval", "holdout_examples", "evaluate:baselines", "train:two_tower:eval",
        "embed:two_tower:eval", "evaluate:two_tower", "score:two_tower"]
    staging = warehouse / "_staging"
    assert not staging.exists() or list(staging.iterdir()) == []  # the killed run's staging copy is cleaned


def _nightrec_tables(tmp_path):
    return subprocess.run([sys.executable, "-m", "flows.cli", "tables", "--config", str(tmp_path / "c.yaml"),
                           "--json"], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("step", ["commit:swapped", "commit:partitions-swapped"])
def test_a_kill_inside_the_commit_is_completed_by_the_next_command(committed_d1, tmp_path, step):
    """The rerun of D1 replaces its partitions: killed after the first swap (between the renames) or after
    every swap but before the commit record; any nightrec command then completes the commit."""
    warehouse = _copy(committed_d1, tmp_path)
    d1_run = _committed(warehouse, D1)["run_id"]
    night = Night(tmp_path, D1, pause=step)
    night.wait_for(f"nightrec: paused at {step}")
    night.kill()
    # every partition is readable right away: never missing, never doubled
    for table in TABLES:
        folder = warehouse / table.format(ds=D1)
        assert (folder / "_SUCCESS").exists(), table
        assert [p.name for p in folder.iterdir() if p.is_dir()] == [], table  # nothing nested inside
        pads.dataset(str(folder), format="parquet").to_table()
    assert _committed(warehouse, D1)["run_id"] == d1_run  # the record still names the last commit
    _wait_for_lease_expiry(warehouse, D1)  # until then the run might be alive and committing
    result = _nightrec_tables(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "recovered the interrupted commit of ds=" + D1 in result.stderr
    new_run = _committed(warehouse, D1)["run_id"]
    assert new_run != d1_run
    listed = json.loads(result.stdout)
    assert listed["recommendations/two_tower"]["run_id"] == new_run and listed["metrics"]["ds"] == D1
    pointer, tables = _read_pointer_night(warehouse)
    assert pointer["run_id"] == new_run
    # the replaced copies are kept as versions
    assert any(v.name.endswith(f"run={d1_run}") for v in (warehouse / "_versions" / "metrics" / f"ds={D1}").iterdir())


def test_the_same_ds_twice_gives_the_same_tables_and_manifests(committed_d1, tmp_path):
    before = tmp_path / "before"
    shutil.copytree(committed_d1, before)
    first = _committed(before, D1)
    run_nightly({**SMALL, "warehouse": str(committed_d1)}, D1)  # the same config, warehouse included
    assert _committed(committed_d1, D1)["run_id"] != first["run_id"]
    volatile = {"published_at", "run_id"}
    for table in TABLES:
        old, new = before / table.format(ds=D1), committed_d1 / table.format(ds=D1)
        a, b = pd.read_parquet(old), pd.read_parquet(new)
        assert list(a.columns) == list(b.columns), table
        key = [c for c in a.columns if a[c].map(lambda v: isinstance(v, (int, float, str))).all()]
        pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True),
                                      b.sort_values(key).reset_index(drop=True), obj=table)
        ma, mb = (json.loads((f / "_manifest.json").read_text()) for f in (old, new))
        assert {k: v for k, v in ma.items() if k not in volatile} == \
            {k: v for k, v in mb.items() if k not in volatile}, table


def test_a_backfill_starting_before_the_data_commits_the_later_dates_and_fails(spark, prefect_server, tmp_path, capsys):
    from flows import cli

    config = {**SMALL, "warehouse": str(tmp_path / "wh"), "split": {"holdout_days": 7},
              "source": {"synthetic": {**SMALL["source"]["synthetic"], "days": 14, "end_date": "2024-03-31"}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    args = ["backfill", "--start", "2024-03-24", "--end", "2024-03-25", "--config", str(tmp_path / "c.yaml"),
            "--max-concurrency", "2"]
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    # 14 days of events end on 2024-03-31: they start on 03-18, so a 7-day holdout through 03-24 leaves none
    assert "2024-03-24  failed" in out and "no training events before the holdout of 2024-03-24" in out
    assert "2024-03-25  committed" in out
    assert "2 dates: 1 committed, 0 skipped, 1 failed (2024-03-24)" in out
    assert commit.is_committed(Location(str(tmp_path / "wh")), "2024-03-25")
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    assert "2024-03-25  skipped" in out and "2 dates: 0 committed, 1 skipped, 1 failed (2024-03-24)" in out
