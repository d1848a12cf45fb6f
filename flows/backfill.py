"""The backfill flow: the nightly flow for every date of a range, each date a subflow run.

Dates whose night is already committed (a commit record whose partitions are
all in place) are skipped unless ``force``; a failed date does not stop the
others; ``max_concurrency`` > 1 runs dates side by side in threads of this
process (each night holds its own ds lock; training is serialised, since
TensorFlow's seeds are process-wide).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import dataclasses
import datetime as dt
import time

from prefect import flow

from flows.config import NightrecConfig
from flows.nightly import HeldBack, nightly
from flows.runtime import log
from flows.summary import NightSummary
from jobs import commit
from jobs.storage import Location


@dataclasses.dataclass(frozen=True)
class NightResult:
    """How one date of a backfill ended.

    Attributes:
        ds: the date; status: "committed", "held_back" (committed, but the quality gate kept a model's
            tables out), "skipped" (already committed) or "failed".
        seconds: wall time of its run (0 when skipped); rows: recommendation rows committed.
        metric: the headline figure (the first model's holdout nDCG@K), None when not run.
        error: why it failed.
    """

    ds: dt.date
    status: str
    seconds: float = 0.0
    rows: int = 0
    metric: str | None = None
    error: str | None = None


def _committed_rows(warehouse: Location, ds: dt.date) -> int:
    record = commit.commit_record(warehouse, ds) or {"partitions": []}
    return sum(int(p["manifest"].get("row_count", 0)) for p in record["partitions"] if p["table"] == "recommendations")


def _one(ds: dt.date, cfg: NightrecConfig, force: bool, fresh: bool) -> NightResult:
    warehouse = Location(cfg.warehouse)
    if not force and commit.is_committed(warehouse, ds):
        return NightResult(ds, "skipped", rows=_committed_rows(warehouse, ds))
    start = time.perf_counter()
    state = nightly(ds=ds, config=cfg, fresh=fresh, return_state=True)
    seconds = round(time.perf_counter() - start, 1)
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        if isinstance(error, HeldBack):
            return NightResult(ds, "held_back", seconds, rows=_committed_rows(warehouse, ds),
                               metric=_headline(error.summary), error=str(error))
        text = str(error).strip().splitlines()[0] if isinstance(error, BaseException) else str(state.message)
        return NightResult(ds, "failed", seconds, error=f"{type(error).__name__}: {text}"
                           if isinstance(error, BaseException) else text)
    return NightResult(ds, "committed", seconds, rows=_committed_rows(warehouse, ds), metric=_headline(state.result()))


def _headline(summary: NightSummary) -> str | None:
    first = next(iter(summary.metrics.values()), None)
    return f"ndcg@{first.k} {first.model['ndcg']:.4f}" if first is not None else None


@flow(name="nightrec-backfill")
def backfill(start: dt.date, end: dt.date, config: NightrecConfig | None = None, force: bool = False,
             max_concurrency: int = 1, fresh: bool = False) -> list[NightResult]:
    """Run the nightly flow for every date from ``start`` to ``end`` (inclusive), oldest first.

    Returns:
        One NightResult per date, in date order.
    """
    cfg = config or NightrecConfig()
    if end < start:
        raise ValueError(f"backfill: end {end} is before start {start}")
    if max_concurrency < 1:
        raise ValueError(f"backfill: max_concurrency must be >= 1, got {max_concurrency}")
    days = [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]
    commit.recover(Location(cfg.warehouse), log)
    if max_concurrency == 1:
        results = [_one(day, cfg, force, fresh) for day in days]
    else:
        with concurrent.futures.ThreadPoolExecutor(max_concurrency, thread_name_prefix="night") as pool:
            # each thread gets a copy of this flow's context, so that every night is a subflow of the backfill
            futures = [pool.submit(contextvars.copy_context().run, _one, day, cfg, force, fresh) for day in days]
            results = [f.result() for f in futures]
    log("backfill:\n" + format_results(results))
    return results


def format_results(results: list[NightResult]) -> str:
    """One line per date: ds, status, seconds, rows, the headline metric (or the error)."""
    lines = [f"{'ds':<12}{'status':<11}{'seconds':>9}{'rows':>12}  metric / error"]
    for r in results:
        detail = r.error if r.status in ("failed", "held_back") else (r.metric or "")
        lines.append(f"{r.ds.isoformat():<12}{r.status:<11}{r.seconds:>9.1f}{r.rows:>12,}  {detail}")
    failed = [r for r in results if r.status == "failed"]
    held = sum(r.status == "held_back" for r in results)
    lines.append(f"{len(results)} dates: {sum(r.status == 'committed' for r in results)} committed, "
                 + (f"{held} held back by the quality gate, " if held else "")
                 + f"{sum(r.status == 'skipped' for r in results)} skipped, {len(failed)} failed"
                 + (f" ({', '.join(r.ds.isoformat() for r in failed)})" if failed else ""))
    return "\n".join(lines)
