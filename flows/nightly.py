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
import functools
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

from flows.config import ModelConfig, NightrecConfig, ScoringConfig, load_config, parse_config
from flows.runtime import spark_for
from jobs import evaluate, features, history, ingest, scoring, sources, split
from jobs.tables import RunPaths, Warehouse

MODEL_VERSION_FORMAT = "{name}@{ds}"
#: The fitted feature state (vocabularies, scalers, imputers) beside the published feature tables.
FEATURE_STATE_FILE = "_feature_state.json"


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
    return sources.load_synthetic(spark, src.synthetic.spec())


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
        example_statistics=f.example_statistics,
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
    features.write_feature_table(fitted.user_features, paths.work(window, "user_features"))
    features.write_feature_table(fitted.item_features, paths.work(window, "item_features"))
    n_examples = features.write_training_examples(
        events, users, items, state, paths.work(window, "examples"), rows_per_partition=settings.rows_per_partition,
        tables=fitted,
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
def train_task(
    cfg: NightrecConfig, model_cfg: ModelConfig, paths: RunPaths, window: str, epochs: int | None = None
) -> dict[str, Any]:
    """Train one model on a window's examples.

    In the "eval" window the holdout (joined with the window's features) gives
    the per-epoch metric and early stopping; the "full" window has no holdout
    and trains for ``epochs`` (the eval run's best epoch).

    Returns:
        {"name", "model_dir", "best_epoch", "factorised", "kind", "objective"}.
    """
    from models.train import TrainSettings, train_model

    wh = Warehouse(spark_for(cfg), paths.root)
    state_json = wh.read_text(paths.work(window, "feature_state.json"))
    state = features.FeatureState.from_json(state_json)
    out_dir = paths.work(window, "models", model_cfg.name)
    holdout = _holdout_examples(cfg, paths, window) if window == "eval" else None
    settings = model_cfg.train_settings()
    if epochs is not None:
        settings["epochs"] = epochs
    logger = get_run_logger()
    history_path = _user_history(cfg, paths, window, state, model_cfg) if model_cfg.history_max_len else None
    result = train_model(
        model_cfg.kind,
        state.model_spec(),
        paths.work(window, "examples"),
        out_dir,
        settings=TrainSettings(**settings, seed=cfg.seed, eval_k=cfg.evaluation.k),
        model_params=model_cfg.model_params(),
        item_features_path=paths.work(window, "item_features"),
        holdout_path=holdout,
        feature_state_json=state_json,
        user_history_path=history_path,
        log=lambda line: logger.info(f"train[{model_cfg.name}/{window}] {line}"),
    )
    return {"name": model_cfg.name, "model_dir": out_dir, "best_epoch": result.best_epoch,
            "factorised": result.factorised, "kind": model_cfg.kind, "objective": model_cfg.objective}


def _user_history(cfg: NightrecConfig, paths: RunPaths, window: str, state: features.FeatureState,
                  model_cfg: ModelConfig) -> str:
    """Write the users' histories of the window's events (``jobs.history``) for one model; returns the path."""
    spark = spark_for(cfg)
    names = ["train"] if window == "eval" else ["train", "holdout"]
    events = _union([spark.read.parquet(paths.work(n)) for n in names])
    out = paths.work(window, "user_history", model_cfg.name)
    history.user_history(events, state, max_len=model_cfg.history_max_len).write.mode("overwrite").parquet(out)
    return out


@task(name="embed", cache_policy=NO_CACHE)
def embed_task(cfg: NightrecConfig, paths: RunPaths, window: str, trained: dict[str, Any]) -> dict[str, str]:
    """User and item embeddings of a factorised model, computed in Spark ({} for the other models).

    Each Python worker loads the model once; the tables land beside the model
    as Parquet folders ``{side}_embeddings.parquet`` (``{side}_id``,
    ``embedding``), sorted by id; their dot product is the model's score.
    """
    from models.data import side_columns
    from models.export import side_embedder
    from models.train import MODEL_FILE

    if not trained["factorised"]:
        return {}
    spark = spark_for(cfg)
    state_path = paths.work(window, "feature_state.json")
    spec = features.FeatureState.from_json(Warehouse(spark, paths.root).read_text(state_path)).model_spec()
    model_path = os.path.abspath(os.path.join(trained["model_dir"], MODEL_FILE))
    model_key = f"{model_path}@{os.path.getmtime(model_path)}"
    out = {"feature_state": state_path}
    for side in ("user", "item"):
        emb = scoring.embed_rows(
            spark.read.parquet(paths.work(window, f"{side}_features")),
            id_col=f"{side}_id",
            columns=list(side_columns(spec[side])),
            build_embedder=functools.partial(side_embedder, model_path, side),
            cache_key=f"{model_key}:{side}",
        )
        path = os.path.join(trained["model_dir"], f"{side}_embeddings.parquet")
        emb.sort(f"{side}_id").write.mode("overwrite").parquet(path)
        out[side] = path
    return out


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    cfg: NightrecConfig, paths: RunPaths, model_cfg: ModelConfig, trained: dict[str, Any], embeddings: dict[str, str]
) -> dict:
    """Recall@K / nDCG@K (and P@K, MAP@K) on the holdout beside popularity; RMSE/MAE for rating models."""
    spark = spark_for(cfg)
    train = spark.read.parquet(paths.work("train"))
    holdout = spark.read.parquet(paths.work("holdout"))
    truth = evaluate.relevant_items(holdout, train).cache()
    holdout_users = truth.select("user_id").distinct()
    k = cfg.evaluation.k
    recs = _recommend_with(cfg, paths, "eval", trained, embeddings, train, holdout_users, k)
    model_metrics = evaluate.ranking_metrics(recs, truth, k)
    pop = _popularity_recs(spark, train, holdout_users, _catalogue_ids(paths, "eval"), k, settings=cfg.scoring)
    pop_metrics = evaluate.ranking_metrics(pop, truth, k)
    truth.unpersist()
    result = {"k": k, "model": model_metrics, "popularity": pop_metrics}
    line = (
        f"evaluate[{model_cfg.name}]: recall@{k} {model_metrics['recall']:.4f} vs popularity "
        f"{pop_metrics['recall']:.4f}; ndcg@{k} {model_metrics['ndcg']:.4f} vs {pop_metrics['ndcg']:.4f} "
        f"({model_metrics['users']:,} holdout users)"
    )
    if trained["objective"] == "rating":
        from models.evaluation import RatingHoldout
        from models.train import MODEL_FILE, load_model

        model = load_model(os.path.join(trained["model_dir"], MODEL_FILE))
        result["rating"] = RatingHoldout(_holdout_examples(cfg, paths, "eval"), model.spec).evaluate(model)
        line += f"; rmse {result['rating']['rmse']:.4f}, mae {result['rating']['mae']:.4f}"
    _log(line)
    return result


@task(name="score", cache_policy=NO_CACHE)
def score_task(
    cfg: NightrecConfig,
    paths: RunPaths,
    model_cfg: ModelConfig,
    trained: dict[str, Any],
    embeddings: dict[str, str],
    window: str,
) -> str:
    """Exhaustive top-K for every user, items rated up to ds excluded; ``source`` says how."""
    spark = spark_for(cfg)
    events = spark.read.parquet(paths.work("raw", "interactions"))
    all_users = spark.read.parquet(paths.work(window, "user_features")).select("user_id")
    recs = _recommend_with(cfg, paths, window, trained, embeddings, events, all_users, cfg.publish.k)
    out = paths.work("recommendations", model_cfg.name)
    recs.write.mode("overwrite").parquet(out)
    counts = {r["source"]: int(r["count"]) for r in spark.read.parquet(out).groupBy("source").count().collect()}
    _log(f"score[{model_cfg.name}]: {sum(counts.values()):,} rows, by source {counts}")
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
    state_json = {FEATURE_STATE_FILE: wh.read_text(paths.work(window, "feature_state.json"))}
    for table in ("user_features", "item_features"):
        final = paths.partition(table)
        df = spark.read.parquet(paths.work(window, table))
        wh.publish_dataframe(df, final, {**base, "table": table}, sort_by=(table.split("_")[0] + "_id",),
                             side_files=state_json)
        published[table] = final
    final = paths.partition("training_examples")
    wh.publish_dataframe(spark.read.parquet(paths.work(window, "examples")), final,
                         {**base, "table": "training_examples", "window": window}, side_files=state_json)
    published["training_examples"] = final
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
        for metric in ("rmse", "mae"):
            if "rating" in result:  # rating models: error of the predicted rating on holdout rows (k is null)
                rows.append((name, "model", metric, None, float(result["rating"][metric]),
                             int(result["rating"]["rows"])))
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
                "scoring": _scoring_mode(cfg, name),
                "metrics": metrics.get(name, {}),
                "counts": counts,
            },
            sort_by=("user_id", "rank"),
        )
        published[f"recommendations/{name}"] = final
        _log(f"publish: {manifest['row_count']:,} rows -> {final}")
    return published


# -- helpers used by the tasks ------------------------------------------------------------
def _scoring_mode(cfg: NightrecConfig, name: str) -> str:
    """How a model's recommendations were selected (for the manifest)."""
    model_cfg = next(m for m in cfg.models if m.name == name)
    if model_cfg.retrieve_with is not None:
        return f"two-stage: top {model_cfg.candidates} unseen items by {model_cfg.retrieve_with}, ranked by {name}"
    return "exhaustive"


def _union(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def _maybe_read(spark, path: str) -> DataFrame | None:
    return spark.read.parquet(path) if os.path.exists(path) or "://" in path else None


def _scoring_kwargs(spark, settings: ScoringConfig | None) -> dict[str, int]:
    settings = settings or ScoringConfig()
    return {
        "partitions": 2 * spark.sparkContext.defaultParallelism,
        "block_rows": settings.block_rows,
        "item_block_bytes": settings.item_block_mb * 2**20,
        "group_width": settings.group_width,
    }


def _catalogue_ids(paths: RunPaths, window: str) -> pa.Array:
    """Item ids of a window's item feature table, ascending (the catalogue order)."""
    import pyarrow.parquet as pq

    ids = pq.read_table(paths.work(window, "item_features"), columns=["item_id"]).column(0).combine_chunks()
    return ids.take(pc.sort_indices(ids))


def _holdout_examples(cfg: NightrecConfig, paths: RunPaths, window: str) -> str:
    """Holdout events joined with a window's features (written once per run; a Parquet folder)."""
    out = paths.work(window, "holdout_examples")
    spark = spark_for(cfg)
    if not Warehouse(spark, paths.root).exists(out + "/_SUCCESS"):
        features.join_features(
            spark.read.parquet(paths.work("holdout")),
            spark.read.parquet(paths.work(window, "user_features")),
            spark.read.parquet(paths.work(window, "item_features")),
        ).write.mode("overwrite").parquet(out)
    return out


def _scoring_inputs(model_cfg: ModelConfig, embeddings_by_model: dict[str, dict]) -> dict:
    """What scoring ``model_cfg`` needs: its own embedding tables (factorised models; {} otherwise) and,
    for a two-stage ranking, the retriever's under "retriever" with the number of "candidates"."""
    own = dict(embeddings_by_model[model_cfg.name])
    if model_cfg.retrieve_with is not None:
        own["retriever"] = embeddings_by_model[model_cfg.retrieve_with]
        own["candidates"] = model_cfg.candidates
    return own


def _recommend_with(cfg: NightrecConfig, paths: RunPaths, window: str, trained: dict[str, Any],
                    embeddings: dict[str, Any], seen_events: DataFrame, users: DataFrame, k: int) -> DataFrame:
    """Top-K of a trained model for ``users`` in Spark: a factorised model from its embeddings
    (``_recommend``), any other model from its saved file (``_recommend_with_model``), in two
    stages when ``embeddings`` has a "retriever"."""
    spark = spark_for(cfg)
    if trained["factorised"]:
        return _recommend(spark, embeddings, seen_events, users, paths.work(window, "user_features"), k,
                          settings=cfg.scoring)
    return _recommend_with_model(spark, paths, window, trained, seen_events, users, k, settings=cfg.scoring,
                                 retriever=embeddings.get("retriever"), candidates=embeddings.get("candidates"))


def _recommend(spark, embeddings: dict[str, str], seen_events: DataFrame, users: DataFrame,
               user_features_path: str, k: int, *, settings: ScoringConfig | None = None) -> DataFrame:
    """Top-K for ``users``, items in ``seen_events`` excluded.

    Known users are scored from their embedding (source "model"), users
    without history from the embedding of their side features ("features"),
    users with nothing usable by popularity ("popularity").

    Returns:
        DataFrame[user_id, rank, item_id, score, source].
    """
    state_path = embeddings["feature_state"]
    state = features.FeatureState.from_json(Warehouse(spark, state_path.rsplit("/", 1)[0]).read_text(state_path))
    item_ids, item_matrix = scoring.load_embeddings(spark, embeddings["item"], "item_id")
    catalogue = scoring.catalogue_frame(spark, item_ids)
    seen = scoring.seen_positions(seen_events, catalogue)
    user_emb = scoring.read_embeddings(spark, embeddings["user"], "user_id")
    sources = scoring.assign_sources(users, spark.read.parquet(user_features_path), state)
    by_model = sources.where(F.col("source") != "popularity").join(user_emb, on="user_id", how="inner")
    rows = by_model.join(seen, on="user_id", how="left")
    model_recs = scoring.top_k_for_users(rows, item_ids, item_matrix, k=k, **_scoring_kwargs(spark, settings))
    rest = sources.select("user_id").join(by_model.select("user_id"), on="user_id", how="left_anti")
    pop = _popularity_recs(spark, seen_events, rest, item_ids, k, settings=settings)
    return model_recs.unionByName(pop)


def _recommend_with_model(spark, paths: RunPaths, window: str, trained: dict[str, Any], seen_events: DataFrame,
                          users: DataFrame, k: int, *, settings: ScoringConfig | None = None,
                          retriever: dict[str, str] | None = None, candidates: int | None = None) -> DataFrame:
    """Top-K of a non-factorised model, in Spark.

    Each Python worker loads the saved model once and computes the item
    parts of the whole catalogue once (``models.topk.catalogue_scorer``);
    every task then scores its users ``scoring.block_rows`` at a time
    (``models.topk.ArrowBatchScorer``: each user's parts once, only the pair
    part per (user, item)), exhaustively, or with a ``retriever`` (the
    embedding tables of a factorised model) in two stages: the retriever's
    ``candidates`` best unseen items per user, ranked by the model. Users are
    routed as in ``_recommend`` (``scoring.assign_sources``): the model
    scores the "model" and "features" users, popularity the rest.

    Returns:
        DataFrame[user_id, rank, item_id, score, source].
    """
    from models.data import side_columns
    from models.topk import ArrowBatchScorer, catalogue_scorer
    from models.train import MODEL_FILE

    settings = settings or ScoringConfig()
    model_path = os.path.abspath(os.path.join(trained["model_dir"], MODEL_FILE))
    user_features_path = paths.work(window, "user_features")
    item_features_path = paths.work(window, "item_features")
    state = features.FeatureState.from_json(
        Warehouse(spark, paths.root).read_text(paths.work(window, "feature_state.json")))
    user_inputs = list(side_columns(state.model_spec()["user"]))
    user_features = spark.read.parquet(user_features_path)
    sources = scoring.assign_sources(users, user_features, state)
    by_model = sources.where(F.col("source") != "popularity")
    item_ids = _catalogue_ids(paths, window)
    seen = scoring.seen_positions(seen_events, scoring.catalogue_frame(spark, item_ids))
    rows = by_model.join(user_features.select("user_id", *user_inputs), on="user_id").join(seen, on="user_id",
                                                                                           how="left")
    item_vectors = None
    if retriever is not None:
        rows = rows.join(scoring.read_embeddings(spark, retriever["user"], "user_id"), on="user_id", how="left")
        item_vectors = _vectors_for(spark, retriever["item"], "item_id", item_ids)
    cache_key = f"catalogue-scorer:{model_path}@{os.path.getmtime(model_path)}:{os.path.abspath(item_features_path)}"
    build_catalogue = functools.partial(catalogue_scorer, model_path, item_features_path)
    block_rows = settings.block_rows

    def build_scorer(payload, lo: int) -> ArrowBatchScorer:
        return ArrowBatchScorer(scoring.worker_cached(cache_key, build_catalogue), k, block_rows=block_rows,
                                item_vectors=payload, candidates=candidates)

    model_recs = scoring.score_in_spark(rows, item_ids, [(0, item_vectors)], build_scorer, k=k,
                                        partitions=2 * spark.sparkContext.defaultParallelism)
    rest = sources.where(F.col("source") == "popularity").select("user_id")
    pop = _popularity_recs(spark, seen_events, rest, item_ids, k, settings=settings)
    return model_recs.unionByName(pop)


def _vectors_for(spark, path: str, id_col: str, ids: pa.Array) -> np.ndarray:
    """Rows of an embedding table for ``ids``, in that order: [len(ids), d] float32 (every id must be there)."""
    table_ids, matrix = scoring.load_embeddings(spark, path, id_col)
    index = pc.index_in(ids, value_set=table_ids)
    if index.null_count:
        raise ValueError(f"two-stage scoring: {index.null_count} {id_col}s have no row in the retriever's "
                         f"embeddings {path}")
    return np.ascontiguousarray(matrix[index.to_numpy().astype(np.int64)], dtype=np.float32)


def _popularity_recs(spark, events: DataFrame, users: DataFrame, item_ids: pa.Array, k: int,
                     *, settings: ScoringConfig | None = None) -> DataFrame:
    """Most-interacted catalogue items (in ``events``) per user, seen items excluded.

    Args:
        item_ids: the catalogue, ascending.

    Returns:
        DataFrame[user_id, rank, item_id, score (the item's event count), source = "popularity"].
    """
    catalogue = scoring.catalogue_frame(spark, item_ids)
    counts = events.join(F.broadcast(catalogue), on="item_id").groupBy("pos").count().toArrow()
    matrix = np.zeros((len(item_ids), 1), dtype=np.float32)
    matrix[counts.column("pos").to_numpy(), 0] = counts.column("count").to_numpy()
    seen = scoring.seen_positions(events, catalogue)
    rows = (
        users.join(seen, on="user_id", how="left")
        .withColumn("embedding", F.array(F.lit(1.0).cast("float")))
        .withColumn("source", F.lit("popularity"))
    )
    return scoring.top_k_for_users(rows, item_ids, matrix, k=k, **_scoring_kwargs(spark, settings))


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
    eval_runs: dict[str, dict] = {}
    eval_embeddings: dict[str, dict] = {}
    for model_cfg in cfg.models:
        eval_runs[model_cfg.name] = train_task(cfg, model_cfg, paths, "eval")
        eval_embeddings[model_cfg.name] = embed_task(cfg, paths, "eval", eval_runs[model_cfg.name])
        emb = _scoring_inputs(model_cfg, eval_embeddings)
        metrics[model_cfg.name] = evaluate_task(cfg, paths, model_cfg, eval_runs[model_cfg.name], emb)

    window = "eval"
    final_runs = eval_runs
    if cfg.publish.refit_on_full:
        window = "full"
        features_task(cfg, paths, "full", ["train", "holdout"])
        final_runs = {
            m.name: train_task(cfg, m, paths, "full", epochs=eval_runs[m.name]["best_epoch"]) for m in cfg.models
        }
    recs_paths = {}
    final_embeddings: dict[str, dict] = {}
    for model_cfg in cfg.models:
        final_embeddings[model_cfg.name] = embed_task(cfg, paths, window, final_runs[model_cfg.name])
        emb = _scoring_inputs(model_cfg, final_embeddings)
        recs_paths[model_cfg.name] = score_task(cfg, paths, model_cfg, final_runs[model_cfg.name], emb, window)
    final_dirs = {name: run["model_dir"] for name, run in final_runs.items()}
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
        if "rating" in result:
            r = result["rating"]
            lines.append(f"    rating error on {r['rows']:,} holdout rows: RMSE {r['rmse']:.4f}, MAE {r['mae']:.4f}")
    return "\n".join(lines)


def summary_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, default=str)
