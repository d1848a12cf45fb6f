"""Tasks of the data side of a night: ingest, split, the feature windows, holdout examples, user histories."""

from __future__ import annotations

import dataclasses
import datetime as dt

from prefect import task
from prefect.cache_policies import NO_CACHE
from pyspark.sql import DataFrame

from flows.config import ModelConfig, NightrecConfig
from flows.runtime import log, spark_for, tracked
from flows.summary import FittedWindow, Ingested, Split
from jobs import features, history, ingest, sources, split
from jobs.run_catalogue import Dataset, RunCatalogue

#: The events each feature window is fitted on.
WINDOW_EVENTS = {"eval": ("train",), "full": ("train", "holdout")}


def load_events(cat: RunCatalogue, spark, window: str) -> DataFrame:
    """The events a window is fitted on (``WINDOW_EVENTS``)."""
    frames = [cat.dataset(name).load(spark) for name in WINDOW_EVENTS[window]]
    return frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])


@task(name="ingest", cache_policy=NO_CACHE)
@tracked
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
    log(f"ingest: {kept:,} events through {cat.ds}, {sum(reasons.values()):,} quarantined {by_table or ''}")
    share = ingest.check_quarantine_share(by_table, kept, max_share=cfg.ingest.max_quarantine_share,
                                          where=quarantine.location.display())
    return Ingested(events=kept, quarantined=dict(sorted(reasons.items())), quarantined_by_table=by_table,
                    quarantine_share=round(share, 6), source=source.name,
                    user_features=tuple(source.user_features), item_features=tuple(source.item_features),
                    rating_range=rating_range, now=now)


@task(name="split", cache_policy=NO_CACHE)
@tracked
def split_task(cfg: NightrecConfig, cat: RunCatalogue) -> Split:
    """Temporal split: train before the cutoff, holdout in the last days through ds."""
    spark = spark_for(cfg)
    events = cat.dataset("raw.interactions").load(spark)
    train, holdout = split.temporal_split(events, cat.ds, holdout_days=cfg.split.holdout_days)
    cat.dataset("train").save(train)
    cat.dataset("holdout").save(holdout)
    counts = Split(train=cat.dataset("train").load(spark).count(), holdout=cat.dataset("holdout").load(spark).count())
    log(f"split: {counts.train:,} train events, {counts.holdout:,} holdout events")
    if counts.train == 0:
        raise ValueError(f"no training events before the holdout of {cat.ds} "
                         f"(split.holdout_days={cfg.split.holdout_days}); pick a later ds or fewer holdout days")
    return counts


@task(name="features", cache_policy=NO_CACHE)
@tracked
def features_task(cfg: NightrecConfig, cat: RunCatalogue, window: str, ingested: Ingested) -> FittedWindow:
    """Fit the feature state on a window's events; write its feature tables and leakage-safe examples.

    ``window`` "eval" is fitted on train (counted to the holdout start),
    "full" on everything through ds.
    """
    spark = spark_for(cfg)
    events = load_events(cat, spark, window)
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
    log(f"features[{window}]: {len(state.user_vocab):,} users, {len(state.item_vocab):,} items in the vocabularies; "
         f"{result.users:,} user rows, {result.items:,} item rows, {n_examples:,} examples (as of {state.as_of})")
    return result


@task(name="holdout-examples", cache_policy=NO_CACHE)
@tracked
def holdout_examples_task(cfg: NightrecConfig, cat: RunCatalogue) -> Dataset:
    """Holdout events joined with the eval window's features (early stopping, rating metrics)."""
    spark = spark_for(cfg)
    out = cat.dataset("eval.holdout_examples")
    out.save(features.join_features(cat.dataset("holdout").load(spark),
                                    cat.dataset("eval.user_features").load(spark),
                                    cat.dataset("eval.item_features").load(spark)))
    return out


@task(name="user-history", cache_policy=NO_CACHE)
@tracked
def history_task(cfg: NightrecConfig, cat: RunCatalogue, fitted: FittedWindow, model_cfg: ModelConfig) -> Dataset:
    """The users' histories of the window's events (``jobs.history``), for models with a history input."""
    spark = spark_for(cfg)
    out = cat.dataset(f"{fitted.name}.user_history/{model_cfg.name}")
    out.save(history.user_history(load_events(cat, spark, fitted.name), fitted.state,
                                  max_len=model_cfg.history_max_len))
    return out


