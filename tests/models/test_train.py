"""Training: every kind and objective, losses of a step against NumPy, early stopping, multi-worker."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from models.catalogue import read_side_table
from models.data import parquet_files
from models.evaluation import RatingHoldout
from models.kinds import KERAS_KINDS, KINDS
from models.registry import load_model
from models.settings import TrainSettings
from models.train import FEATURE_STATE_FILE, TRAIN_FILE, item_log_frequencies, train_model
from tests.fixtures.models import TRAIN_SPEC as SPEC
from tests.fixtures.models import (numpy_ranking, train_feed, train_rows, write_catalogue, write_examples,
                                   write_holdout, write_table)

SMALL = {"tower_layers": [16], "head_layers": [8], "deep_layers": [8], "mlp_layers": [8]}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_item_log_frequencies(root):
    folder = write_table(root / "f", pa.table({"item_idx": np.array([2, 2, 3, 2], np.int32)}))
    got = item_log_frequencies(parquet_files(folder), "item_idx", 5)
    np.testing.assert_allclose(got, np.log([0.5 / 4, 0.5 / 4, 3 / 4, 1 / 4, 0.5 / 4]), rtol=1e-6)


def test_two_tower_learns_saves_and_reloads_with_same_scores(root):
    path, _ = write_examples(root)
    lines = []
    result = train_model("two_tower", SPEC, path, root / "model",
                         settings=TrainSettings(epochs=15, batch_size=64, learning_rate=0.02, temperature=0.5, seed=3),
                         model_params={"embedding_dim": 8, "tower_layers": [16]}, feature_state_json='{"x": 1}',
                         log=lines.append)
    assert len(lines) == 15 and "examples/s" in lines[0] and "loss" in lines[0]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.best_epoch == 15 and result.factorised
    assert json.loads((root / "model" / FEATURE_STATE_FILE).read_text()) == {"x": 1}
    model = load_model(result.model_file)
    batch = train_feed([2, 3], [2, 6])
    user = np.asarray(model.user_tower(batch))
    item = np.asarray(model.item_tower(batch))
    np.testing.assert_allclose(np.asarray(model(batch)), (user * item).sum(axis=1), rtol=1e-5)
    # The learned structure: user 2 (even) prefers item 2 over item 6; user 3 the opposite.
    scores = np.asarray(model.score_matrix(train_feed([2, 3], [2, 2]), train_feed([2, 3], [2, 6])))
    assert scores[0, 0] > scores[0, 1] and scores[1, 1] > scores[1, 0]


@pytest.mark.parametrize("kind", sorted(KERAS_KINDS))
def test_every_kind_trains_saves_and_reloads_the_model_it_evaluated(kind, root):
    path, table = write_examples(root, n=256)
    holdout, held_users, held_items = write_holdout(root)
    objective = "rating" if kind in ("mf_mean", "deepfm", "neumf") else "implicit"
    params = {"embedding_dim": 4, **{k: v for k, v in SMALL.items() if k in KINDS[kind].params}}
    history = None
    if kind == "item_item":     # the user is their history: every user's items 2..4 or 5..7
        history = write_table(root / "history", pa.table({
            "user_idx": pa.array(range(2, 12), pa.int32()),
            "history": pa.array([[2, 3, 4] if u % 2 == 0 else [5, 6, 7] for u in range(2, 12)],
                                pa.list_(pa.int32()))}))
    result = train_model(kind, SPEC, path, root / kind,
                         settings=TrainSettings(objective=objective, epochs=2, batch_size=64, seed=1, eval_k=2),
                         model_params=params, item_features=write_catalogue(root), holdout=holdout,
                         user_history=history, log=lambda _: None)
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["loss"])
    saved = json.loads((root / kind / TRAIN_FILE).read_text())
    assert saved["kind"] == kind and saved["objective"] == objective and saved["best_epoch"] == result.best_epoch
    # The saved model is the one whose holdout metric training recorded at its best epoch, recomputed here
    # with NumPy from the reloaded model's scores.
    model = load_model(result.model_file)
    recorded = result.history[result.best_epoch - 1]["holdout"]
    if objective == "rating":
        ratings = train_rows(held_users, held_items).column("rating").to_numpy()
        err = np.asarray(model(train_feed(held_users, held_items)), np.float64) - ratings
        assert recorded["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-5)
    else:
        catalogue_items = train_feed(np.full(6, 2), np.arange(2, 8))
        scores = np.asarray(model.score_matrix(train_feed(held_users, np.full(10, 2)), catalogue_items))
        users = table.column("user_idx").to_numpy()
        seen = [set(table.column("item_idx").to_numpy()[users == u] - 2) for u in held_users]
        expected = numpy_ranking(scores, seen, [{i - 2} for i in held_items], k=2)
        assert recorded["ndcg"] == pytest.approx(expected["ndcg"], abs=1e-6)
        assert recorded["recall"] == pytest.approx(expected["recall"], abs=1e-6)


def test_rating_objective_learns_the_ratings(root):
    path, _ = write_examples(root)
    result = train_model("mf_mean", SPEC, path, root / "m",
                         settings=TrainSettings(objective="rating", epochs=30, batch_size=64, learning_rate=0.05),
                         model_params={"embedding_dim": 4}, log=lambda _: None)
    model = load_model(result.model_file)
    # Seen pairs: even user 2 rated items 2 (5) and 3 (1); odd user 3 rated items 5 (5) and 6 (1).
    predicted = np.asarray(model(train_feed([2, 2, 3, 3], [2, 3, 5, 6])))
    np.testing.assert_allclose(predicted, [5, 1, 5, 1], atol=0.5)


def test_early_stopping_keeps_the_best_epoch(root):
    path, _ = write_examples(root)
    # The holdout's ratings are the opposite of training's: the more it learns, the worse it gets there.
    rng = np.random.default_rng(9)
    users = rng.integers(2, 12, size=100)
    items = rng.integers(2, 8, size=100)
    flipped = train_rows(users, items).set_column(6, "rating", pa.array(np.where(users % 2 == items % 2, 1.0, 5.0),
                                                                     pa.float32()))
    holdout = write_table(root / "holdout", flipped)
    lines = []
    result = train_model("mf_mean", SPEC, path, root / "m",
                         settings=TrainSettings(objective="rating", epochs=12, batch_size=64, learning_rate=0.05,
                                                patience=2),
                         model_params={"embedding_dim": 4}, holdout=holdout, log=lines.append)
    rmses = [h["holdout"]["rmse"] for h in result.history]
    assert result.metric == "rmse" and "holdout rmse" in lines[0]
    assert len(result.history) == result.best_epoch + 2 < 12 and "early stop" in lines[-1]
    assert result.best_metric == min(rmses) == rmses[result.best_epoch - 1]
    # The saved model is the best epoch's, not the last one's.
    again = RatingHoldout(holdout, SPEC).evaluate(load_model(result.model_file))
    assert again["rmse"] == pytest.approx(result.best_metric, rel=1e-5)


def test_sampled_negatives_never_count_the_positive():
    from models.tasks import sampled_bce_loss

    pos = np.array([1.0, -2.0], np.float32)
    neg = np.array([[0.5, 3.0], [-1.0, 2.0]], np.float32)
    valid = np.array([[True, False], [True, True]])
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    expected = (softplus(-1.0) + softplus(2.0) + softplus(0.5) + softplus(-1.0) + softplus(2.0)) / 5
    assert float(sampled_bce_loss(pos, neg, valid)) == pytest.approx(expected, rel=1e-6)


def test_one_worker_multi_worker_strategy_trains_like_the_default_strategy(root):
    """MultiWorkerMirroredStrategy must be created before any other TF op: run it in a fresh process."""
    path, _ = write_examples(root, n=256)
    catalogue = write_catalogue(root)
    script = textwrap.dedent(f"""
        import json, os, sys
        os.environ.pop("TF_CONFIG", None)
        import tensorflow as tf
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        import numpy as np
        from jobs.storage import Location
        from models.registry import load_model
        from models.settings import TrainSettings
        from models.train import train_model
        settings = TrainSettings(epochs=2, batch_size=64, seed=5)
        out = {{}}
        for name, strat in (("multi", strategy), ("default", None)):
            for kind in ("two_tower", "neumf"):
                r = train_model(kind, {SPEC!r}, Location({path.uri!r}), Location({root.uri!r}) / (name + kind),
                                settings=settings, model_params={{"embedding_dim": 4}},
                                item_features=Location({catalogue.uri!r}), strategy=strat, log=lambda _: None)
                model = load_model(r.model_file)
                batch = {{"user_idx": np.array([2, 3], np.int32), "user_x": np.array([0., 1.], np.float32),
                          "item_idx": np.array([2, 6], np.int32), "item_tags": np.array([[2, -1], [2, -1]], np.int32)}}
                out[name + kind] = {{"losses": [h["loss"] for h in r.history],
                                     "scores": np.asarray(model(batch)).tolist(),
                                     "replicas": strategy.num_replicas_in_sync}}
        print("RESULT" + json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    for kind in ("two_tower", "neumf"):
        multi, default = out["multi" + kind], out["default" + kind]
        assert multi["replicas"] == 1 and len(multi["losses"]) == 2
        np.testing.assert_allclose(multi["losses"], default["losses"], rtol=1e-5)
        np.testing.assert_allclose(multi["scores"], default["scores"], rtol=1e-5)


@pytest.mark.parametrize("power", [0.0, 1.0, 0.5])
def test_full_softmax_loss_of_a_training_step_is_numpy_log_softmax_over_the_catalogue(power, root):
    # One step over all rows with a learning rate too small to move the weights: the logged loss is the
    # loss of the saved model, recomputed here with NumPy against every trained catalogue item; with
    # user_weight_power each row weighs (its user's rows) ** -power.
    path, table = write_examples(root, n=200)
    result = train_model("mf", SPEC, path, root / "m",
                         settings=TrainSettings(loss="full_softmax", epochs=1, batch_size=200, learning_rate=1e-12,
                                                temperature=0.01, seed=5, user_weight_power=power),
                         model_params={"embedding_dim": 4}, item_features=write_catalogue(root),
                         log=lambda _: None)
    model = load_model(result.model_file)
    users = table.column("user_idx").to_numpy()
    items = table.column("item_idx").to_numpy()
    u = np.asarray(model.user_tower(train_feed(users, items)), np.float64)
    v = np.asarray(model.item_tower(train_feed(np.full(6, 2), np.arange(2, 8))), np.float64)   # catalogue items 2..7
    logits = u @ v.T / 0.01
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    per_row = -log_softmax[np.arange(len(items)), items - 2]
    rows_of_user = {u: int((users == u).sum()) for u in np.unique(users)}
    weight = np.array([rows_of_user[u] ** -power for u in users])
    expected = (weight * per_row).sum() / weight.sum()
    assert result.history[0]["loss"] == pytest.approx(expected, rel=1e-4)
    if power:
        assert abs(expected - per_row.mean()) > 1e-3      # the weights change the loss here
    assert json.loads((root / "m" / TRAIN_FILE).read_text())["loss"] == "full_softmax"


def test_user_weight_power_weighs_in_batch_softmax_rows(root):
    # In-batch softmax without log-Q, one step over all rows: the batch's items are the candidates.
    path, table = write_examples(root, n=120)
    result = train_model("mf", SPEC, path, root / "m",
                         settings=TrainSettings(epochs=1, batch_size=120, learning_rate=1e-12, temperature=0.5,
                                                log_q=False, seed=5, user_weight_power=1.0),
                         model_params={"embedding_dim": 4}, log=lambda _: None)
    model = load_model(result.model_file)
    users = table.column("user_idx").to_numpy()
    items = table.column("item_idx").to_numpy()
    u = np.asarray(model.user_tower(train_feed(users, items)), np.float64)
    v = np.asarray(model.item_tower(train_feed(users, items)), np.float64)
    logits = u @ v.T / 0.5
    same = (items[:, None] == items[None, :]) & ~np.eye(len(items), dtype=bool)
    logits[same] = -1e9                                    # accidental hits
    per_row = -(np.diag(logits) - np.log(np.exp(logits).sum(axis=1)))
    weight = np.array([1.0 / (users == x).sum() for x in users])
    expected = (weight * per_row).sum() / weight.sum()
    assert result.history[0]["loss"] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="user_weight_power weighs the examples of a softmax loss"):
        TrainSettings(loss="sampled_bce", user_weight_power=0.5).check("mf")


def test_full_softmax_two_tower_learns_the_structure(root):
    path, _ = write_examples(root)
    result = train_model("two_tower", SPEC, path, root / "model",
                         settings=TrainSettings(loss="full_softmax", epochs=10, batch_size=64, learning_rate=0.02,
                                                temperature=0.5, seed=3),
                         model_params={"embedding_dim": 8, "tower_layers": [16]},
                         item_features=write_catalogue(root), log=lambda _: None)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    model = load_model(result.model_file)
    # Even users like items 2..4, odd users 5..7 (uniformly within the group).
    scores = np.asarray(model.score_matrix(train_feed([2, 3], [2, 2]), train_feed([2, 2], np.arange(2, 8))))
    assert scores[0, :3].min() > scores[0, 3:].max() and scores[1, 3:].min() > scores[1, :3].max()


def test_full_softmax_refuses_a_big_or_mismatched_catalogue(root):
    from models.catalogue import CatalogueItems

    catalogue = read_side_table(write_catalogue(root), SPEC["item"], "item_id")
    items = CatalogueItems(catalogue, "item_idx", 8)
    assert len(items) == 6 and items.item_index.tolist() == [2, 3, 4, 5, 6, 7]
    assert items.labels(np.array([7, 2, 5])).numpy().tolist() == [5, 0, 3]
    assert items.missing(np.array([1, 3, 9])).tolist() == [1, 9]
    with pytest.raises(ValueError, match=r"catalogue has 6 trained items \(at most 5\); use loss in_batch_softmax "
                                         r"with extra_negatives"):
        CatalogueItems(catalogue, "item_idx", 8, max_items=5)
    path, _ = write_examples(root)
    fewer = pa.table({"item_id": np.array([20, 30], np.int64), "item_idx": np.array([2, 3], np.int32),
                      "item_tags": pa.array([[2], [3]], pa.list_(pa.int32()))})
    with pytest.raises(ValueError, match=r"4 item indices of the training examples \(e.g. 4, 5, 6, 7\) are not "
                                         r"trained items of the catalogue"):
        train_model("mf", SPEC, path, root / "m", settings=TrainSettings(loss="full_softmax", epochs=1),
                    model_params={"embedding_dim": 4}, item_features=write_table(root / "few", fewer),
                    log=lambda _: None)
