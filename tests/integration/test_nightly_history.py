"""The nightly flow with a two-tower that reads the users' histories (history_max_len)."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from tests.integration.test_nightly import DS, TINY, _events_through_ds

MAX_LEN = 5


@pytest.fixture(scope="module")
def history_run(spark, prefect_server, tmp_path_factory):
    from flows.nightly import nightly

    warehouse = tmp_path_factory.mktemp("warehouse_history")
    model = {**TINY["models"][0], "name": "tt_history", "history_max_len": MAX_LEN, "mask_history": True}
    # The same model trained with a softmax over the whole catalogue and per-user weights.
    full = {**model, "name": "tt_full", "loss": "full_softmax", "user_weight_power": 0.5}
    summary = nightly(ds=DS, config={**TINY, "models": [model, full], "warehouse": str(warehouse)})
    return warehouse, summary


def test_published_model_holds_the_full_windows_histories(history_run):
    from models.registry import load_model

    warehouse, summary = history_run
    folder = os.path.join(warehouse, "models", f"ds={DS}", "model=tt_history")
    model = load_model(os.path.join(folder, "model.keras"))
    events = _events_through_ds()     # refit_on_full: the published model's window is train + holdout
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


@pytest.mark.parametrize("name", ["tt_history", "tt_full"])
def test_recommendations_and_metrics_are_published(history_run, name):
    warehouse, summary = history_run
    recs = pd.read_parquet(os.path.join(warehouse, "recommendations", f"ds={DS}", f"model={name}"))
    assert recs.groupby("user_id").size().max() == TINY["publish"]["k"]
    assert name in summary["metrics"]
    with open(os.path.join(warehouse, "models", f"ds={DS}", f"model={name}", "train.json")) as fh:
        assert json.load(fh)["loss"] == ("full_softmax" if name == "tt_full" else "in_batch_softmax")
