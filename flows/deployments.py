"""Scheduling: ``nightrec serve`` (one machine, no server to set up) and ``nightrec deploy`` (a Prefect
server with a process work pool and workers).

Both register the nightly flow on the config's schedule (``schedule.cron``
in ``schedule.timezone``; a scheduled run's ds is the previous day in that
timezone) with the effective config as its parameter; ``deploy`` also
registers the backfill flow, to run from the UI or ``prefect deployment run``.
"""

from __future__ import annotations

import os
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


def serve(cfg: NightrecConfig) -> None:
    """Run the nightly flow on its schedule in this process until interrupted (Prefect's ``serve``)."""
    from flows.nightly import nightly

    nightly.serve(name=NIGHTLY, schedules=[_schedule(cfg)], parameters=_parameters(cfg),
                  description=f"nightrec nightly on {cfg.schedule.cron} ({cfg.schedule.timezone})")


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
