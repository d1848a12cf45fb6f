"""Scheduling for real: a Prefect server on 127.0.0.1, ``nightrec serve``, a process work pool and a worker,
``nightrec deploy``, and the backfill deployment run twice over three dates."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from jobs import commit
from jobs.storage import Location
from tests.fixtures.tiny_night import SMALL

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
NIGHTREC = [sys.executable, "-m", "flows.cli"]  # this checkout's command line (run from ROOT)
DATES = ("2024-03-29", "2024-03-30", "2024-03-31")
SCHEDULE = {"cron": "15 4 * * *", "timezone": "Europe/Berlin"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server of its own (own PREFECT_HOME and database) and the environment that points at it."""
    home = tmp_path_factory.mktemp("prefect-server")
    url = f"http://127.0.0.1:{_free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO"}
    port = url.rsplit(":", 1)[1].split("/")[0]
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "the Prefect server exited"
            assert time.monotonic() < deadline, "the Prefect server did not become healthy"
            time.sleep(0.5)
        yield url, env
    finally:
        _stop(proc)


def _client_call(url, fn):
    """Run ``fn(client)`` (async) against the server at ``url``."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def call():
        async with get_client() as client:
            return await fn(client)

    with temporary_settings(updates={PREFECT_API_URL: url}):
        return asyncio.run(call())


def _wait_for(predicate, what, timeout=600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _schedule_of(url, name):
    async def read(client):
        try:
            deployment = await client.read_deployment_by_name(name)
        except Exception:
            return None
        return deployment.schedules[0].schedule if deployment.schedules else None

    return _client_call(url, read)


def test_serve_deploy_and_the_backfill_deployment(server, tmp_path):
    url, env = server
    warehouse = tmp_path / "wh"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "warehouse": str(warehouse), "schedule": SCHEDULE}))

    # nightrec serve: the nightly flow on the configured schedule, served from this machine
    serving = subprocess.Popen([*NIGHTREC, "serve", "--config", str(config)], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        schedule = _wait_for(lambda: _schedule_of(url, "nightrec-nightly/nightly"), "the served deployment", 180)
        assert (schedule.cron, schedule.timezone) == (SCHEDULE["cron"], SCHEDULE["timezone"])
    finally:
        _stop(serving)

    # a process work pool, nightrec deploy, a worker
    subprocess.run([str(BIN / "prefect"), "work-pool", "create", "nightrec-test", "--type", "process"], env=env,
                   check=True, capture_output=True, timeout=120)
    deployed = subprocess.run([*NIGHTREC, "deploy", "--work-pool", "nightrec-test", "--config", str(config)],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    assert "deployment nightly:" in deployed.stdout and "deployment backfill:" in deployed.stdout
    schedule = _schedule_of(url, "nightrec-nightly/nightly")
    assert (schedule.cron, schedule.timezone) == (SCHEDULE["cron"], SCHEDULE["timezone"])
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "nightrec-test"], env=env,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        first = _run_backfill(url)
        assert first.state.is_completed(), first.state.message
        root = Location(str(warehouse))
        records = {ds: commit.commit_record(root, ds) for ds in DATES}
        assert all(r is not None and commit.is_committed(root, ds) for ds, r in records.items())
        nights = _nightly_runs(url)
        assert len(nights) == 3 and all(run.state.is_completed() for run in nights)
        second = _run_backfill(url)
        assert second.state.is_completed(), second.state.message
        assert len(_nightly_runs(url)) == 3  # all three dates were skipped: no new night ran
        assert {ds: commit.commit_record(root, ds)["run_id"] for ds in DATES} == \
            {ds: r["run_id"] for ds, r in records.items()}
    finally:
        _stop(worker)


def _run_backfill(url):
    async def run(client):
        deployment = await client.read_deployment_by_name("nightrec-backfill/backfill")
        created = await client.create_flow_run_from_deployment(
            deployment.id, parameters={"start": DATES[0], "end": DATES[-1]})
        return created.id

    run_id = _client_call(url, run)

    def finished():
        flow_run = _client_call(url, lambda client: client.read_flow_run(run_id))
        return flow_run if flow_run.state is not None and flow_run.state.is_final() else None

    return _wait_for(finished, "the backfill flow run", timeout=900)


def _nightly_runs(url):
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    runs = _client_call(url, lambda client: client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["nightrec-nightly"]))))
    # the nights the backfill ran are its subflow runs (the nightly deployment's scheduled runs are not)
    return [run for run in runs if run.parent_task_run_id is not None]
