"""Tasks of the model side of a night: train, embed, evaluate, score."""

from __future__ import annotations

import dataclasses
import functools
import threading

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pyspark.sql import DataFrame

from flows.config import ModelConfig, NightrecConfig
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
    from models.train import train_model

    window = fitted.name
    user_history = history_task(cfg, cat, fitted, model_cfg) if model_cfg.history_max_len else None
    out = cat.dataset(f"{window}.model/{model_cfg.name}")
    logger = get_run_logger()

    def epoch_line(line: str) -> None:
        logger.info(f"train[{model_cfg.name}/{window}] {line}")
        pause_point("train:epoch")

    with TRAINING, progress(f"train[{model_cfg.name}/{window}]"):
        result = train_model(
            model_cfg.kind, fitted.state.model_spec(), cat.dataset(f"{window}.examples").location, out.location,
            settings=model_cfg.train_settings(seed=cfg.seed, eval_k=cfg.evaluation.k, epochs=epochs),
            model_params=model_cfg.model_params(),
            item_features=cat.dataset(f"{window}.item_features").location,
            holdout=holdout.location if holdout is not None else None,
            feature_state_json=fitted.state.to_json(),
            user_history=user_history.location if user_history is not None else None,
            log=epoch_line,
        )
    out.mark_complete()
    return TrainedModel(name=model_cfg.name, kind=model_cfg.kind, objective=model_cfg.objective, window=window,
                        model=out, best_epoch=result.best_epoch, factorised=result.factorised)


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
@tracked
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
    log(line)
    return result


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
    return out


