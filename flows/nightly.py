"""The nightly flow for one date ``ds``: wiring only.

    source -ingest-> raw -split-> train / holdout -features-> examples
      -train-> model -evaluate-> metrics ; model -score-> top-K -publish-> tables

Each task (``flows.data_tasks``, ``flows.model_tasks``, ``flows.publish_tasks``)
loads its inputs from the run catalogue (``jobs.run_catalogue``), calls one
function of ``jobs/`` or ``models/`` and saves its output there; tasks hand
each other small dataclasses (``flows.summary``). Published tables change
only in the final publish task, each partition atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import time
import uuid

from prefect import flow
from pyspark.sql import functions as F

from flows.config import CO_OCCURRENCE, NightrecConfig
from flows.data_tasks import features_task, holdout_examples_task, ingest_task, split_task
from flows.model_tasks import baselines_task, embed_task, evaluate_task, related_task, score_task, train_task
from flows.publish_tasks import publish_task
from flows.run_record import RunRecord, stale_work
from flows.runtime import log, spark_for, with_retries
from flows.summary import Embeddings, Evaluation, FittedWindow, Ingested, NightSummary, Split, TrainedModel
from jobs import commit, gate, sources
from jobs.run_catalogue import RunCatalogue
from jobs.run_lock import RunLock
from jobs.storage import Location


class HeldBack(RuntimeError):
    """The night was committed, but the quality gate held back at least one model's tables.

    Attributes:
        summary: the night's NightSummary (``gate`` says which model, which figure, by how much).
    """

    def __init__(self, summary: NightSummary):
        self.summary = summary
        lines = [d["message"] for d in summary.gate.values() if d["model"] in summary.held_back]
        super().__init__("the quality gate held back " + "; ".join(lines)
                         + " (the previous tables stay; --publish-anyway or gate.publish_anyway publishes)")

    def __reduce__(self):  # pickled with its summary (a Prefect state may carry it)
        return HeldBack, (self.summary,)


def nightrec_version() -> str:
    try:
        return importlib.metadata.version("nightrec")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


@flow(name="nightrec-nightly")
def nightly(ds: dt.date | None = None, config: NightrecConfig | None = None, fresh: bool = False) -> NightSummary:
    """Build the tables of one night and commit them together.

    Args:
        ds: the run date; the run sees events through the end of ds (UTC). None: yesterday in
            ``schedule.timezone`` (what a scheduled run uses).
        config: the validated config (``flows.config.load_config``); None: the defaults.
        fresh: start over instead of reusing the finished steps of an earlier, unfinished attempt.

    Returns:
        NightSummary: counts, metrics per model, the committed partitions, the reused steps.

    Raises:
        jobs.run_lock.RunLockedError: another live run of this ds holds the lock.
        HeldBack: the night was committed without the tables of a model the quality gate held back.
    """
    started = time.perf_counter()
    cfg = config or NightrecConfig()
    ds = ds or cfg.schedule.yesterday()
    warehouse = Location(cfg.warehouse)
    commit.recover(warehouse, log)
    run_id = new_run_id()
    with RunLock(warehouse, f"ds={ds.isoformat()}", run_id, lease_s=cfg.run.lease_s, log=log):
        fingerprint = {"config_hash": cfg.config_hash(), "source": sources.source_fingerprint(cfg.source.spec()),
                       "nightrec_version": nightrec_version()}
        run = RunRecord.open(warehouse, ds, run_id, fingerprint, fresh=fresh, log=log)
        cat = RunCatalogue(warehouse, ds, run_id, work_id=run.work_id)
        try:
            summary = _night(cfg, cat, run, fingerprint, started)
        except BaseException as exc:
            run.finish("failed", error=f"{type(exc).__name__}: {exc}")
            raise
        run.finish("succeeded")
        if not cfg.keep_work_dir:
            cat.remove_work()
    report = _report(cfg, summary)
    _artifacts(summary, report)
    live = commit.live_runs(warehouse)
    commit.cleanup_staging(warehouse, live=live, log=log)
    for folder in stale_work(warehouse, keep_days=cfg.retention.failed_work_days, live_runs=live):
        folder.delete()
    if summary.held_back:
        raise HeldBack(summary)
    return summary


#: Where each night's HTML report goes, below the warehouse root.
REPORT_PATH = "_reports/ds={ds}.html"


def _report(cfg: NightrecConfig, summary: NightSummary) -> Location | None:
    """The HTML report (``jobs.report``) of the committed nights of the last ``publish.report_nights`` days
    through this one, beside the tables; a report that cannot be drawn is logged, never fails the night."""
    from jobs import report

    if not cfg.publish.report_nights:
        return None
    first = summary.ds - dt.timedelta(days=cfg.publish.report_nights - 1)
    out = summary.warehouse / REPORT_PATH.format(ds=summary.ds.isoformat())
    try:
        report.write_report(summary.warehouse, report.select_nights(summary.warehouse, start=first, end=summary.ds),
                            out)
    except Exception as exc:  # the tables are committed: a plotting problem must not fail the night
        log(f"report: not written ({type(exc).__name__}: {exc}); `nightrec report --ds {summary.ds}` retries")
        return None
    log(f"report: {out.display()}")
    return out


def _artifacts(summary: NightSummary, report: Location | None = None) -> None:
    """The run's Prefect artifacts: the summary table, a link to each committed table and to the report."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    if report is not None:
        create_link_artifact(link=report.uri, link_text=f"report ds={summary.ds.isoformat()}", key="nightrec-report")

    create_markdown_artifact(markdown=summary.markdown(), key="nightrec-summary",
                             description=f"nightrec ds={summary.ds.isoformat()}")
    for table, loc in summary.published.items():
        create_link_artifact(link=loc.uri, link_text=f"{table} ds={summary.ds.isoformat()}",
                             key="nightrec-" + table.replace("/", "-").replace("_", "-").lower())


def _night(cfg: NightrecConfig, cat: RunCatalogue, run: RunRecord, fingerprint: dict, started: float) -> NightSummary:
    """The steps of one night, each reused from the run record when an earlier attempt finished it."""

    def step(name, kind, task, *args, **kwargs):
        return run.step(name, kind, lambda: with_retries(task, cfg)(*args, **kwargs), cat)

    ingested = step("ingest", Ingested, ingest_task, cfg, cat)
    split_counts = step("split", Split, split_task, cfg, cat)
    fitted = {"eval": step("features:eval", FittedWindow, features_task, cfg, cat, "eval", ingested)}
    holdout = step("holdout_examples", None, holdout_examples_task, cfg, cat)
    trained: dict[str, dict[str, TrainedModel]] = {"eval": {}}
    vectors: dict[str, dict[str, Embeddings | None]] = {"eval": {}}
    metrics: dict[str, Evaluation] = {}
    baselines = step("evaluate:baselines", Evaluation, baselines_task, cfg, cat, fitted["eval"])
    for m in cfg.models:
        trained["eval"][m.name] = step(f"train:{m.name}:eval", TrainedModel, train_task, cfg, m, cat, fitted["eval"],
                                       holdout=holdout)
        vectors["eval"][m.name] = step(f"embed:{m.name}:eval", Embeddings, embed_task, cfg, cat,
                                       trained["eval"][m.name], fitted["eval"])
        metrics[m.name] = step(f"evaluate:{m.name}", Evaluation, evaluate_task, cfg, cat, m, trained["eval"][m.name],
                               fitted["eval"], vectors["eval"], holdout, baselines)
    decisions = _gate(cfg, cat, metrics)
    publishing = [m for m in cfg.models if decisions[m.name]["published"]]
    # a published two-stage model needs its retriever refit too, even when the gate held the retriever back
    needed = [m for m in cfg.models if m in publishing or any(p.retrieve_with == m.name for p in publishing)]
    window = "full" if cfg.publish.refit_on_full else "eval"
    if window == "full":
        fitted["full"] = step("features:full", FittedWindow, features_task, cfg, cat, "full", ingested)
        trained["full"] = {m.name: step(f"train:{m.name}:full", TrainedModel, train_task, cfg, m, cat, fitted["full"],
                                        epochs=trained["eval"][m.name].best_epoch) for m in needed}
        vectors["full"] = {m.name: step(f"embed:{m.name}:full", Embeddings, embed_task, cfg, cat,
                                        trained["full"][m.name], fitted["full"]) for m in needed}
    scored = {m.name: step(f"score:{m.name}", None, score_task, cfg, cat, m, trained[window][m.name], fitted[window],
                           vectors[window]) for m in publishing}
    related_names = [name for name in cfg.related_models() if name in scored]
    related = {name: step(f"related:{name}", None, related_task, cfg, cat, trained[window][name], fitted[window],
                          vectors[window]) for name in related_names}
    if cfg.related_models() and cfg.related_items.co_occurrence:
        related[CO_OCCURRENCE] = step(f"related:{CO_OCCURRENCE}", None, related_task, cfg, cat, None, fitted[window],
                                      vectors[window])
    spark = spark_for(cfg)
    raw = cat.dataset("raw.interactions").load(spark)
    newest = raw.agg(F.max("ts")).first()[0]
    trust = {
        "nightrec_version": fingerprint["nightrec_version"], "source_fingerprint": fingerprint["source"],
        "newest_event_ts": newest.isoformat() if newest is not None else None, "config": cfg.model_dump(mode="json"),
        "resumed_from": run.resumed_from, "steps_reused": list(run.reused),
        "models": {m.name: {"best_epoch": trained["eval"][m.name].best_epoch,
                            "steps_reused": [s for s in run.reused if f":{m.name}" in s]} for m in cfg.models},
    }
    record = with_retries(publish_task, cfg)(cfg, cat, window, scored, trained[window], vectors[window], metrics,
                                             ingested, split_counts, {**trust, "gate": decisions}, related)
    published = {"/".join([p["table"], *p["keys"].values()]): cat.warehouse / p["path"] for p in record["partitions"]}
    return NightSummary(
        ds=cat.ds, warehouse=cat.warehouse, users=raw.select("user_id").distinct().count(),
        items=raw.select("item_id").distinct().count(), ingested=ingested, split=split_counts, metrics=metrics,
        published=published, seconds=round(time.perf_counter() - started, 1), run_id=cat.run_id,
        reused=tuple(run.reused), gate=decisions,
    )


def _gate(cfg: NightrecConfig, cat: RunCatalogue, metrics: dict[str, Evaluation]) -> dict[str, dict]:
    """The quality gate's decision per model (``jobs.gate``), with the override and whether it publishes.

    Returns:
        {model: GateDecision fields + previous_ds (the night ``previous`` is from), override (published
        by ``gate.publish_anyway`` although held back) and published}.
    """
    out = {}
    g, k = cfg.gate, cfg.evaluation.k
    for name, result in metrics.items():
        if not g.enabled:
            out[name] = {"model": name, "status": "not_gated", "message": f"{name}: the gate is off (gate.enabled)",
                         "override": False, "published": True}
            continue
        previous = gate.last_committed_figure(cat.warehouse, cat.ds, name, metric=g.metric, k=k)
        decision = gate.gate_decision(
            model=name, value=result.model[g.metric] if result.model["users"] else None,
            popularity=result.popularity[g.metric], previous=previous[1] if previous else None,
            users=result.model["users"], min_users=cfg.evaluation.min_holdout_users, margin=g.margin,
            metric=g.metric, k=k)
        override = not decision.publish and g.publish_anyway
        out[name] = {**dataclasses.asdict(decision), "previous_ds": previous[0] if previous else None,
                     "override": override, "published": decision.publish or override}
        if decision.publish:
            log(f"gate: {decision.message}: published")
        else:
            log(f"gate: {decision.message}: " + ("published anyway (gate.publish_anyway)" if override else
                                                 "held back, the previous tables stay"))
    return out
