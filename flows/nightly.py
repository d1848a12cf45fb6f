"""The nightly flow for one date ``ds``: wiring only.

    source -ingest-> raw -split-> train / holdout -features-> examples
      -train-> model -evaluate-> metrics ; model -score-> top-K -publish-> tables

Each task loads its inputs from the run catalogue (``jobs.run_catalogue``),
calls one function of ``jobs/`` or ``models/`` and saves its output there;
tasks hand each other small dataclasses (``flows.summary``). Published
tables change only in the final publish task, each partition atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import time
import uuid

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pyspark.sql import DataFrame

from flows.config import ModelConfig, NightrecConfig
from flows.runtime import spark_for
from flows.summary import Embeddings, Evaluation, FittedWindow, Ingested, NightSummary, Split, TrainedModel
from jobs import embeddings, evaluate, features, history, ingest, recommend, sources, split
from jobs.run_catalogue import Dataset, RunCatalogue
from jobs.storage import Location

MODEL_VERSION_FORMAT = "{name}@{ds}"
#: The fitted feature state (vocabularies, scalers, imputers) beside the published feature tables.
FEATURE_STATE_FILE = "_feature_state.json"
#: The events each feature window is fitted on.
WINDOW_EVENTS = {"eval": ("train",), "full": ("train", "holdout")}


def _log(message: str) -> None:
    try:
        get_run_logger().info(message)
    except Exception:  # outside a flow/task run
        print(message, flush=True)


def _load_events(cat: RunCatalogue, spark, window: str) -> DataFrame:
    frames = [cat.dataset(name).load(spark) for name in WINDOW_EVENTS[window]]
    return frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])


# -- tasks ---------------------------------------------------------------------------------
@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(cfg: NightrecConfig, cat: RunCatalogue) -> Ingested:
    """Load the source, validate, keep events through ds; quarantine bad rows.

    Fails (``QuarantineError``) when the quarantined share of the run's
    interaction rows exceeds ``ingest.max_quarantine_share``.
    """
    spark = spark_for(cfg)
    now = cfg.ingest.now or dt.datetime.now(dt.timezone.utc)
    source = sources.load_source(spark, cfg.source.spec())
    rating_range = cfg.ingest.rating_range(source.rating_range)
    result = ingest.ingest_source(source, cat.ds, now=now, rating_range=rating_range)
    for name in ("interactions", "users", "items", "tags", "quarantine"):
        if getattr(result, name) is not None:
            cat.dataset(f"raw.{name}").save(getattr(result, name))
    cat.dataset("raw.source").write_json({
        "name": source.name, "rating_range": list(rating_range),
        "user_features": [dataclasses.asdict(d) for d in source.user_features],
        "item_features": [dataclasses.asdict(d) for d in source.item_features],
    })
    quarantine = cat.dataset("raw.quarantine")
    by_table = ingest.quarantine_counts(quarantine.load(spark))
    kept = cat.dataset("raw.interactions").load(spark).count()
    reasons: dict[str, int] = {}
    for table_reasons in by_table.values():
        for reason, n in table_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + n
    _log(f"ingest: {kept:,} events through {cat.ds}, {sum(reasons.values()):,} quarantined {by_table or ''}")
    share = ingest.check_quarantine_share(by_table, kept, max_share=cfg.ingest.max_quarantine_share,
                                          where=quarantine.location.display())
    return Ingested(events=kept, quarantined=dict(sorted(reasons.items())), quarantined_by_table=by_table,
                    quarantine_share=round(share, 6), source=source.name,
                    user_features=tuple(source.user_features), item_features=tuple(source.item_features),
                    rating_range=rating_range, now=now)


@task(name="split", cache_policy=NO_CACHE)
def split_task(cfg: NightrecConfig, cat: RunCatalogue) -> Split:
    """Temporal split: train before the cutoff, holdout in the last days through ds."""
    spark = spark_for(cfg)
    events = cat.dataset("raw.interactions").load(spark)
    train, holdout = split.temporal_split(events, cat.ds, holdout_days=cfg.split.holdout_days)
    cat.dataset("train").save(train)
    cat.dataset("holdout").save(holdout)
    counts = Split(train=cat.dataset("train").load(spark).count(), holdout=cat.dataset("holdout").load(spark).count())
    _log(f"split: {counts.train:,} train events, {counts.holdout:,} holdout events")
    if counts.train == 0:
        raise ValueError(f"no training events before the holdout of {cat.ds} "
                         f"(split.holdout_days={cfg.split.holdout_days}); pick a later ds or fewer holdout days")
    return counts


@task(name="features", cache_policy=NO_CACHE)
def features_task(cfg: NightrecConfig, cat: RunCatalogue, window: str, ingested: Ingested) -> FittedWindow:
    """Fit the feature state on a window's events; write its feature tables and leakage-safe examples.

    ``window`` "eval" is fitted on train (counted to the holdout start),
    "full" on everything through ds.
    """
    spark = spark_for(cfg)
    events = _load_events(cat, spark, window)
    users = cat.dataset("raw.users").load_optional(spark)
    items = cat.dataset("raw.items").load_optional(spark)
    tags = cat.dataset("raw.tags").load_optional(spark)
    as_of = split.window_end(cat.ds, cfg.split.holdout_days, includes_holdout=window == "full")
    if tags is not None:
        items = features.attach_tags(items, tags, as_of=as_of, max_tags_per_item=cfg.features.max_tags_per_item)
    fitter = features.FeatureFitter(ingested.user_features, ingested.item_features, cfg.features.settings(cfg.seed))
    fitted = fitter.fit_transform(events, users, items, as_of=as_of)
    state = fitted.state
    for side in ("user", "item"):
        out = cat.dataset(f"{window}.{side}_features")
        features.write_feature_table(getattr(fitted, f"{side}_features"), out.location)
        out.mark_complete()
    examples = cat.dataset(f"{window}.examples")
    n_examples = features.write_training_examples(events, users, items, state, examples.location, tables=fitted)
    examples.mark_complete()
    fitted.release()
    cat.dataset(f"{window}.feature_state").write_text(state.to_json())
    result = FittedWindow(window, state, users=cat.dataset(f"{window}.user_features").load(spark).count(),
                          items=cat.dataset(f"{window}.item_features").load(spark).count(), examples=n_examples)
    _log(f"features[{window}]: {len(state.user_vocab):,} users, {len(state.item_vocab):,} items in the vocabularies; "
         f"{result.users:,} user rows, {result.items:,} item rows, {n_examples:,} examples (as of {state.as_of})")
    return result


@task(name="holdout-examples", cache_policy=NO_CACHE)
def holdout_examples_task(cfg: NightrecConfig, cat: RunCatalogue) -> Dataset:
    """Holdout events joined with the eval window's features (early stopping, rating metrics)."""
    spark = spark_for(cfg)
    out = cat.dataset("eval.holdout_examples")
    out.save(features.join_features(cat.dataset("holdout").load(spark),
                                    cat.dataset("eval.user_features").load(spark),
                                    cat.dataset("eval.item_features").load(spark)))
    return out


@task(name="user-history", cache_policy=NO_CACHE)
def history_task(cfg: NightrecConfig, cat: RunCatalogue, fitted: FittedWindow, model_cfg: ModelConfig) -> Dataset:
    """The users' histories of the window's events (``jobs.history``), for models with a history input."""
    spark = spark_for(cfg)
    out = cat.dataset(f"{fitted.name}.user_history/{model_cfg.name}")
    out.save(history.user_history(_load_events(cat, spark, fitted.name), fitted.state,
                                  max_len=model_cfg.history_max_len))
    return out


@task(name="train", cache_policy=NO_CACHE)
def train_task(cfg: NightrecConfig, model_cfg: ModelConfig, cat: RunCatalogue, fitted: FittedWindow,
               holdout: Dataset | None = None, epochs: int | None = None) -> TrainedModel:
    """Train one model on a window's examples.

    With ``holdout`` (the eval window) the per-epoch holdout metric drives
    early stopping; the full window trains ``epochs`` (the eval run's best).
    """
    from models.train import train_model

    window = fitted.name
    user_history = history_task(cfg, cat, fitted, model_cfg) if model_cfg.history_max_len else None
    out = cat.dataset(f"{window}.model/{model_cfg.name}")
    logger = get_run_logger()
    result = train_model(
        model_cfg.kind, fitted.state.model_spec(), cat.dataset(f"{window}.examples").location, out.location,
        settings=model_cfg.train_settings(seed=cfg.seed, eval_k=cfg.evaluation.k, epochs=epochs),
        model_params=model_cfg.model_params(),
        item_features=cat.dataset(f"{window}.item_features").location,
        holdout=holdout.location if holdout is not None else None,
        feature_state_json=fitted.state.to_json(),
        user_history=user_history.location if user_history is not None else None,
        log=lambda line: logger.info(f"train[{model_cfg.name}/{window}] {line}"),
    )
    out.mark_complete()
    return TrainedModel(name=model_cfg.name, kind=model_cfg.kind, objective=model_cfg.objective, window=window,
                        model=out, best_epoch=result.best_epoch, factorised=result.factorised)


@task(name="embed", cache_policy=NO_CACHE)
def embed_task(cfg: NightrecConfig, cat: RunCatalogue, trained: TrainedModel, fitted: FittedWindow) -> Embeddings | None:
    """User and item embeddings of a factorised model, computed in Spark (None for the other models).

    Each Python worker loads the model once; each table holds ``{side}_id``
    and ``embedding``, sorted by id; their dot product is the model's score.
    """
    from models.data import side_columns
    from models.export import side_embedder
    from models.registry import version_key

    if not trained.factorised:
        return None
    spark = spark_for(cfg)
    spec = fitted.state.model_spec()
    tables = {}
    for side in ("user", "item"):
        out = cat.dataset(f"{fitted.name}.embeddings/{trained.name}/{side}")
        out.save(embeddings.embed_rows(
            cat.dataset(f"{fitted.name}.{side}_features").load(spark), id_col=f"{side}_id",
            columns=list(side_columns(spec[side])),
            build_embedder=functools.partial(side_embedder, trained.model_file, side),
            cache_key=f"{version_key(trained.model_file)}:{side}",
        ).sort(f"{side}_id"))
        tables[side] = out
    return Embeddings(**tables)


def _recommend(cfg: NightrecConfig, cat: RunCatalogue, model_cfg: ModelConfig, trained: TrainedModel,
               fitted: FittedWindow, vectors: dict[str, Embeddings | None], seen_events: DataFrame,
               users: DataFrame, k: int) -> DataFrame:
    """Top-K of a trained model for ``users`` (``jobs.recommend``): a factorised model from its embeddings,
    any other from its saved model (a scorer built in each Spark task), in two stages with ``retrieve_with``."""
    spark = spark_for(cfg)
    window = fitted.name
    common = dict(users=users, user_features=cat.dataset(f"{window}.user_features").load(spark), state=fitted.state,
                  seen_events=seen_events, k=k, settings=cfg.scoring.settings())
    own = vectors[model_cfg.name]
    if own is not None:
        item_ids, item_matrix = embeddings.load_embeddings(own.item.location, "item_id")
        return recommend.from_embeddings(**common, user_embeddings=embeddings.read_embeddings(spark, own.user.location,
                                                                                           "user_id"),
                                         item_ids=item_ids, item_matrix=item_matrix)
    from models.data import side_columns
    from models.model_scoring import spark_scorer_factory

    item_features = cat.dataset(f"{window}.item_features").location
    item_ids = embeddings.read_ids(item_features, "item_id")
    retriever = None
    if model_cfg.retrieve_with is not None:
        tables = vectors[model_cfg.retrieve_with]
        table_ids, matrix = embeddings.load_embeddings(tables.item.location, "item_id")
        retriever = (embeddings.read_embeddings(spark, tables.user.location, "user_id"),
                     recommend.rows_for(item_ids, table_ids, matrix, f"retriever {model_cfg.retrieve_with}"))
    build_scorer = spark_scorer_factory(trained.model_file, item_features, k, block_rows=cfg.scoring.block_rows,
                                        candidates=model_cfg.candidates if retriever is not None else None)
    return recommend.with_scorer(**common, item_ids=item_ids, user_columns=list(side_columns(fitted.state.model_spec()["user"])),
                                 build_scorer=build_scorer, retriever=retriever)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(cfg: NightrecConfig, cat: RunCatalogue, model_cfg: ModelConfig, trained: TrainedModel,
                  fitted: FittedWindow, vectors: dict[str, Embeddings | None],
                  holdout: Dataset) -> Evaluation:
    """P@K, Recall@K, nDCG@K and MAP@K on the holdout beside popularity; RMSE/MAE for rating models."""
    spark = spark_for(cfg)
    train = cat.dataset("train").load(spark)
    truth = evaluate.relevant_items(cat.dataset("holdout").load(spark), train).cache()
    holdout_users = truth.select("user_id").distinct()
    k = cfg.evaluation.k
    recs = _recommend(cfg, cat, model_cfg, trained, fitted, vectors, train, holdout_users, k)
    item_ids = embeddings.read_ids(cat.dataset("eval.item_features").location, "item_id")
    pop = recommend.popularity(train, holdout_users, item_ids, k, cfg.scoring.settings())
    result = Evaluation(k=k, model=evaluate.ranking_metrics(recs, truth, k),
                        popularity=evaluate.ranking_metrics(pop, truth, k))
    truth.unpersist()
    m, p = result.model, result.popularity
    line = (f"evaluate[{model_cfg.name}]: recall@{k} {m['recall']:.4f} vs popularity {p['recall']:.4f}; "
            f"ndcg@{k} {m['ndcg']:.4f} vs {p['ndcg']:.4f} ({m['users']:,} holdout users)")
    if trained.objective == "rating":
        from models.evaluation import RatingHoldout
        from models.registry import load_model

        model = load_model(trained.model_file)
        result = dataclasses.replace(result, rating=RatingHoldout(holdout.location, model.spec).evaluate(model))
        line += f"; rmse {result.rating['rmse']:.4f}, mae {result.rating['mae']:.4f}"
    _log(line)
    return result


@task(name="score", cache_policy=NO_CACHE)
def score_task(cfg: NightrecConfig, cat: RunCatalogue, model_cfg: ModelConfig, trained: TrainedModel,
               fitted: FittedWindow, vectors: dict[str, Embeddings | None]) -> Dataset:
    """Exhaustive top-K for every user, items rated up to ds excluded; ``source`` says how."""
    spark = spark_for(cfg)
    events = cat.dataset("raw.interactions").load(spark)
    users = cat.dataset(f"{fitted.name}.user_features").load(spark).select("user_id")
    out = cat.dataset(f"scored/{model_cfg.name}")
    out.save(_recommend(cfg, cat, model_cfg, trained, fitted, vectors, events, users, cfg.publish.k))
    counts = {r["source"]: int(r["count"]) for r in out.load(spark).groupBy("source").count().collect()}
    _log(f"score[{model_cfg.name}]: {sum(counts.values()):,} rows, by source {counts}")
    return out


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(cfg: NightrecConfig, cat: RunCatalogue, window: str, scored: dict[str, Dataset],
                 trained: dict[str, TrainedModel], vectors: dict[str, Embeddings | None],
                 metrics: dict[str, Evaluation], ingested: Ingested, split_counts: Split) -> dict[str, Location]:
    """Publish features, examples, quarantine, metrics, models and recommendations, each partition atomically."""
    spark = spark_for(cfg)
    pub = cat.publisher()
    base = {"ds": cat.ds.isoformat(), "config_hash": cfg.config_hash(), "run_id": cat.run_id}
    counts = {"events": ingested.events, "train": split_counts.train, "holdout": split_counts.holdout,
              "quarantined": ingested.quarantined, "quarantined_by_table": ingested.quarantined_by_table,
              "quarantine_share": ingested.quarantine_share, "source": ingested.source}
    published: dict[str, Location] = {}

    def put(table: str, df: DataFrame, manifest: dict, sort_by: tuple[str, ...] = (), **keys) -> dict:
        final = cat.partition(table, **keys)
        written = pub.publish_dataframe(df, final, {**base, "table": table, **keys, **manifest}, sort_by=sort_by,
                                        side_files=state_file if table in FEATURE_TABLES else None)
        published["/".join([table, *keys.values()])] = final
        return written

    state_file = {FEATURE_STATE_FILE: cat.dataset(f"{window}.feature_state").read_text()}
    for side in ("user", "item"):
        put(f"{side}_features", cat.dataset(f"{window}.{side}_features").load(spark), {}, sort_by=(f"{side}_id",))
    put("training_examples", cat.dataset(f"{window}.examples").load(spark), {"window": window})
    put("quarantine", cat.dataset("raw.quarantine").load(spark), {"reasons": ingested.quarantined})
    put("metrics", evaluate.metrics_frame(spark, {name: e.as_dict() for name, e in metrics.items()}), {},
        sort_by=("model", "scorer", "metric"))
    for name, recs in scored.items():
        model_version = MODEL_VERSION_FORMAT.format(name=name, ds=cat.ds.isoformat())
        final = cat.partition("models", model=name)
        tables = vectors.get(name)
        pub.publish_dataset(trained[name].model, final,
                            {**base, "table": "models", "model": name, "model_version": model_version},
                            beside={f"{side}_embeddings.parquet": getattr(tables, side) for side in ("user", "item")}
                            if tables is not None else None)
        published[f"models/{name}"] = final
        manifest = put("recommendations", recs.load(spark), {
            "model_version": model_version, "k": cfg.publish.k,
            "trained_on": "train+holdout through ds" if window == "full" else "train window",
            "scoring": cfg.model(name).scoring_mode(), "metrics": metrics[name].as_dict(), "counts": counts,
        }, sort_by=("user_id", "rank"), model=name)
        _log(f"publish: {manifest['row_count']:,} rows -> {cat.partition('recommendations', model=name).display()}")
    return published


FEATURE_TABLES = ("user_features", "item_features", "training_examples")


# -- the flow --------------------------------------------------------------------------------
@flow(name="nightrec-nightly")
def nightly(ds: dt.date, config: NightrecConfig) -> NightSummary:
    """Build and publish the tables of one night.

    Args:
        ds: the run date; the run sees events through the end of ds (UTC).
        config: the validated config (``flows.config.load_config``).

    Returns:
        NightSummary: counts, metrics per model, published partitions.
    """
    started = time.perf_counter()
    cfg = config
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    cat = RunCatalogue(Location(cfg.warehouse), ds, run_id)
    spark = spark_for(cfg)

    ingested = ingest_task(cfg, cat)
    split_counts = split_task(cfg, cat)
    fitted = {"eval": features_task(cfg, cat, "eval", ingested)}
    holdout = holdout_examples_task(cfg, cat)
    trained: dict[str, dict[str, TrainedModel]] = {"eval": {}}
    vectors: dict[str, dict[str, Embeddings | None]] = {"eval": {}}
    metrics: dict[str, Evaluation] = {}
    for m in cfg.models:
        trained["eval"][m.name] = train_task(cfg, m, cat, fitted["eval"], holdout=holdout)
        vectors["eval"][m.name] = embed_task(cfg, cat, trained["eval"][m.name], fitted["eval"])
        metrics[m.name] = evaluate_task(cfg, cat, m, trained["eval"][m.name], fitted["eval"], vectors["eval"],
                                        holdout)
    window = "full" if cfg.publish.refit_on_full else "eval"
    if window == "full":
        fitted["full"] = features_task(cfg, cat, "full", ingested)
        trained["full"] = {m.name: train_task(cfg, m, cat, fitted["full"], epochs=trained["eval"][m.name].best_epoch)
                           for m in cfg.models}
        vectors["full"] = {}
    scored = {}
    for m in cfg.models:
        if window == "full":
            vectors["full"][m.name] = embed_task(cfg, cat, trained["full"][m.name], fitted["full"])
        scored[m.name] = score_task(cfg, cat, m, trained[window][m.name], fitted[window], vectors[window])
    published = publish_task(cfg, cat, window, scored, trained[window], vectors[window], metrics, ingested,
                             split_counts)

    raw = cat.dataset("raw.interactions").load(spark)
    summary = NightSummary(
        ds=ds, warehouse=cat.warehouse, users=raw.select("user_id").distinct().count(),
        items=raw.select("item_id").distinct().count(), ingested=ingested, split=split_counts, metrics=metrics,
        published=published, seconds=round(time.perf_counter() - started, 1),
    )
    if not cfg.keep_work_dir:
        cat.remove_work()
    return summary
