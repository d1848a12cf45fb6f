"""The publish task: every table of the night staged, validated, then committed together (``jobs.commit``)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pyspark.sql import DataFrame

from flows.config import NightrecConfig
from flows.runtime import log, pause_point, progress, spark_for
from flows.summary import Embeddings, Evaluation, Ingested, Split, TrainedModel, run_counts
from jobs import commit, embeddings, evaluate, publish_checks
from jobs.run_catalogue import Dataset, RunCatalogue

MODEL_VERSION_FORMAT = "{name}@{ds}"
#: The fitted feature state (vocabularies, scalers, imputers) beside the published feature tables.
FEATURE_STATE_FILE = "_feature_state.json"
#: Published tables that carry the feature state beside their data.
FEATURE_TABLES = ("user_features", "item_features", "training_examples")


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(cfg: NightrecConfig, cat: RunCatalogue, window: str, scored: dict[str, Dataset],
                 trained: dict[str, TrainedModel], vectors: dict[str, Embeddings | None],
                 metrics: dict[str, Evaluation], ingested: Ingested, split_counts: Split,
                 trust: dict[str, Any], related: dict[str, Dataset] | None = None) -> dict:
    """Stage features, examples, quarantine, metrics, models and recommendations; check the recommendations;
    commit the night (one commit record, then the latest pointers).

    Only the models in ``scored`` are published (the quality gate left out the others: their
    previous tables and pointers stay); the metrics table has the figures of every model.

    Args:
        trust: what every manifest and the commit record say so that a reader can trust the night
            (nightrec version, newest event time, source fingerprint, the effective config, per model the
            chosen epoch and the steps reused from an earlier attempt, the quality gate's decisions).
        related: the related items to publish, by model name (``co_occurrence``: the baseline).

    Returns:
        The commit record.
    """
    spark = spark_for(cfg)
    night = commit.NightCommit(cat.warehouse, cat.ds, cat.run_id, keep_versions=cfg.retention.keep_versions,
                               on_step=pause_point)
    base = {"config_hash": cfg.config_hash(), **trust}
    counts = run_counts(ingested, split_counts)
    state_file = {FEATURE_STATE_FILE: cat.dataset(f"{window}.feature_state").read_text()}

    def stage(table: str, df: DataFrame, manifest: dict, sort_by: tuple[str, ...] = (), **keys) -> None:
        night.stage_dataframe(table, df, {**base, **manifest}, sort_by=sort_by, **keys,
                              side_files=state_file if table in FEATURE_TABLES else None)

    with progress("publish: staging", spark):
        for side in ("user", "item"):
            stage(f"{side}_features", cat.dataset(f"{window}.{side}_features").load(spark), {},
                  sort_by=(f"{side}_id",))
        pause_point("publish:staging")
        stage("training_examples", cat.dataset(f"{window}.examples").load(spark), {"window": window})
        stage("quarantine", cat.dataset("raw.quarantine").load(spark), {"reasons": ingested.quarantined})
        rows = [evaluate.MetricRow(**r) for e in metrics.values() for r in e.rows]
        recall = {name: cat.dataset(f"recall/{name}") for name in scored}
        recall = {name: d.read_json() for name, d in recall.items() if d.complete()}
        rows += [evaluate.MetricRow(name, "model", evaluate.ALL, "ann_recall", r["ann_recall_k"],
                                    float(r["ann_recall_at_k"]), int(r["ann_recall_users"]))
                 for name, r in recall.items() if r["ann_recall_at_k"] is not None]
        stage("metrics", evaluate.metrics_table(spark, rows), {"k": cfg.evaluation.k},
              sort_by=evaluate.METRICS_TABLE_KEY)
        for name, recs in scored.items():
            model_version = MODEL_VERSION_FORMAT.format(name=name, ds=cat.ds.isoformat())
            tables = vectors.get(name)
            night.stage_dataset("models", trained[name].model, {**base, "model_version": model_version},
                                beside={f"{side}_embeddings.parquet": getattr(tables, side) for side in ("user", "item")}
                                if tables is not None else None, model=name)
            if tables is not None:
                for side in ("user", "item"):
                    def write(folder, frame=getattr(tables, side).load(spark), side=side):
                        return embeddings.write_embedding_table(frame, folder, id_col=f"{side}_id",
                                                                model_version=model_version, score_function="dot")
                    night.stage_files(f"{side}_embeddings", write, {**base, "model_version": model_version},
                                      model=name)
            stage("recommendations", recs.load(spark), {
                "model_version": model_version, "k": cfg.publish.k,
                "trained_on": "train+holdout through ds" if window == "full" else "train window",
                "scoring": (f"ann: {cfg.scoring.ann.index} index candidates re-scored exactly" if name in recall
                            else cfg.model(name).scoring_mode()),
                "metrics": metrics[name].as_dict(), "counts": counts,
                **({"ann": recall[name]} if name in recall else {}),
            }, sort_by=("user_id", "rank"), model=name)
        for name, table in (related or {}).items():
            source = ("co-occurrence of the window's events (Jaccard index of the items' raters)"
                      if name not in scored else "cosine of the item embeddings" if trained[name].kind != "item_item"
                      else "the item-item weights B = E Q^T")
            stage("related_items", table.load(spark), {"k": cfg.related_items.k, "related_by": source},
                  sort_by=("item_id", "rank"), model=name)
    with progress("publish: checking the recommendations", spark):
        seen = cat.dataset("raw.interactions").load(spark)
        users = cat.dataset(f"{window}.user_features").load(spark).select("user_id")
        items = cat.dataset(f"{window}.item_features").load(spark).select("item_id")
        for part in night.staged:
            if part.table == "recommendations":
                recs = spark.read.parquet(night.staged_location(part).uri)
                try:
                    checked = publish_checks.check_recommendations(recs, k=cfg.publish.k, seen_events=seen,
                                                                   users=users, item_ids=items)
                except publish_checks.ValidationError as exc:
                    night.abort()
                    raise publish_checks.ValidationError(f"{part.name}: {exc}") from None
                log(f"publish: {part.name} passes the checks: {checked.rows:,} rows for {checked.users:,} users"
                    + (f", {checked.short_users:,} with fewer than K unseen items" if checked.short_users else "")
                    + (f", no rows for {checked.users_without_rows}" if checked.users_without_rows else ""))
    with progress("publish: commit"):
        record = night.commit(base)
    for part in record["partitions"]:
        log(f"published {part['table']}{''.join('/' + v for v in part['keys'].values())}: "
            f"{(cat.warehouse / part['path']).display()}")
    return record
