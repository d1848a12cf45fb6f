"""Training and loading with every table and the output folder on mock:// (pyarrow's in-memory file system).

mock:// has no local path, so these runs take the paths an object store or HDFS takes: Parquet read
through the file system, the model saved through a temporary folder and copied up, loaded from a copy.
"""

import json

import numpy as np
import pyarrow as pa
import pytest

from models.registry import load_model, version_key
from models.settings import TrainSettings
from models.train import FEATURE_STATE_FILE, MODEL_FILE, TRAIN_FILE, train_model
from tests.fixtures.models import (TRAIN_SPEC, numpy_ranking, train_feed, write_catalogue, write_examples,
                                   write_holdout, write_table)

PARAMS = {"embedding_dim": 4, "tower_layers": [8], "history_max_len": 3}


def _train(root):
    """A two-tower with a history input, its every input under ``root``; returns (result, examples table)."""
    examples, table = write_examples(root, n=256)
    holdout, _, _ = write_holdout(root)
    users = table.column("user_idx").to_numpy()
    items = table.column("item_idx").to_numpy()
    history = write_table(root / "history", pa.table({
        "user_idx": pa.array(np.unique(users), pa.int32()),
        "history": pa.array([sorted({int(i) for i in items[users == u]}) for u in np.unique(users)],
                            pa.list_(pa.int32()))}))
    result = train_model("two_tower", TRAIN_SPEC, examples, root / "model",
                         settings=TrainSettings(epochs=3, batch_size=64, seed=7, eval_k=2, patience=0),
                         model_params=PARAMS, item_features=write_catalogue(root), holdout=holdout,
                         feature_state_json='{"state": 1}', user_history=history, log=lambda _: None)
    return result, table


def test_a_model_trained_on_mock_is_saved_there_and_scores_as_the_model_it_evaluated(mock_root):
    result, table = _train(mock_root)
    assert result.model_file == mock_root / "model" / MODEL_FILE and result.model_file.is_file()
    assert result.model_file.local_path is None
    assert (mock_root / "model" / FEATURE_STATE_FILE).read_text() == '{"state": 1}'
    saved = json.loads((mock_root / "model" / TRAIN_FILE).read_text())
    assert saved["kind"] == "two_tower" and len(saved["history"]) == 3 and saved["best_epoch"] == result.best_epoch
    model = load_model(result.model_file)
    # The in-memory model's holdout metrics at the kept epoch, recomputed with NumPy from the reloaded model.
    _, held_users, held_items = write_holdout(mock_root)
    scores = np.asarray(model.score_matrix(train_feed(held_users, np.full(10, 2)),
                                           train_feed(np.full(6, 2), np.arange(2, 8))))
    users, items = table.column("user_idx").to_numpy(), table.column("item_idx").to_numpy()
    seen = [set(items[users == u] - 2) for u in held_users]
    expected = numpy_ranking(scores, seen, [{i - 2} for i in held_items], k=2)
    recorded = result.history[result.best_epoch - 1]["holdout"]
    assert recorded["ndcg"] == pytest.approx(expected["ndcg"], abs=1e-6)
    assert recorded["recall"] == pytest.approx(expected["recall"], abs=1e-6)
    # The histories read from mock:// are the model's lists.
    lists = np.asarray(model.user_history)
    for u in (2, 3):
        assert lists[u][lists[u] >= 0].tolist() == sorted({int(i) for i in items[users == u]})[:3]


def test_training_reads_the_same_rows_from_mock_as_from_a_local_disk(root, mock_root):
    local, _ = _train(root)
    remote, _ = _train(mock_root)
    np.testing.assert_allclose([h["loss"] for h in remote.history], [h["loss"] for h in local.history], rtol=1e-6)
    ndcg = [h["holdout"]["ndcg"] for h in local.history]
    assert [h["holdout"]["ndcg"] for h in remote.history] == pytest.approx(ndcg)
    batch = train_feed([2, 3, 6, 1], [2, 6, 7, 1])
    np.testing.assert_allclose(np.asarray(load_model(remote.model_file)(batch)),
                               np.asarray(load_model(local.model_file)(batch)), rtol=1e-5, atol=1e-6)


def test_version_key_changes_when_a_file_is_rewritten(root):
    import os

    model_file, features = root / "m" / MODEL_FILE, root / "items"
    model_file.write_text("v1")
    write_catalogue(root)
    before = version_key(model_file, features)
    assert before.startswith(f"{model_file.uri}@") and f"|{features.uri}@" in before
    os.utime(model_file.local_path, ns=(1, 10**18))          # a new modification time, as a retrained model has
    assert version_key(model_file, features) != before
