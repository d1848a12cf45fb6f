"""The nightly flow with models that read the users' histories (history_max_len): a two-tower and item_item."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from tests.fixtures.tiny_night import DS, TINY, events_through_ds, run_nightly

MAX_LEN = 5
RELATED_K = 4


@pytest.fixture(scope="module")
def history_run(spark, prefect_server, tmp_path_factory):
    warehouse = tmp_path_factory.mktemp("warehouse_history")
    model = {**TINY["models"][0], "name": "tt_history", "history_max_len": MAX_LEN, "mask_history": True}
    # The same model trained with a softmax over the whole catalogue and per-user weights.
    full = {**model, "name": "tt_full", "loss": "full_softmax", "user_weight_power": 0.5}
    # The item-item model: the user is the sum of their history's embeddings.
    item_item = {"name": "item_item", "kind": "item_item", "history_max_len": MAX_LEN, "embedding_dim": 8,
                 "l2": 0.01, "epochs": 2, "batch_size": 128}
    summary = run_nightly({**TINY, "models": [model, full, item_item], "warehouse": str(warehouse),
                           "related_items": {"models": ["item_item"], "co_occurrence": False, "k": RELATED_K}})
    return warehouse, summary


def test_published_model_holds_the_full_windows_histories(history_run):
    from models.registry import load_model

    warehouse, summary = history_run
    folder = os.path.join(warehouse, "models", f"ds={DS}", "model=tt_history")
    model = load_model(os.path.join(folder, "model.keras"))
    events = events_through_ds()     # refit_on_full: the published model's window is train + holdout
    user_index = {u: n + 2 for n, u in enumerate(sorted(events.user_id.unique()))}
    item_index = {i: n + 2 for n, i in enumerate(sorted(events.item_id.unique()))}
    latest = events.assign(item_idx=events.item_id.map(item_index)).groupby(["user_id", "item_idx"],
                                                                           as_index=False).ts.max()
    latest = latest.sort_values(["user_id", "ts", "item_idx"], ascending=[True, False, True])
    expected = np.full((len(user_index) + 2, MAX_LEN), -1, np.int32)
    for user, rows in latest.groupby("user_id"):
        top = rows.item_idx.head(MAX_LEN).to_numpy()
        expected[user_index[user], : len(top)] = top
    np.testing.assert_array_equal(np.asarray(model.user_history), expected)


@pytest.mark.parametrize("name", ["tt_history", "tt_full", "item_item"])
def test_recommendations_and_metrics_are_published(history_run, name):
    warehouse, summary = history_run
    recs = pd.read_parquet(os.path.join(warehouse, "recommendations", f"ds={DS}", f"model={name}"))
    assert recs.groupby("user_id").size().max() == TINY["publish"]["k"]
    assert name in summary.metrics
    with open(os.path.join(warehouse, "models", f"ds={DS}", f"model={name}", "train.json")) as fh:
        expected = {"tt_full": "full_softmax", "item_item": "reconstruction"}.get(name, "in_batch_softmax")
        assert json.load(fh)["loss"] == expected


def test_item_item_user_embeddings_are_the_sums_of_their_history_items(history_run):
    from models.registry import load_model

    warehouse, _ = history_run
    folder = os.path.join(warehouse, "models", f"ds={DS}", "model=item_item")
    model = load_model(os.path.join(folder, "model.keras"))
    lists = np.asarray(model.user_history)
    table = np.asarray(model.history_items.embeddings)
    users = pd.read_parquet(os.path.join(folder, "user_embeddings.parquet"))
    events = events_through_ds()
    user_index = {u: n + 2 for n, u in enumerate(sorted(events.user_id.unique()))}
    assert set(user_index) <= set(users.user_id)
    for user_id, embedding in zip(users.user_id, users.embedding):
        if user_id not in user_index:     # a user of the users table without events: no history, zeros
            np.testing.assert_array_equal(embedding, 0.0)
            continue
        history = lists[user_index[user_id]]
        assert (history >= 0).sum() == min(MAX_LEN, events[events.user_id == user_id].item_id.nunique())
        np.testing.assert_allclose(embedding, table[history[history >= 0]].sum(axis=0), rtol=1e-5, atol=1e-6)


def test_item_item_related_items_are_its_item_item_weights(history_run):
    """related_items of item_item: each item's top K by B = E Q^T (the model's history-side table E, the
    published item embeddings Q), itself excluded, recomputed in NumPy."""
    from models.registry import load_model

    warehouse, summary = history_run
    model = load_model(os.path.join(warehouse, "models", f"ds={DS}", "model=item_item", "model.keras"))
    history_side = np.asarray(model.history_items.embeddings, np.float64)
    items = pd.read_parquet(os.path.join(warehouse, "item_embeddings", f"ds={DS}", "model=item_item"))
    manifest = json.load(open(os.path.join(warehouse, "item_embeddings", f"ds={DS}", "model=item_item",
                                           "_manifest.json")))
    assert manifest["dimension"] == 8 and manifest["score_function"] == "dot"
    items = items.sort_values("item_id")
    features = pd.read_parquet(os.path.join(warehouse, "item_features", f"ds={DS}")).set_index("item_id")
    ids = items.item_id.to_numpy()
    weights = history_side[features.loc[ids, "item_idx"].to_numpy()] @ np.stack(items.embedding).astype(np.float64).T
    np.fill_diagonal(weights, -np.inf)
    related = pd.read_parquet(os.path.join(warehouse, "related_items", f"ds={DS}", "model=item_item"))
    assert list(related.columns) == ["item_id", "rank", "related_item_id", "score"]
    assert set(related.item_id) == set(ids) and (related.groupby("item_id").size() == RELATED_K).all()
    for a, rows in related.groupby("item_id"):
        row = int(np.searchsorted(ids, a))
        order = sorted(range(len(ids)), key=lambda j: (-weights[row, j], ids[j]))
        assert a not in set(rows.related_item_id)
        # float32 products vs float64: the boundary candidate may differ
        assert set(rows.related_item_id) <= set(ids[order[: RELATED_K + 2]]), a
        np.testing.assert_allclose(rows.sort_values("rank").score.iloc[0], weights[row, order[0]], rtol=1e-3,
                                   atol=1e-4)
    metrics = pd.read_parquet(os.path.join(warehouse, "metrics", f"ds={DS}"))
    hit = metrics[(metrics.model == "item_item") & (metrics.metric == "related_hit_rate")]
    assert list(hit.k) == [RELATED_K] and 0.0 <= hit.value.iloc[0] <= 1.0 and hit.users.iloc[0] > 0
