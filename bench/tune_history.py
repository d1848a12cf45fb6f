"""Tune the two-tower with history on the validation split of bench/quality.py (never on its test split).

    .venv/bin/python bench/tune_history.py --work /tmp/tune [--grid NAME,...]

Carves the same validation split as ``bench/quality.py`` (ml-latest-small,
per-user 75/25 with seed 42, then a per-user 15% of train with seed 43),
prepares its features and user histories once under ``--work`` (reused by
later runs), then early-stops each setting of ``GRID`` on the validation
nDCG@10 and prints it beside the epoch it stopped at.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import quality  # noqa: E402

_BASE = {"embedding_dim": 128, "normalize": True, "tower_layers": [256], "dropout": 0.3}
_TRAIN = {**quality._SOFTMAX, "learning_rate": 0.002}

#: name -> (model params, training settings); the first is the current two_tower entry without history.
_HD = {**_BASE, "history_max_len": 200, "history_dropout": 0.5}
_H200 = {**_BASE, "history_max_len": 200}
_FULL = {"loss": "full_softmax", "learning_rate": 0.002, "batch_size": 1024, "temperature": 0.05}
GRID = {
    "shared_200_mask": ({**_BASE, "history_max_len": 200}, {**_TRAIN, "mask_history": True}),
    "own_200_noid_mask": ({**_BASE, "history_max_len": 200, "history_embedding": "own", "history_user_id": False},
                          {**_TRAIN, "mask_history": True}),
    "shared_200_hd0.5": (_HD, _TRAIN),
    "own_200_noid_hd0.5": ({**_HD, "history_embedding": "own", "history_user_id": False}, _TRAIN),
    "shared_200_noid_hd0.5": ({**_HD, "history_user_id": False}, _TRAIN),
    "shared_200_hd0.5_lr1e-3": (_HD, {**_TRAIN, "learning_rate": 0.001}),
    "no_history": (_BASE, _TRAIN),
    "shared_200": ({**_BASE, "history_max_len": 200}, _TRAIN),
    "own_200": ({**_BASE, "history_max_len": 200, "history_embedding": "own"}, _TRAIN),
    "shared_50": ({**_BASE, "history_max_len": 50}, _TRAIN),
    "shared_500": ({**_BASE, "history_max_len": 500}, _TRAIN),
    "shared_200_lr1e-3": ({**_BASE, "history_max_len": 200}, {**_TRAIN, "learning_rate": 0.001}),
    "shared_200_t0.1": ({**_BASE, "history_max_len": 200}, {**_TRAIN, "temperature": 0.1}),
    "shared_200_nologq": ({**_BASE, "history_max_len": 200}, {**_TRAIN, "log_q": False}),
    "shared_200_l2": ({**_BASE, "history_max_len": 200, "l2": 1e-5}, _TRAIN),
    "shared_200_d64": ({**_BASE, "embedding_dim": 64, "history_max_len": 200}, _TRAIN),
    "shared_200_noid": ({**_BASE, "history_max_len": 200, "history_user_id": False}, _TRAIN),
    "own_200_noid": ({**_BASE, "history_max_len": 200, "history_embedding": "own", "history_user_id": False}, _TRAIN),
    "own_100_noid": ({**_BASE, "history_max_len": 100, "history_embedding": "own", "history_user_id": False}, _TRAIN),
    "own_200_noid_t0.1": ({**_BASE, "history_max_len": 200, "history_embedding": "own", "history_user_id": False},
                          {**_TRAIN, "temperature": 0.1}),
    "own_200_noid_nodrop": ({**_BASE, "history_max_len": 200, "history_embedding": "own", "history_user_id": False,
                             "dropout": 0.0}, _TRAIN),
    # A softmax over the whole catalogue (loss full_softmax) instead of in-batch + sampled negatives.
    "full_nohist": (_BASE, _FULL),
    "full_200": (_H200, _FULL),
    "full_200_t0.1": (_H200, {**_FULL, "temperature": 0.1}),
    "full_200_t0.025": (_H200, {**_FULL, "temperature": 0.025}),
    "full_200_mask": (_H200, {**_FULL, "mask_history": True}),
    "full_200_l2": ({**_H200, "l2": 1e-5}, _FULL),
    "full_200_d64": ({**_H200, "embedding_dim": 64}, _FULL),
    "full_200_lr1e-3": (_H200, {**_FULL, "learning_rate": 0.001}),
    "full_200_noid": ({**_H200, "history_user_id": False}, _FULL),
    "full_200_hd0.5": ({**_H200, "history_dropout": 0.5}, _FULL),
    "full_200_l2_1e-4": ({**_H200, "l2": 1e-4}, _FULL),
    "full_200_w0.5": (_H200, {**_FULL, "user_weight_power": 0.5}),
    # Per-user example weighting (user_weight_power) with the in-batch loss of the bench entry.
    "shared_200_w0.5": (_H200, {**_TRAIN, "user_weight_power": 0.5}),
    "shared_200_w1": (_H200, {**_TRAIN, "user_weight_power": 1.0}),
    "full_200_t0.1_w0.5": (_H200, {**_FULL, "temperature": 0.1, "user_weight_power": 0.5}),
    "full_200_t0.1_w1": (_H200, {**_FULL, "temperature": 0.1, "user_weight_power": 1.0}),
    "shared_200_w0.5_l2": ({**_H200, "l2": 1e-4}, {**_TRAIN, "user_weight_power": 0.5}),
    "no_history_w0.5": (_BASE, {**_TRAIN, "user_weight_power": 0.5}),
    "shared_200_w0.5_idd0.3": ({**_H200, "id_dropout": 0.3}, {**_TRAIN, "user_weight_power": 0.5}),
    "shared_200_w0.5_drop0.5": ({**_H200, "dropout": 0.5}, {**_TRAIN, "user_weight_power": 0.5}),
    "shared_200_w0.25": (_H200, {**_TRAIN, "user_weight_power": 0.25}),
    "shared_200_w0.5_d64": ({**_H200, "embedding_dim": 64}, {**_TRAIN, "user_weight_power": 0.5}),
}


def prepared_validation(work: str, data: str, log) -> quality.Prepared:
    """The validation split's features, examples and histories (built once, then read from ``work``)."""
    marker = os.path.join(work, "val_prepared.json")
    if os.path.exists(marker):
        with open(marker) as fh:
            return quality.Prepared(**json.load(fh))
    from jobs import split
    from jobs.session import build_spark

    spark = build_spark(master="local[2]", app_name="nightrec-tune-history", driver_memory="2g",
                        shuffle_partitions=4, local_dir=os.path.join(work, "spark"),
                        checkpoint_dir=os.path.join(work, "checkpoints"))
    try:
        ratings, movies = quality.load_movielens(spark, data)
        train, _test = split.stratified_split(ratings.cache(), ratio=0.75, seed=42)
        sub, val = split.stratified_split(train.cache(), ratio=0.85, seed=43)
        log(f"validation split: {sub.count():,} / {val.count():,} ratings")
        prepared = quality.prepare(spark, work, "val", sub.cache(), None, movies, (), quality.ML_ITEM_FEATURES,
                                   heldout=val.cache())
    finally:
        spark.stop()
    with open(marker, "w") as fh:
        json.dump(prepared.__dict__, fh)
    return prepared


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "ml-latest-small"))
    parser.add_argument("--work", required=True)
    parser.add_argument("--grid", default="", help="comma-separated names of GRID (default: all)")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=3)
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    log = lambda line: print(line, flush=True)  # noqa: E731
    pv = prepared_validation(args.work, args.data, log)
    from jobs.storage import Location
    from models.settings import TrainSettings
    from models.train import train_model

    names = [n for n in args.grid.split(",") if n] or list(GRID)
    for name in names:
        params, settings = GRID[name]
        start = time.perf_counter()
        cpu = time.process_time()
        result = train_model(
            "two_tower", pv.spec, Location(pv.examples), Location(os.path.join(args.work, "tune", name)),
            settings=TrainSettings(**settings, epochs=args.max_epochs, patience=args.patience, seed=42),
            model_params=params, item_features=Location(pv.item_features), holdout=Location(pv.heldout_examples),
            user_history=Location(pv.history), log=lambda line, name=name: log(f"  {name}: {line}"),
        )
        curve = " ".join(f"{r['holdout']['ndcg']:.4f}" for r in result.history)
        log(f"{name:<22} val nDCG@10 {result.best_metric:.4f} at epoch {result.best_epoch:>2}  "
            f"({time.perf_counter() - start:.0f}s wall, {time.process_time() - cpu:.0f} CPU-s; "
            f"load {os.getloadavg()[0]:.1f})  curve {curve}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
