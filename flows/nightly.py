"""The nightly flow for one date ``ds``.

    source -ingest-> raw -split-> train / holdout -features-> examples
      -train-> model -evaluate-> metrics ; model -score-> top-K -publish-> tables

Each task reads its inputs from the run's scratch folder (or the source),
calls one function of ``jobs/`` or ``models/`` and writes its output back, so
tasks pass only paths and small dicts. Published tables change only in the
final publish tasks, each partition atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from flows.config import ModelConfig, NightrecConfig, load_config, parse_config
from flows.runtime import spark_for
from jobs import evaluate, features, ingest, scoring, sources, split, synthetic
from jobs.tables import RunPaths, Warehouse

MODEL_VERSION_FORMAT = "{name}@{ds}"


def parse_ds(ds: str) -> dt.date:
    """``YYYY-MM-DD`` -> date, with a message a person can act on."""
    try:
        return dt.date.fromisoformat(ds)
    except (TypeError, ValueError):
        raise ValueError(f"--ds must be a date like 2024-06-30, got {ds!r}") from None


def _log(message: str) -> None:
    try:
        get_run_logger().info(message)
    except Exception:  # outside a flow/task run
        print(message, flush=True)


# -- tasks ---------------------------------------------------------------------------
def _source_tables(spark, cfg: NightrecConfig) -> sources.SourceTables:
    """The configured source (file sources check their files and columns before any Spark job)."""
    src = cfg.source
    if src.kind == "movielens_100k":
        return sources.load_movielens_100k(spark, src.path)
    if src.kind == "movielens_1m":
        return sources.load_movielens_1m(spark, src.path)
    if src.kind == "movielens_latest":
        return sources.load_movielens_latest(spark, src.path)
    if src.kind == "files":
        return sources.load_files(spark, _files_spec(cfg))
    syn = src.synthetic
    spec = synthetic.SyntheticSpec(
        n_users=syn.n_users,
        n_items=syn.n_items,
        ratings_per_user=syn.ratings_per_user,
        days=syn.days,
        end_date=syn.end_date,
        seed=syn.seed,
    )
    return sources.load_synthetic(spark, spec)


def _files_spec(cfg: NightrecConfig) -> sources.FilesSource:
    files = cfg.source.files
    inter = files.interactions

    def side(table):
        if table is None:
            return None
        decls = tuple(features.FeatureDecl(**d.model_dump()) for d in table.features)
        return sources.SideFile(path=table.path, id_column=table.id_column, format=table.format, features=decls,
                                sep=table.sep, encoding=table.encoding)

    return sources.FilesSource(
        interactions=sources.InteractionsFile(
            path=inter.path, format=inter.format, user_id=inter.columns.user_id, item_id=inter.columns.item_id,
            rating=inter.columns.rating, ts=inter.columns.ts, ts_format=inter.ts_format, sep=inter.sep,
            encoding=inter.encoding,
        ),
        users=side(files.users),
        items=side(files.items),
    )


def _feature_settings(cfg: NightrecConfig) -> features.FeatureSettings:
    f = cfg.features
    return features.FeatureSettings(
        min_count=f.min_category_count,
        quantiles=tuple(f.quantiles),
        grid_size=f.rating_grid_size,
        impute=f.impute,
        imputer=f.imputer,
        iterative_sample_rows=f.iterative_sample_rows,
        iterative_max_iter=f.iterative_max_iter,
        affinity_column=f.affinity_column,
        rows_per_partition=f.rows_per_partition,
        seed=cfg.seed,
    )


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(cfg: NightrecConfig, ds: str, paths: RunPaths) -> dict[str, Any]:
    """Load the source, validate, keep events through ds; quarantine bad rows.

    Fails (``QuarantineError``) when the quarantined share of the run's
    interaction rows exceeds ``ingest.max_quarantine_share``.
    """
    spark = spark_for(cfg)
    now = cfg.ingest.now or dt.datetime.now(dt.timezone.utc)
    source = _source_tables(spark, cfg)
    low, high = source.rating_range or (None, None)
    rating_range = (
        cfg.ingest.rating_min if cfg.ingest.rating_min is not None else low,
        cfg.ingest.rating_max if cfg.ingest.rating_max is not None else high,
    )
    result = ingest.ingest_source(source, parse_ds(ds), now=now, rating_range=rating_range)
    result.interactions.write.mode("overwrite").parquet(paths.work("raw", "interactions"))
    for name in ("users", "items", "tags"):
        table = getattr(result, name)
        if table is not None:
            table.write.mode("overwrite").parquet(paths.work("raw", name))
    result.quarantine.write.mode("overwrite").parquet(paths.work("raw", "quarantine"))
    Warehouse(spark, paths.root).write_text(
        paths.work("raw", "source.json"),
        json.dumps(
            {
                "name": source.name,
                "user_features": [dataclasses.asdict(d) for d in source.user_features],
                "item_features": [dataclasses.asdict(d) for d in source.item_features],
                "rating_range": list(rating_range),
            }
        ),
    )
    by_table = ingest.quarantine_counts(spark.read.parquet(paths.work("raw", "quarantine")))
    reasons: dict[str, int] = {}
    for table_reasons in by_table.values():
        for reason, n in table_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + n
    kept = spark.read.parquet(paths.work("raw", "interactions")).count()
    _log(f"ingest: {kept:,} events through {ds}, {sum(reasons.values()):,} quarantined {by_table or ''}")
    share = ingest.check_quarantine_share(
        by_table, kept, max_share=cfg.ingest.max_quarantine_share, where=paths.work("raw", "quarantine")
    )
    return {
        "events": kept,
        "quarantined": dict(sorted(reasons.items())),
        "quarantined_by_table": by_table,
        "quarantine_share": round(share, 6),
        "source": source.name,
        "now": now.isoformat(),
    }


@task(name="split", cache_policy=NO_CACHE)
def split_task(cfg: NightrecConfig, ds: str, paths: RunPaths) -> dict[str, int]:
    """Temporal split: train before the cutoff, holdout in the last days through ds."""
    spark = spark_for(cfg)
    events = spark.read.parquet(paths.work("raw", "interactions"))
    train, holdout = split.temporal_split(events, parse_ds(ds), holdout_days=cfg.split.holdout_days)
    train.write.mode("overwrite").parquet(paths.work("train"))
    holdout.write.mode("overwrite").parquet(paths.work("holdout"))
    counts = {
        "train": spark.read.parquet(paths.work("train")).count(),
        "holdout": spark.read.parquet(paths.work("holdout")).count(),
    }
    _log(f"split: {counts['train']:,} train events, {counts['holdout']:,} holdout events")
    if counts["train"] == 0:
        raise ValueError(
            f"no training events before the holdout of {ds} "
            f"(holdout_days={cfg.split.holdout_days}); pick a later ds or fewer holdout days"
        )
    return counts


@task(name="features", cache_policy=NO_CACHE)
def features_task(cfg: NightrecConfig, paths: RunPaths, window: str, events_names: list[str]) -> dict[str, Any]:
    """Fit the feature state on a window and write features and leakage-safe training examples.

    ``window`` names the output folder ("eval": fitted on train, counted to
    the holdout start; "full": fitted on everything through ds).
    """
    spark = spark_for(cfg)
    wh = Warehouse(spark, paths.root)
    events = _union([spark.read.parquet(paths.work(n)) for n in events_names])
    users = _maybe_read(spark, paths.work("raw", "users"))
    items = _maybe_read(spark, paths.work("raw", "items"))
    tags = _maybe_read(spark, paths.work("raw", "tags"))
    info = json.loads(wh.read_text(paths.work("raw", "source.json")))
    as_of = split.window_end(parse_ds(paths.ds), cfg.split.holdout_days, includes_holdout="holdout" in events_names)
    if tags is not None:
        items = features.attach_tags(items, tags, as_of=as_of, max_per_item=cfg.features.max_tags_per_item)
    settings = _feature_settings(cfg)
    fitted = features.fit_transform(
        events,
        users,
        items,
        user_decls=[features.FeatureDecl(**d) for d in info["user_features"]],
        item_decls=[features.FeatureDecl(**d) for d in info["item_features"]],
        as_of=as_of,
        settings=settings,
    )
    state = fitted.state
    fitted.user_features.write.mode("overwrite").parquet(paths.work(window, "user_features"))
    fitted.item_features.write.mode("overwrite").parquet(paths.work(window, "item_features"))
    n_examples = features.write_training_examples(
        events, users, items, state, paths.work(window, "examples"), rows_per_partition=settings.rows_per_partition
    )
    fitted.release()
    state_path = paths.work(window, "feature_state.json")
    wh.write_text(state_path, state.to_json())
    uf = spark.read.parquet(paths.work(window, "user_features")).count()
    itf = spark.read.parquet(paths.work(window, "item_features")).count()
    _log(
        f"features[{window}]: {len(state.user_vocab):,} users, {len(state.item_vocab):,} items "
        f"in the vocabularies; {uf:,} user rows, {itf:,} item rows, {n_examples:,} examples (as of {state.as_of})"
    )
    return {"state_path": state_path, "users": uf, "items": itf, "examples": n_examples}


@task(name="train", cache_policy=NO_CACHE)
def train_task(cfg: NightrecConfig, model_cfg: ModelConfig, paths: RunPaths, window: str) -> str:
    """Train one model on a window's examples; returns the local model folder."""
    from models.train import train_two_tower

    wh = Warehouse(spark_for(cfg), paths.root)
    state = features.FeatureState.from_json(wh.read_text(paths.work(window, "feature_state.json")))
    out_dir = paths.work(window, "models", model_cfg.name)
    logger = get_run_logger()
    train_two_tower(
        paths.work(window, "examples"),
        state.model_spec(),
        out_dir,
        embedding_dim=model_cfg.embedding_dim,
        hidden=tuple(model_cfg.tower_layers),
        temperature=model_cfg.temperature,
        epochs=model_cfg.epochs,
        batch_size=model_cfg.batch_size,
        learning_rate=model_cfg.learning_rate,
        l2=model_cfg.l2,
        seed=cfg.seed,
        log=lambda line: logger.info(f"train[{model_cfg.name}/{window}] {line}"),
    )
    return out_dir


@task(name="embed", cache_policy=NO_CACHE)
def embed_task(cfg: NightrecConfig, paths: RunPaths, window: str, model_dir: str) -> dict[str, str]:
    """User and item embedding tables of a trained two-tower model."""
    from models.export import embed_side, embeddings_table
    from models.train import MODEL_FILE, load_model

    import pyarrow.parquet as pq

    model = load_model(os.path.join(model_dir, MODEL_FILE))
    out = {}
    for side, tower in (("user", model.user_tower), ("item", model.item_tower)):
        ids, emb = embed_side(tower, paths.work(window, f"{side}_features"), model.spec[side], f"{side}_id")
        order = pc.sort_indices(ids)
        table = embeddings_table(ids.take(order), emb[order.to_numpy()], f"{side}_id")
        path = os.path.join(model_dir, f"{side}_embeddings.parquet")
        pq.write_table(table, path)
        out[side] = path
    return out


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(cfg: NightrecConfig, paths: RunPaths, model_cfg: ModelConfig, embeddings: dict[str, str]) -> dict:
    """Recall@K / nDCG@K (and P@K, MAP@K) on the holdout, beside popularity."""
    spark = spark_for(cfg)
    train = spark.read.parquet(paths.work("train"))
    holdout = spark.read.parquet(paths.work("holdout"))
    truth = evaluate.relevant_items(holdout, train).cache()
    holdout_users = truth.select("user_id").distinct()
    k = cfg.evaluation.k
    recs = _recommend(spark, embeddings, train, holdout_users, paths.work("eval", "user_features"), k)
    model_metrics = evaluate.ranking_metrics(recs, truth, k)
    pop = _popularity_recs(spark, train, holdout_users, embeddings["item"], k)
    pop_metrics = evaluate.ranking_metrics(pop, truth, k)
    truth.unpersist()
    _log(
        f"evaluate[{model_cfg.name}]: recall@{k} {model_metrics['recall']:.4f} vs popularity "
        f"{pop_metrics['recall']:.4f}; ndcg@{k} {model_metrics['ndcg']:.4f} vs {pop_metrics['ndcg']:.4f} "
        f"({model_metrics['users']:,} holdout users)"
    )
    return {"k": k, "model": model_metrics, "popularity": pop_metrics}


@task(name="score", cache_policy=NO_CACHE)
def score_task(cfg: NightrecConfig, paths: RunPaths, model_cfg: ModelConfig, embeddings: dict[str, str], window: str) -> str:
    """Exhaustive top-K for every user, items rated up to ds excluded."""
    spark = spark_for(cfg)
    events = spark.read.parquet(paths.work("raw", "interactions"))
    all_users = spark.read.parquet(paths.work(window, "user_features")).select("user_id")
    recs = _recommend(spark, embeddings, events, all_users, paths.work(window, "user_features"), cfg.publish.k)
    out = paths.work("recommendations", model_cfg.name)
    recs.write.mode("overwrite").parquet(out)
    return out


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(
    cfg: NightrecConfig,
    paths: RunPaths,
    ds: str,
    recs_paths: dict[str, str],
    model_dirs: dict[str, str],
    metrics: dict[str, dict],
    counts: dict[str, Any],
    window: str,
) -> dict[str, str]:
    """Publish features, models, metrics, quarantine and recommendations atomically."""
    spark = spark_for(cfg)
    wh = Warehouse(spark, cfg.warehouse)
    config_hash = cfg.config_hash()
    base = {"ds": ds, "config_hash": config_hash, "run_id": paths.run_id}
    published = {}
    for table in ("user_features", "item_features"):
        final = paths.partition(table)
        df = spark.read.parquet(paths.work(window, table))
        wh.publish_dataframe(df, final, {**base, "table": table}, sort_by=(table.split("_")[0] + "_id",))
        published[table] = final
    final = paths.partition("quarantine")
    wh.publish_dataframe(
        spark.read.parquet(paths.work("raw", "quarantine")),
        final,
        {**base, "table": "quarantine", "reasons": counts.get("quarantined", {})},
    )
    published["quarantine"] = final
    rows = []
    for name, result in metrics.items():
        for baseline in ("model", "popularity"):
            for metric in evaluate.METRICS:
                rows.append((name, baseline, metric, int(result["k"]), float(result[baseline][metric]),
                             int(result[baseline]["users"])))
    metrics_df = spark.createDataFrame(
        rows, "model string, scorer string, metric string, k int, value double, users int"
    )
    final = paths.partition("metrics")
    wh.publish_dataframe(metrics_df, final, {**base, "table": "metrics"}, sort_by=("model", "scorer", "metric"))
    published["metrics"] = final
    for name, recs_path in recs_paths.items():
        model_version = MODEL_VERSION_FORMAT.format(name=name, ds=ds)
        final = paths.partition("models", model=name)
        wh.publish(
            final,
            lambda staging, d=model_dirs[name]: wh.copy_from_local(os.path.abspath(d), staging),
            {**base, "table": "models", "model": name, "model_version": model_version},
        )
        final = paths.partition("recommendations", model=name)
        manifest = wh.publish_dataframe(
            spark.read.parquet(recs_path),
            final,
            {
                **base,
                "table": "recommendations",
                "model": name,
                "model_version": model_version,
                "k": cfg.publish.k,
                "trained_on": "train+holdout through ds" if cfg.publish.refit_on_full else "train window",
                "metrics": metrics.get(name, {}),
                "counts": counts,
            },
            sort_by=("user_id", "rank"),
        )
        published[f"recommendations/{name}"] = final
        _log(f"publish: {manifest['row_count']:,} rows -> {final}")
    return published


# -- helpers used by the tasks ------------------------------------------------------------
def _union(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def _maybe_read(spark, path: str) -> DataFrame | None:
    return spark.read.parquet(path) if os.path.exists(path) or "://" in path else None


def _load_embeddings(path: str, id_col: str) -> tuple[pa.Array, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    ids = table.column(id_col).combine_chunks()
    emb_col = table.column("embedding").combine_chunks()
    dim = len(emb_col[0]) if len(emb_col) else 0
    return ids, emb_col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(ids), dim)


def _recommend(spark, embeddings: dict[str, str], seen_events: DataFrame, users: DataFrame,
               user_features_path: str, k: int) -> DataFrame:
    """Model top-K for ``users`` (known ids: source "model"; features only: "features")."""
    item_ids, item_matrix = _load_embeddings(embeddings["item"], "item_id")
    catalogue = scoring.catalogue_frame(spark, item_ids)
    seen = scoring.seen_positions(seen_events, catalogue)
    user_emb = spark.read.parquet(embeddings["user"])
    idx = spark.read.parquet(user_features_path).select("user_id", "user_idx")
    rows = (
        users.join(user_emb, on="user_id", how="inner")
        .join(idx, on="user_id", how="left")
        .join(seen, on="user_id", how="left")
        .withColumn(
            "source",
            F.when(F.col("user_idx") >= features.FIRST_INDEX, F.lit("model")).otherwise(F.lit("features")),
        )
    )
    user_type = dict(user_emb.dtypes)["user_id"]
    model_recs = scoring.top_k_for_users(rows, item_ids, item_matrix, k=k, user_id_type=user_type)
    missing = users.join(user_emb.select("user_id"), on="user_id", how="left_anti")
    pop = _popularity_recs(spark, seen_events, missing, embeddings["item"], k)
    return model_recs.unionByName(pop)


def _popularity_recs(spark, events: DataFrame, users: DataFrame, item_embeddings: str, k: int) -> DataFrame:
    """Most-interacted catalogue items (in ``events``) per user, seen items excluded."""
    item_ids, _ = _load_embeddings(item_embeddings, "item_id")
    catalogue = scoring.catalogue_frame(spark, item_ids)
    counts = {r["pos"]: r["count"] for r in events.join(catalogue, on="item_id").groupBy("pos").count().collect()}
    matrix = np.zeros((len(item_ids), 1), dtype=np.float32)
    for pos, count in counts.items():
        matrix[pos, 0] = count
    seen = scoring.seen_positions(events, catalogue)
    rows = (
        users.join(seen, on="user_id", how="left")
        .withColumn("embedding", F.array(F.lit(1.0).cast("float")))
        .withColumn("source", F.lit("popularity"))
    )
    user_type = dict(users.dtypes)["user_id"]
    return scoring.top_k_for_users(rows, item_ids, matrix, k=k, user_id_type=user_type)


# -- the flow ------------------------------------------------------------------------------
@flow(name="nightrec-nightly")
def nightly(ds: str, config_path: str | None = None, config: dict | None = None) -> dict[str, Any]:
    """Build and publish the tables of one night.

    Args:
        ds: the run date ``YYYY-MM-DD``; the run sees events through the end of ds.
        config_path: YAML config file (defaults when None).
        config: a config as a dict (used instead of ``config_path`` when given).

    Returns:
        A summary dict: counts, metrics per model, published paths.
    """
    started = time.perf_counter()
    day = parse_ds(ds)
    cfg = parse_config(config, "config") if config is not None else load_config(config_path)
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    paths = RunPaths(cfg.warehouse, day.isoformat(), run_id)
    spark_for(cfg)

    counts = ingest_task(cfg, ds, paths)
    counts.update(split_task(cfg, ds, paths))
    features_task(cfg, paths, "eval", ["train"])
    metrics: dict[str, dict] = {}
    eval_dirs = {}
    for model_cfg in cfg.models:
        eval_dirs[model_cfg.name] = train_task(cfg, model_cfg, paths, "eval")
        emb = embed_task(cfg, paths, "eval", eval_dirs[model_cfg.name])
        metrics[model_cfg.name] = evaluate_task(cfg, paths, model_cfg, emb)

    window = "eval"
    final_dirs = eval_dirs
    if cfg.publish.refit_on_full:
        window = "full"
        features_task(cfg, paths, "full", ["train", "holdout"])
        final_dirs = {m.name: train_task(cfg, m, paths, "full") for m in cfg.models}
    recs_paths = {}
    for model_cfg in cfg.models:
        emb = embed_task(cfg, paths, window, final_dirs[model_cfg.name])
        recs_paths[model_cfg.name] = score_task(cfg, paths, model_cfg, emb, window)
    published = publish_task(cfg, paths, ds, recs_paths, final_dirs, metrics, counts, window)

    spark = spark_for(cfg)
    raw = spark.read.parquet(paths.work("raw", "interactions"))
    summary = {
        "ds": ds,
        "warehouse": os.path.abspath(cfg.warehouse) if "://" not in cfg.warehouse else cfg.warehouse,
        "users": raw.select("user_id").distinct().count(),
        "items": raw.select("item_id").distinct().count(),
        "ratings": counts["events"],
        "counts": counts,
        "metrics": metrics,
        "published": published,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if not cfg.keep_work_dir and "://" not in cfg.warehouse:
        shutil.rmtree(paths.work_root, ignore_errors=True)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """One screen of text: where the tables are and how the models did."""
    lines = [
        f"nightrec nightly ds={summary['ds']} finished in {summary['seconds']}s",
        f"  data:      {summary['users']:,} users, {summary['items']:,} items, {summary['ratings']:,} ratings "
        f"({summary['counts']['train']:,} train / {summary['counts']['holdout']:,} holdout)",
        f"  warehouse: {summary['warehouse']}",
    ]
    for table, path in summary["published"].items():
        lines.append(f"    {table:<28} {path}")
    for name, result in summary["metrics"].items():
        k = result["k"]
        m, p = result["model"], result["popularity"]
        lines.append(f"  holdout metrics, model={name} ({m['users']:,} users):")
        lines.append(f"    {'':<12}{'recall@' + str(k):>12}{'ndcg@' + str(k):>12}{'P@' + str(k):>12}{'MAP@' + str(k):>12}")
        for label, row in ((name, m), ("popularity", p)):
            lines.append(
                f"    {label:<12}{row['recall']:>12.4f}{row['ndcg']:>12.4f}{row['precision']:>12.4f}{row['map']:>12.4f}"
            )
        if p["ndcg"] > 0:
            lines.append(f"    {name} / popularity nDCG: {m['ndcg'] / p['ndcg']:.2f}x")
    return "\n".join(lines)


def summary_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, default=str)
