"""Scheduling: ``nightrec serve`` (one machine, no server to set up) and ``nightrec deploy`` (a Prefect
server with a process work pool and workers).

Both register the nightly flow on the config's schedule (``schedule.cron``
in ``schedule.timezone``; a scheduled run's ds is the previous day in that
timezone) with the effective config as its parameter; ``deploy`` also
registers the backfill flow, to run from the UI or ``prefect deployment run``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from flows.config import NightrecConfig

NIGHTLY, BACKFILL = "nightly", "backfill"
#: The folder the deployments load the flows from (this source tree, as installed).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _schedule(cfg: NightrecConfig):
    from prefect.schedules import Cron

    return Cron(cfg.schedule.cron, timezone=cfg.schedule.timezone)


def _parameters(cfg: NightrecConfig) -> dict:
    return {"config": cfg.model_dump(mode="json")}


@contextlib.contextmanager
def local_server(timeout_s: float = 180.0) -> Iterator[str]:
    """A Prefect server on a free 127.0.0.1 port for as long as the block runs; yields its API URL.

    Prefect's temporary in-process server cannot schedule runs, so ``serve`` starts a real one when no
    ``PREFECT_API_URL`` is set (its database is Prefect's default, under ``PREFECT_HOME``).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"could not start a local Prefect server on port {port}; start one with "
                                   "`prefect server start` and set PREFECT_API_URL")
            time.sleep(0.5)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


def serve(cfg: NightrecConfig) -> None:
    """Run the nightly flow on its schedule in this process until interrupted (Prefect's ``serve``), against
    the server ``PREFECT_API_URL`` names, or a local one started for it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.nightly import nightly

    def run() -> None:
        nightly.serve(name=NIGHTLY, schedules=[_schedule(cfg)], parameters=_parameters(cfg),
                      description=f"nightrec nightly on {cfg.schedule.cron} ({cfg.schedule.timezone})")

    if os.environ.get("PREFECT_API_URL"):
        run()
        return
    with local_server() as url, temporary_settings(updates={PREFECT_API_URL: url}):
        print(f"nightrec serve: started a local Prefect server at {url.removesuffix('/api')} (its UI too)",
              flush=True)
        run()


def deploy(cfg: NightrecConfig, work_pool: str, *, source: Path = PROJECT_ROOT) -> dict[str, str]:
    """Register the nightly (scheduled) and backfill deployments on ``work_pool`` of the Prefect server that
    ``PREFECT_API_URL`` names; the pool's workers load the flows from ``source``.

    Returns:
        {deployment name: deployment id}.
    """
    from prefect import flow

    if not os.environ.get("PREFECT_API_URL"):
        raise RuntimeError("nightrec deploy registers deployments with a Prefect server: set PREFECT_API_URL "
                           "(e.g. http://127.0.0.1:4200/api); see docs/scheduling.md")
    ids = {}
    for name, entrypoint, schedules in ((NIGHTLY, "flows/nightly.py:nightly", [_schedule(cfg)]),
                                        (BACKFILL, "flows/backfill.py:backfill", None)):
        remote = flow.from_source(source=str(source), entrypoint=entrypoint)
        ids[name] = str(remote.deploy(name=name, work_pool_name=work_pool, schedules=schedules,
                                      parameters=_parameters(cfg), build=False, push=False,
                                      print_next_steps=False))
    return ids
