"""The Keras half of the offline benchmark: the default model set, early stopping then refit, top-K of a matrix.

``flows.benchmark`` runs it beside ``jobs.protocols`` (the split, features
and Spark baselines); bench/quality.py reports with the same code.

The default set (``IMPLICIT``, ``RATING``) holds every model family with the
settings picked from small hand-run grids scored on the validation split
carved from train (never on the test split).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from jobs.storage import Location

if TYPE_CHECKING:
    from jobs.protocols import Prepared

K = 10
#: Longest user history the benchmark's feature stage writes (a model with a shorter history_max_len keeps the
#: most recent); ml-latest-small's heaviest user has 2,024 training items.
HISTORY_TABLE_LEN = 2500


@dataclasses.dataclass(frozen=True)
class Entry:
    """One benchmarked model: a kind, its hyper-parameters and its training settings (``TrainSettings`` keys
    other than epochs, patience and seed); ``max_epochs`` / ``patience``: its own early stopping (None: the
    benchmark's)."""

    name: str
    kind: str
    params: dict
    settings: dict
    max_epochs: int | None = None
    patience: int | None = None

    @property
    def objective(self) -> str:
        return self.settings.get("objective", "implicit")


_SOFTMAX = {"learning_rate": 0.005, "batch_size": 1024, "temperature": 0.05, "extra_negatives": 2048}
_BCE = {"learning_rate": 0.003, "batch_size": 1024, "negatives": "uniform", "negative_ratio": 8}
_RATING = {"objective": "rating", "learning_rate": 0.003, "batch_size": 1024}
#: The two_tower entry's settings plus the user's history (the 200 most recent training items).
_TT_HISTORY = {"embedding_dim": 128, "normalize": True, "tower_layers": [256], "dropout": 0.3, "history_max_len": 200}

IMPLICIT = [
    Entry("mf", "mf", {"embedding_dim": 64, "l2": 1e-4}, {**_SOFTMAX, "temperature": 0.1}),
    Entry("mf_mean", "mf_mean", {"embedding_dim": 64, "l2": 1e-4}, {**_SOFTMAX, "temperature": 0.1}),
    Entry("linear_rs", "linear_rs", {"embedding_dim": 64, "l2": 1e-4}, {**_SOFTMAX, "temperature": 0.1}),
    Entry("two_tower", "two_tower", {"embedding_dim": 128, "normalize": True, "tower_layers": [256], "dropout": 0.3},
          {**_SOFTMAX, "learning_rate": 0.002}),
    # two_tower plus the user's history (the 200 most recent training items, the item tower's id embedding);
    # tuned on the validation split by bench/tune_history.py.
    Entry("two_tower_history", "two_tower", _TT_HISTORY,
          {**_SOFTMAX, "learning_rate": 0.002}),
    # two_tower_history with per-user example weights (user_weight_power 0.5: each rating weighs
    # 1/sqrt(its user's training rows)); tuned on the validation split by bench/tune_history.py.
    Entry("two_tower_history_weighted", "two_tower", _TT_HISTORY,
          {**_SOFTMAX, "learning_rate": 0.002, "user_weight_power": 0.5}),
    # two_tower_history trained with a softmax over the whole catalogue (loss full_softmax, no sampling, no
    # log-Q) at temperature 0.1; tuned on the validation split by bench/tune_history.py.
    Entry("two_tower_history_full", "two_tower", _TT_HISTORY,
          {"loss": "full_softmax", "learning_rate": 0.002, "batch_size": 1024, "temperature": 0.1}),
    # The factorised item-item model (EASE with B = E Q^T of rank 512): the user is the sum of their history's
    # embeddings (their whole history), trained on EASE's reconstruction loss; l2 = EASE's lambda / users.
    Entry("item_item", "item_item", {"embedding_dim": 512, "history_max_len": HISTORY_TABLE_LEN, "l2": 0.3},
          {"learning_rate": 0.003, "batch_size": 1024}),
    # The dense head scores every (user, item) pair of the batch through rho: no extra negatives.
    Entry("two_tower_dense", "two_tower_dense",
          {"embedding_dim": 64, "tower_layers": [128], "head_layers": [64], "dropout": 0.3},
          {**_SOFTMAX, "extra_negatives": 0}),
    Entry("fm", "fm", {"embedding_dim": 32}, _BCE),
    Entry("deepfm", "deepfm", {"embedding_dim": 32, "deep_layers": [128, 64], "dropout": 0.3, "l2": 1e-4}, _BCE),
    Entry("wide_deep", "wide_deep", {"embedding_dim": 32, "deep_layers": [128, 64], "dropout": 0.3, "l2": 1e-4},
          _BCE),
    Entry("gmf", "gmf", {"embedding_dim": 32}, {**_BCE, "learning_rate": 0.01, "negative_ratio": 4}),
    Entry("mlp_ncf", "mlp_ncf", {"embedding_dim": 32, "mlp_layers": [64, 32]}, _BCE),
    Entry("ancf", "ancf", {"embedding_dim": 32, "mlp_layers": [64, 32], "l2": 1e-4}, _BCE),
    Entry("neumf", "neumf", {"embedding_dim": 32, "mlp_layers": [64, 32], "l2": 1e-4}, _BCE),
]
RATING = [
    Entry("mf_mean", "mf_mean", {"embedding_dim": 32, "l2": 1e-4}, _RATING),
    Entry("linear_rs", "linear_rs", {"embedding_dim": 32, "l2": 1e-4, "biases": True}, _RATING),
    Entry("two_tower", "two_tower", {"embedding_dim": 32, "tower_layers": [64], "biases": True, "l2": 1e-4,
                                     "dropout": 0.3}, _RATING),
    Entry("fm", "fm", {"embedding_dim": 16, "l2": 1e-3}, _RATING),
    Entry("deepfm", "deepfm", {"embedding_dim": 16, "deep_layers": [64, 32], "l2": 1e-3, "dropout": 0.3}, _RATING),
    Entry("wide_deep", "wide_deep", {"embedding_dim": 16, "deep_layers": [64, 32], "l2": 1e-4, "dropout": 0.3},
          _RATING),
    Entry("neumf", "neumf", {"embedding_dim": 16, "mlp_layers": [64, 32], "l2": 1e-4, "dropout": 0.3}, _RATING),
]


# -- training ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Fitted:
    """A refitted model, the epochs it was refitted for, its validation metric and the refit's wall time (s)."""

    model: object
    best_epoch: int
    val_metric: float | None
    seconds: float


def fit(entry: Entry, val: "Prepared", full: "Prepared", work: Location, max_epochs: int, patience: int,
        rank_heldout_items: bool = False, seed: int = 42, refit_epochs: int | None = None) -> Fitted:
    """Early-stop on the validation split, then refit on all of train for the best epoch count.

    Args:
        val, full: the features of the sub-train window (its ``heldout_examples``: the validation split)
            and of the whole train window (``jobs.protocols.prepare``).
        work: scratch folder of the saved models.
        rank_heldout_items: the validation metric ranks only the validation split's own items (cold items).
        seed: the training's (initialisation, shuffling, sampling); the splits keep theirs.
        refit_epochs: refit for this many epochs instead of the validation's best.
    """
    from models.registry import load_model
    from models.settings import TrainSettings
    from models.train import train_model

    quiet = lambda line: None  # noqa: E731
    max_epochs = entry.max_epochs or max_epochs
    patience = patience if entry.patience is None else entry.patience
    first = train_model(
        entry.kind, val.spec, val.examples, work / "val" / entry.name,
        settings=TrainSettings(**entry.settings, epochs=max_epochs, patience=patience, seed=seed),
        model_params=entry.params, item_features=val.item_features, holdout=val.heldout_examples,
        holdout_catalogue=val.heldout_items if rank_heldout_items else None, user_history=val.history,
        log=quiet,
    )
    epochs = refit_epochs or first.best_epoch
    start = time.perf_counter()
    final = train_model(
        entry.kind, full.spec, full.examples, work / "full" / entry.name,
        settings=TrainSettings(**entry.settings, epochs=epochs, patience=0, seed=seed),
        model_params=entry.params, item_features=full.item_features, user_history=full.history,
        log=quiet,
    )
    seconds = time.perf_counter() - start
    return Fitted(load_model(final.model_file), epochs, first.best_metric, seconds)


# -- top-K of a score matrix -----------------------------------------------------------------------------
def side_table(location: Location, side_spec: dict, id_col: str):
    """The ``models.catalogue`` side table of a feature table (ids in catalogue order)."""
    from models.catalogue import read_side_table

    return read_side_table(location, side_spec, id_col)


def seen_lists(examples: Location, users, catalogue) -> list[np.ndarray]:
    """Catalogue positions of each user's training items ([] for users without any)."""
    from models.data import parquet_files
    from models.evaluation import items_by_user

    return items_by_user(parquet_files(examples), users, catalogue)


def top_unseen(scores: np.ndarray, seen: list[np.ndarray], k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """Top-k positions and scores per row, seen positions excluded (-1 where none is left): [n, k] each."""
    from jobs.topk import top_k_rows

    scores = np.array(scores, dtype=np.float32)
    for row, items in enumerate(seen):
        scores[row, items] = -np.inf
    cols, values = top_k_rows(scores, k)
    return np.where(np.isfinite(values), cols, -1), values


def recs_from_scores(users, catalogue, scores: np.ndarray, seen: list[np.ndarray], k: int = K) -> pa.Table:
    """Top-k of a dense [n_users, n_items] score matrix (jobs.topk's exact selection): Arrow
    [user_id, rank, item_id, score]."""
    cols, values = top_unseen(scores, seen, k)
    keep = cols >= 0
    rows = np.broadcast_to(np.arange(len(seen))[:, None], cols.shape)[keep]
    pos, vals = cols[keep], values[keep]
    counts = np.bincount(rows, minlength=len(users))
    rank = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    return pa.table({"user_id": users.ids.take(pa.array(rows)), "rank": pa.array(rank.astype(np.int32)),
                     "item_id": catalogue.ids.take(pa.array(pos)), "score": pa.array(vals)})


def rating_errors(predicted: np.ndarray, actual: np.ndarray) -> dict:
    """RMSE, MAE and the row count of rating predictions."""
    err = np.asarray(predicted, np.float64) - np.asarray(actual, np.float64)
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))), "rows": int(err.size)}
