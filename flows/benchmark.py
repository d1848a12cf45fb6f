"""The offline benchmark (``nightrec benchmark``): models and baselines on one dataset under one protocol.

What it runs (one process, one SparkSession, seeds fixed), the protocols
being ``jobs.protocols``'s:

1. the dataset through the product's loader and ingest; the protocol's test
   split, and a validation split carved from train the same way;
2. popularity (training counts), Spark ALS implicit (tuned by a small grid on
   the validation split's nDCG@10, and with Spark's usual defaults) and ALS
   explicit (tuned on the validation RMSE): top-10 over the items each user
   did not see in training, the catalogue being the training items;
3. every model (``models.offline.IMPLICIT`` and ``RATING`` without a
   config; the config's ``models:`` with it), early-stopped on the
   validation split, refitted on all of train for the best epoch count and
   scored by ``models.model_scoring.recommend``; rating models add RMSE/MAE.

Each row: P@10, R@10, nDCG@10, MAP@10 and coverage (``jobs.evaluate``),
RMSE/MAE where they apply, and the final fit's wall time.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable

from jobs.protocols import FORMATS, PROTOCOLS, DatasetError  # noqa: F401  (the CLI's choices and errors)

#: The printed columns: (key in --json and the header, internal key, width, format).
COLUMNS = (("p@10", "precision", 8, ".4f"), ("r@10", "recall", 8, ".4f"), ("ndcg@10", "ndcg", 9, ".4f"),
           ("map@10", "map", 8, ".4f"), ("rmse", "rmse", 8, ".4f"), ("mae", "mae", 8, ".4f"),
           ("coverage", "coverage", 9, ".4f"), ("train_s", "seconds", 9, ".1f"))
HEADER = f"{'name':<28}{'objective':<10}" + "".join(f"{key:>{width}}" for key, _, width, _ in COLUMNS) + "  note"


def format_row(row: dict) -> str:
    """One row of the table (blank cells where a figure does not apply)."""
    cells = [f"{row['model']:<28}", f"{row.get('objective', ''):<10}"]
    for _, key, width, spec in COLUMNS:
        cells.append(f"{row[key]:>{width}{spec}}" if row.get(key) is not None else " " * width)
    return ("".join(cells) + f"  {row.get('note', '')}").rstrip()


def format_rows(rows: Iterable[dict]) -> str:
    """The table: the header, then one line per row."""
    return "\n".join([HEADER, *(format_row(r) for r in rows)])


def json_rows(rows: Iterable[dict]) -> list[dict]:
    """The rows keyed as printed: {"name", "objective", "p@10", ..., "train_s", "note"} (null where n/a)."""
    return [{"name": r["model"], "objective": r.get("objective"),
             **{key: r.get(internal) for key, internal, _, _ in COLUMNS}, "note": r.get("note", "")} for r in rows]


def config_entries(cfg) -> list:
    """The config's Keras models as benchmark entries (kind ``als`` is the ALS baseline: skipped)."""
    from models.kinds import KINDS
    from models.offline import Entry

    skipped = {"epochs", "patience", "seed"}
    entries = []
    for m in cfg.models:
        if not KINDS[m.kind].keras:
            continue
        settings = {k: v for k, v in dataclasses.asdict(m.train_settings(seed=42, eval_k=10)).items()
                    if k not in skipped}
        entries.append(Entry(m.name, m.kind, m.model_params(), settings, max_epochs=m.epochs, patience=m.patience))
    return entries


def _spark(cfg, scratch: str):
    from pyspark.sql import SparkSession

    from jobs.session import build_spark

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    settings = cfg.spark.model_dump() if cfg is not None else {
        "master": "local[2]", "driver_memory": "2g", "shuffle_partitions": 4}
    settings = {**settings, "app_name": "nightrec-benchmark"}
    return build_spark(**settings, local_dir=os.path.join(scratch, "spark"),
                       checkpoint_dir=os.path.join(scratch, "checkpoints")), True


def benchmark_rows(cfg=None, *, dataset: str, format: str, protocol: str, only: set[str] = frozenset(),
                   max_epochs: int = 30, patience: int = 3, als_grid: str = "tuned", train_seed: int = 42,
                   refit_epochs: int | None = None, objective: str | None = None, work: str | None = None,
                   log: Callable[[str], None] = print) -> list[dict]:
    """Train and evaluate the models and baselines of the benchmark (module docstring); one dict per row.

    Args:
        cfg: a ``NightrecConfig`` whose ``models`` (and ``spark``) are used; None: the default set.
        only: model names to train (all when empty); the baselines always run.
        als_grid: ``tuned`` (grid on the validation split) or ``defaults`` (Spark's usual settings only).
        objective: only the models of this objective (``implicit`` or ``rating``).
        work: scratch folder (default: a temporary one, removed afterwards).
    """
    if protocol not in PROTOCOLS:
        raise DatasetError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if als_grid not in ("tuned", "defaults"):
        raise DatasetError(f"als_grid {als_grid!r}: expected tuned or defaults")
    from jobs.protocols import check_dataset
    from models import offline

    check_dataset(dataset, format)
    entries = config_entries(cfg) if cfg is not None else offline.IMPLICIT + offline.RATING
    unknown = sorted(set(only) - {e.name for e in entries})
    if unknown:
        raise DatasetError(f"--only {','.join(unknown)}: no such model; the models are "
                           f"{', '.join(sorted({e.name for e in entries}))}")
    entries = [e for e in entries if (not only or e.name in only) and (objective is None or e.objective == objective)]
    scratch = work or tempfile.mkdtemp(prefix="nightrec-benchmark-")
    spark, own = _spark(cfg, scratch)
    try:
        return _run(spark, scratch, dataset, format, protocol, entries, max_epochs=max_epochs, patience=patience,
                    als_grid=als_grid, train_seed=train_seed, refit_epochs=refit_epochs, log=log)
    finally:
        if own:
            spark.stop()
        if work is None:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(spark, scratch: str, dataset: str, format: str, protocol: str, entries: list, *, max_epochs: int,
         patience: int, als_grid: str, train_seed: int, refit_epochs: int | None,
         log: Callable[[str], None]) -> list[dict]:
    import numpy as np

    from jobs import evaluate, protocols, schema
    from jobs.storage import Location
    from models import offline
    from models.evaluation import RankingHoldout, RatingHoldout, ranking_metrics
    from models.model_scoring import recommend

    k = protocols.K
    work = Location(scratch)
    ratings, items = protocols.load_dataset(spark, dataset, format)
    ratings = ratings.cache()
    train, test = protocols.protocol_split(ratings, protocol)
    sub, val = protocols.validation_split(train, protocol)
    train, test, sub, val = (d.cache() for d in (train, test, sub, val))
    log(f"{dataset}: {ratings.count():,} ratings -> train {train.count():,} / test {test.count():,} ({protocol}); "
        f"validation carved from train: {sub.count():,} / {val.count():,}")
    item_decls = schema.MOVIELENS_ITEM_FEATURES if items is not None else ()
    windows = {name: protocols.prepare(work / name, events, None, items, (), item_decls, heldout=held,
                                       history_len=offline.HISTORY_TABLE_LEN)
               for name, events, held in (("val", sub, val), ("full", train, test))}
    pv, pf = windows["val"], windows["full"]
    users = offline.side_table(pf.user_features, pf.spec["user"], "user_id")
    catalogue = offline.side_table(pf.item_features, pf.spec["item"], "item_id")
    seen = offline.seen_lists(pf.examples, users, catalogue)
    truth = evaluate.relevant_items(test, train).cache()
    val_rank = RankingHoldout.from_examples(pv.heldout_examples, pv.examples, pv.item_features, pv.spec, k=k,
                                            max_users=10 ** 6)

    def ranked(recs) -> dict:
        return protocols.metrics_of(spark, recs, truth, catalogue_size=len(catalogue), k=k)

    def scored(u, v) -> dict:
        return ranked(offline.recs_from_scores(users, catalogue, u @ v.T, seen, k))

    rows = []
    log(HEADER)

    def add(row: dict) -> None:
        rows.append(row)
        log(format_row(row))

    counts = protocols.counts_by_position(pf.examples, catalogue)
    add({"model": "popularity", "objective": "implicit",
         **ranked(offline.recs_from_scores(users, catalogue, counts[None, :].repeat(len(users), 0), seen, k))})

    def val_ndcg(params) -> float:
        u, v = protocols.als_factors(protocols.fit_als(sub, True, params), val_rank.users, val_rank.catalogue)
        top, _ = offline.top_unseen(u @ v.T, val_rank.seen, k)
        return ranking_metrics(top, val_rank.relevant, k)["ndcg"]

    def timed_als(events, implicit: bool, params: dict):
        start = time.perf_counter()
        model = protocols.fit_als(events, implicit, params)
        return model, time.perf_counter() - start

    implicit_grid = {"tuned": max(protocols.ALS_IMPLICIT_GRID, key=val_ndcg)} if als_grid == "tuned" else {}
    for label, params in {**implicit_grid, "defaults": protocols.ALS_DEFAULTS}.items():
        model, seconds = timed_als(train, True, params)
        add({"model": f"als_implicit ({label})", "objective": "implicit", "seconds": seconds,
             "note": ", ".join(f"{key}={value}" for key, value in params.items()),
             **scored(*protocols.als_factors(model, users, catalogue))})

    test_rows = pf.heldout_examples.parquet_dataset().to_table(columns=["user_id", "item_id", "rating"]).to_pandas()
    val_rows = pv.heldout_examples.parquet_dataset().to_table(columns=["user_id", "item_id", "rating"]).to_pandas()

    def als_rmse(model, frame) -> dict:
        pred = protocols.als_predictions(spark, model, frame)  # the test ratings' mean where ALS has no prediction
        return offline.rating_errors(np.where(np.isnan(pred), frame["rating"].mean(), pred), frame["rating"])

    explicit = {key: value for key, value in protocols.ALS_DEFAULTS.items() if key != "alpha"}
    if als_grid == "tuned":
        explicit = min(protocols.ALS_EXPLICIT_GRID, key=lambda p: als_rmse(protocols.fit_als(sub, False, p),
                                                                           val_rows)["rmse"])
    model, seconds = timed_als(train, False, explicit)
    add({"model": f"als_explicit ({als_grid})", "objective": "rating", "seconds": seconds,
         "note": ", ".join(f"{key}={value}" for key, value in explicit.items()), **als_rmse(model, test_rows)})

    for entry in entries:
        fitted = offline.fit(entry, pv, pf, work / "models" / entry.objective, max_epochs, patience,
                             seed=train_seed, refit_epochs=refit_epochs)
        row = {"model": entry.name, "objective": entry.objective, "seconds": fitted.seconds,
               "note": f"{fitted.best_epoch} epochs",
               **ranked(recommend(fitted.model, users, catalogue, seen, k))}
        if entry.objective == "rating":
            row.update(RatingHoldout(pf.heldout_examples, pf.spec).evaluate(fitted.model))
        add(row)
    truth.unpersist()
    return rows
