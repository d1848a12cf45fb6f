"""Tasks of the model side of a night: train, embed, evaluate, score."""

from __future__ import annotations

import dataclasses
import functools
import threading

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from flows.config import CO_OCCURRENCE, ModelConfig, NightrecConfig
from flows.data_tasks import history_task
from flows.runtime import log, pause_point, progress, spark_for, tracked
from flows.summary import Embeddings, Evaluation, FittedWindow, TrainedModel
from jobs import embeddings, evaluate, recommend
from jobs.run_catalogue import Dataset, RunCatalogue

#: Training is serialised within a process: TensorFlow's seeds and determinism switches are process-wide,
#: so two nights trained side by side (a backfill with max_concurrency > 1) would disturb each other.
TRAINING = threading.Lock()


@task(name="train", cache_policy=NO_CACHE)
def train_task(cfg: NightrecConfig, model_cfg: ModelConfig, cat: RunCatalogue, fitted: FittedWindow,
               holdout: Dataset | None = None, epochs: int | None = None) -> TrainedModel:
    """Train one model on a window's examples.

    With ``holdout`` (the eval window) the per-epoch holdout metric drives
    early stopping; the full window trains ``epochs`` (the eval run's best).
    """
    from models.kinds import KINDS
    from models.launch import TrainJob, train

    window = fitted.name
    if not KINDS[model_cfg.kind].keras:
        return _train_als(cfg, model_cfg, cat, fitted)
    user_history = history_task(cfg, cat, fitted, model_cfg) if model_cfg.history_max_len else None
    out = cat.dataset(f"{window}.model/{model_cfg.name}")
    logger = get_run_logger()

    def epoch_line(line: str) -> None:
        logger.info(f"train[{model_cfg.name}/{window}] {line}")
        pause_point("train:epoch")

    job = TrainJob(
        kind=model_cfg.kind, spec=fitted.state.model_spec(), examples=cat.dataset(f"{window}.examples").location,
        out_dir=out.location,
        settings=model_cfg.train_settings(seed=cfg.seed, eval_k=cfg.evaluation.k, epochs=epochs),
        model_params=model_cfg.model_params(),
        item_features=cat.dataset(f"{window}.item_features").location,
        holdout=holdout.location if holdout is not None else None,
        feature_state_json=fitted.state.to_json(),
        user_history=user_history.location if user_history is not None else None,
        # in the run's work folder: a rerun of a failed night resumes the training from its last checkpoint
        checkpoint_dir=cat.dataset(f"{window}.checkpoints/{model_cfg.name}").location,
    )
    launch_settings = cfg.training.settings()
    barrier = None
    if launch_settings.launcher == "spark" and not launch_settings.in_process:
        from jobs.distributed import barrier_runner

        barrier = barrier_runner(spark_for(cfg))
    with TRAINING, progress(f"train[{model_cfg.name}/{window}]"):
        result = train(job, launch_settings, barrier=barrier, log=epoch_line)
    if result.resumed_from_step:
        log(f"train[{model_cfg.name}/{window}]: resumed from the checkpoint of step {result.resumed_from_step}")
    out.mark_complete()
    return TrainedModel(name=model_cfg.name, kind=model_cfg.kind, objective=model_cfg.objective, window=window,
                        model=out, best_epoch=result.best_epoch, factorised=result.factorised)


#: The settings file of an ``als`` model folder (the factors are its embedding tables).
ALS_FILE = "als.json"


def _train_als(cfg: NightrecConfig, model_cfg: ModelConfig, cat: RunCatalogue, fitted: FittedWindow) -> TrainedModel:
    """Spark MLlib ALS on the window's events (``jobs.als``): its factors saved as the window's embedding
    tables of the model, its settings as the model folder."""
    import json

    from jobs import als

    spark = spark_for(cfg)
    window = fitted.name
    events = cat.dataset("train" if window == "eval" else "raw.interactions").load(spark)
    settings = model_cfg.als_settings(seed=cfg.seed)
    with progress(f"train[{model_cfg.name}/{window}] (Spark ALS)", spark):
        factors = als.train_als(events, settings)
        for side in ("user", "item"):
            table = factors.user_embeddings() if side == "user" else factors.item_embeddings()
            cat.dataset(f"{window}.embeddings/{model_cfg.name}/{side}").save(table)
    out = cat.dataset(f"{window}.model/{model_cfg.name}")
    out.location.delete()
    (out.location / ALS_FILE).write_text(json.dumps({"kind": model_cfg.kind, **dataclasses.asdict(settings)},
                                                    indent=2))
    out.mark_complete()
    log(f"train[{model_cfg.name}/{window}]: ALS rank {settings.rank}, {settings.max_iter} iterations, "
        f"{settings.objective}")
    return TrainedModel(name=model_cfg.name, kind=model_cfg.kind, objective=model_cfg.objective, window=window,
                        model=out, best_epoch=settings.max_iter, factorised=True)


@task(name="embed", cache_policy=NO_CACHE)
@tracked
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
    if (trained.model.location / ALS_FILE).is_file():  # ALS saved its factors when it trained
        return Embeddings(**{side: cat.dataset(f"{fitted.name}.embeddings/{trained.name}/{side}")
                             for side in ("user", "item")})
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
                  seen_events=seen_events, k=k, settings=cfg.scoring.settings(cfg.seed))
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


def _holdout_truth(cfg: NightrecConfig, cat: RunCatalogue, spark) -> tuple[DataFrame, DataFrame]:
    """(train events, the relevant holdout pairs with their ``slice``, cached): the one definition every
    evaluation of the night uses (``jobs.evaluate.relevant_items``, ``jobs.evaluate.slice_pairs``)."""
    train = cat.dataset("train").load(spark)
    truth = evaluate.relevant_items(cat.dataset("holdout").load(spark), train)
    if cfg.evaluation.slices:
        truth = evaluate.slice_pairs(truth, train, activity_edges=cfg.evaluation.activity_edges)
    return train, truth.cache()


def _item_genres(cat: RunCatalogue, spark) -> DataFrame | None:
    """The items' genre sets when the source's item table has a ``genres`` column (None otherwise)."""
    items = cat.dataset("raw.items").load_optional(spark)
    if items is None or "genres" not in items.columns:
        return None
    return evaluate.item_genres(items)


def _list_rows(lists: DataFrame, truth: DataFrame, train: DataFrame, catalogue: DataFrame, genres, *,
               model: str, scorer: str, k: int) -> list[evaluate.MetricRow]:
    """Ranking metrics by slice and the beyond-accuracy metrics of one scorer's top-k lists."""
    rows = evaluate.metric_rows(evaluate.ranking_evaluation(lists, truth, [k]), model=model, scorer=scorer)
    if lists.limit(1).count():
        rows += evaluate.metric_rows(evaluate.beyond_accuracy(lists, train=train, catalogue=catalogue, k=k,
                                                              genres=genres), model=model, scorer=scorer)
    return rows


def headline(rows, scorer: str) -> dict[str, float]:
    """The slice "all" ranking figures of ``scorer`` among metrics-table rows (zeros, users 0: no user)."""
    found = {r["metric"]: r for r in rows if r["scorer"] == scorer and r["slice"] == evaluate.ALL
             and r["metric"] in evaluate.RANKING_METRICS}
    out = {m: float(found[m]["value"]) if m in found else 0.0 for m in evaluate.RANKING_METRICS}
    out["users"] = int(found["ndcg"]["users"]) if "ndcg" in found else 0
    return out


def _rating_figures(cfg: NightrecConfig, cat: RunCatalogue, trained: TrainedModel,
                    vectors: dict[str, Embeddings | None], holdout: Dataset, train: DataFrame) -> dict[str, float]:
    """{"rmse", "mae", "rows"} of a rating model on the held-out ratings: a Keras model through
    ``models.evaluation.RatingHoldout``; ALS by the dot product of its factors (the training mean where
    it has none)."""
    if not (trained.model.location / ALS_FILE).is_file():
        from models.evaluation import RatingHoldout
        from models.registry import load_model

        model = load_model(trained.model_file)
        return RatingHoldout(holdout.location, model.spec).evaluate(model)
    spark = spark_for(cfg)
    own = vectors[trained.name]
    mean = train.where("rating IS NOT NULL").agg(F.avg("rating")).first()[0] or 0.0
    users = own.user.load(spark).withColumnRenamed("embedding", "_u")
    items = own.item.load(spark).withColumnRenamed("embedding", "_i")
    dot = F.aggregate(F.zip_with("_u", "_i", lambda a, b: a * b), F.lit(0.0).cast("double"), lambda acc, x: acc + x)
    rows = (cat.dataset("holdout").load(spark).where("rating IS NOT NULL")
            .join(users, "user_id", "left").join(items, "item_id", "left")
            .withColumn("prediction", F.coalesce(dot, F.lit(float(mean)))))
    figures = {r["metric"]: (r["value"], r["users"]) for r in evaluate.rating_evaluation(rows).collect()}
    n = int(figures["rmse"][1]) if figures else 0
    return {"rmse": float(figures["rmse"][0]) if n else 0.0, "mae": float(figures["mae"][0]) if n else 0.0,
            "rows": n}


def related_items(cfg: NightrecConfig, cat: RunCatalogue, trained: TrainedModel, fitted: FittedWindow,
                  vectors: dict[str, Embeddings | None]) -> DataFrame:
    """Every catalogue item's top ``related_items.k`` other items by a factorised model (``jobs.related``):
    ``item_item`` by its item-item weights B = E Q^T, any other by the cosine of its item embeddings.

    Returns:
        DataFrame[item_id, rank, related_item_id, score].
    """
    from jobs import related

    spark = spark_for(cfg)
    k = cfg.related_items.k
    item_ids, item_matrix = embeddings.load_embeddings(vectors[trained.name].item.location, "item_id")
    if trained.kind != "item_item":
        return related.from_embeddings(spark, item_ids, item_matrix, k=k, settings=cfg.scoring.settings(cfg.seed))
    from models.registry import load_model

    history_side = load_model(trained.model_file).history_items.embeddings.numpy()
    features = cat.dataset(f"{fitted.name}.item_features").location.read_parquet(["item_id", "item_idx"])
    index = dict(zip(features.column("item_id").to_pylist(), features.column("item_idx").to_pylist()))
    rows = [index[i] for i in item_ids.to_pylist()]
    return related.from_factors(spark, item_ids, history_side[rows].astype("float32"), item_matrix, k=k,
                                settings=cfg.scoring.settings(cfg.seed))


def _related_rows(related: DataFrame, train: DataFrame, truth: DataFrame, *, model: str, scorer: str,
                  k: int) -> list[evaluate.MetricRow]:
    from jobs import related as related_jobs

    frame = related_jobs.hit_rate(related, train, truth.where(F.col("slice") == evaluate.ALL)
                                  if "slice" in truth.columns else truth, ks=[k]).where(F.col("value").isNotNull())
    return evaluate.metric_rows(frame, model=model, scorer=scorer)


@task(name="related", cache_policy=NO_CACHE)
@tracked
def related_task(cfg: NightrecConfig, cat: RunCatalogue, trained: TrainedModel | None, fitted: FittedWindow,
                 vectors: dict[str, Embeddings | None]) -> Dataset:
    """The related items to publish: of ``trained`` (the publishing window's model), or with None the
    co-occurrence baseline of the window's events."""
    from jobs import related

    spark = spark_for(cfg)
    if trained is None:
        out = cat.dataset(f"related/{CO_OCCURRENCE}")
        events = cat.dataset("train" if fitted.name == "eval" else "raw.interactions").load(spark)
        out.save(related.co_occurrence(events, k=cfg.related_items.k))
    else:
        out = cat.dataset(f"related/{trained.name}")
        out.save(related_items(cfg, cat, trained, fitted, vectors))
    return out


@task(name="evaluate-baselines", cache_policy=NO_CACHE)
@tracked
def baselines_task(cfg: NightrecConfig, cat: RunCatalogue, fitted: FittedWindow) -> Evaluation:
    """The baselines on the holdout, by slice, with their beyond-accuracy metrics (the same for every model):
    popularity, and (``evaluation.als_baseline``) Spark MLlib ALS, implicit, with Spark's default settings
    (rank 10, 10 iterations, reg_param 0.1, alpha 1), scored by the exhaustive top-K job.

    Returns:
        Evaluation with ``popularity`` (slice "all") and ``rows`` of model "" and scorers "popularity"
        (and "als"); ``model`` is empty.
    """
    spark = spark_for(cfg)
    k = cfg.evaluation.k
    train, truth = _holdout_truth(cfg, cat, spark)
    users = truth.select("user_id").distinct()
    item_ids = embeddings.read_ids(cat.dataset("eval.item_features").location, "item_id")
    catalogue = cat.dataset("eval.item_features").load(spark).select("item_id")
    genres = _item_genres(cat, spark)
    lists = {"popularity": recommend.popularity(train, users, item_ids, k, cfg.scoring.settings(cfg.seed))}
    if cfg.evaluation.als_baseline:
        from jobs import als

        factors = als.train_als(train, als.ALSSettings(seed=cfg.seed))
        als_items, als_matrix = embeddings.collect_embeddings(factors.item_embeddings(), "item_id")
        lists["als"] = recommend.from_embeddings(
            users=users, user_features=cat.dataset("eval.user_features").load(spark), state=fitted.state,
            seen_events=train, user_embeddings=factors.user_embeddings(), item_ids=als_items,
            item_matrix=als_matrix, k=k, settings=cfg.scoring.settings(cfg.seed))
    rows = []
    for scorer, recs in lists.items():
        recs = recs.cache()
        rows += _list_rows(recs, truth, train, catalogue, genres, model="", scorer=scorer, k=k)
        recs.unpersist()
    if cfg.related_models() and cfg.related_items.co_occurrence:
        from jobs import related

        rows += _related_rows(related.co_occurrence(train, k=cfg.related_items.k), train, truth, model="",
                              scorer=CO_OCCURRENCE, k=cfg.related_items.k)
    truth.unpersist()
    records = tuple(dataclasses.asdict(r) for r in rows)
    result = Evaluation(k=k, model={}, popularity=headline(records, "popularity"), rows=records)
    n = result.popularity["users"]
    als_ndcg = headline(records, "als")["ndcg"] if "als" in lists else None
    log(f"evaluate[baselines]: ndcg@{k} popularity {result.popularity['ndcg']:.4f}"
        + (f", als {als_ndcg:.4f}" if als_ndcg is not None else "") + f" over {n:,} holdout users")
    if n < cfg.evaluation.min_holdout_users:
        log(f"evaluate: WARNING: the holdout has {n:,} users with relevant items, fewer than "
            f"evaluation.min_holdout_users = {cfg.evaluation.min_holdout_users:,}: the night cannot rank models "
            f"and the gate holds them back (split.holdout_days widens the holdout; gate.publish_anyway overrides)")
    return result


@task(name="evaluate", cache_policy=NO_CACHE)
@tracked
def evaluate_task(cfg: NightrecConfig, cat: RunCatalogue, model_cfg: ModelConfig, trained: TrainedModel,
                  fitted: FittedWindow, vectors: dict[str, Embeddings | None],
                  holdout: Dataset, baselines: Evaluation) -> Evaluation:
    """The model's ranking metrics by slice and beyond-accuracy metrics on the holdout, beside the night's
    baselines (``baselines_task``); RMSE/MAE beside the user-mean and item-mean baselines for rating models.

    Returns:
        Evaluation: slice "all" figures of the model and popularity, and every row of the metrics table
        of this model (scorers "model", "popularity", and "user_mean" / "item_mean" for rating models).
    """
    spark = spark_for(cfg)
    k = cfg.evaluation.k
    name = model_cfg.name
    train, truth = _holdout_truth(cfg, cat, spark)
    users = truth.select("user_id").distinct()
    recs = _recommend(cfg, cat, model_cfg, trained, fitted, vectors, train, users, k).cache()
    catalogue = cat.dataset("eval.item_features").load(spark).select("item_id")
    rows = _list_rows(recs, truth, train, catalogue, _item_genres(cat, spark), model=name, scorer="model", k=k)
    recs.unpersist()
    if name in cfg.related_models():
        rows += _related_rows(related_items(cfg, cat, trained, fitted, vectors), train, truth, model=name,
                              scorer="model", k=cfg.related_items.k)
    truth.unpersist()
    records = [dataclasses.asdict(r) for r in rows]
    records += [{**r, "model": name} for r in baselines.rows]
    m, p = headline(records, "model"), baselines.popularity
    line = (f"evaluate[{name}]: recall@{k} {m['recall']:.4f} vs popularity {p['recall']:.4f}; "
            f"ndcg@{k} {m['ndcg']:.4f} vs {p['ndcg']:.4f} ({m['users']:,} holdout users)")
    rating = None
    if trained.objective == "rating":
        rating = _rating_figures(cfg, cat, trained, vectors, holdout, train)
        records += [dataclasses.asdict(evaluate.MetricRow(name, "model", evaluate.ALL, metric, None,
                                                          float(rating[metric]), int(rating["rows"])))
                    for metric in evaluate.RATING_METRICS if rating["rows"]]
        rated = cat.dataset("holdout").load(spark).where("rating IS NOT NULL")
        if rating["rows"] and train.where("rating IS NOT NULL").limit(1).count():
            for scorer, predicted in evaluate.mean_baselines(train, rated).items():
                records += [dataclasses.asdict(r) for r in evaluate.metric_rows(
                    evaluate.rating_evaluation(predicted), model=name, scorer=scorer)]
        line += f"; rmse {rating['rmse']:.4f}, mae {rating['mae']:.4f}"
    log(line)
    return Evaluation(k=k, model=m, popularity=p, rating=rating, rows=tuple(records))


@task(name="score", cache_policy=NO_CACHE)
@tracked
def score_task(cfg: NightrecConfig, cat: RunCatalogue, model_cfg: ModelConfig, trained: TrainedModel,
               fitted: FittedWindow, vectors: dict[str, Embeddings | None]) -> Dataset:
    """Exhaustive top-K for every user, items rated up to ds excluded; ``source`` says how."""
    spark = spark_for(cfg)
    events = cat.dataset("raw.interactions").load(spark)
    users = cat.dataset(f"{fitted.name}.user_features").load(spark).select("user_id")
    out = cat.dataset(f"scored/{model_cfg.name}")
    out.save(_recommend(cfg, cat, model_cfg, trained, fitted, vectors, events, users, cfg.publish.k))
    counts = {r["source"]: int(r["count"]) for r in out.load(spark).groupBy("source").count().collect()}
    log(f"score[{model_cfg.name}]: {sum(counts.values()):,} rows, by source {counts}")
    if cfg.scoring.method == "ann" and vectors[model_cfg.name] is not None:
        _measure_recall(cfg, cat, model_cfg, fitted, vectors[model_cfg.name], out, events, users)
    return out


def _measure_recall(cfg: NightrecConfig, cat: RunCatalogue, model_cfg: ModelConfig, fitted: FittedWindow,
                    own: Embeddings, recs: Dataset, events: DataFrame, users: DataFrame) -> None:
    """recall@K of the ann lists against exact scoring on a seeded sample of users, saved as
    ``recall/NAME``; below ``scoring.ann.recall_floor`` the run fails (``jobs.ann.RecallBelowFloor``)."""
    from jobs import ann

    spark = spark_for(cfg)
    item_ids, item_matrix = embeddings.load_embeddings(own.item.location, "item_id")
    _, rows = recommend.embedding_rows(
        users=users, user_features=cat.dataset(f"{fitted.name}.user_features").load(spark), state=fitted.state,
        seen_events=events, user_embeddings=embeddings.read_embeddings(spark, own.user.location, "user_id"),
        item_ids=item_ids)
    report = recommend.ann_recall(recs.load(spark), rows, item_ids, item_matrix, k=cfg.publish.k,
                                  sample_users=cfg.scoring.ann.recall_sample_users, seed=cfg.seed,
                                  settings=cfg.scoring.settings(cfg.seed))
    cat.dataset(f"recall/{model_cfg.name}").write_json({**report.as_manifest(), "floor": cfg.scoring.ann.recall_floor,
                                                       "index": cfg.scoring.ann.index})
    log(f"score[{model_cfg.name}]: ann recall@{report.k} {report.recall} against exact scoring on "
        f"{report.users:,} sampled users (floor {cfg.scoring.ann.recall_floor})")
    try:
        ann.check_recall(report, cfg.scoring.ann.recall_floor)
    except ann.RecallBelowFloor as exc:
        raise ann.RecallBelowFloor(f"model '{model_cfg.name}': {exc} (raise scoring.ann.nprobe or ef_search, "
                                   f"or lower scoring.ann.recall_floor)") from None


