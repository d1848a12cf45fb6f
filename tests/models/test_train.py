import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.catalogue import NegativeSampler, read_side_table
from models.evaluation import RankingHoldout, RatingHoldout, ranking_metrics
from models.export import embed_side, export_embeddings
from models.kinds import KINDS
from models.train import FEATURE_STATE_FILE, TrainSettings, item_log_frequencies, load_model, train_model

SPEC = {
    "user": {"id": {"name": "user_idx", "vocab_size": 12}, "categorical": [], "multi_categorical": [],
             "continuous": ["user_x"]},
    "item": {"id": {"name": "item_idx", "vocab_size": 8}, "categorical": [],
             "multi_categorical": [{"name": "item_tags", "vocab_size": 4, "max_len": 2}], "continuous": []},
}
SMALL = {"tower_layers": [16], "head_layers": [8], "deep_layers": [8], "mlp_layers": [8]}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write(folder, table):
    os.makedirs(folder, exist_ok=True)
    pq.write_table(table, os.path.join(folder, "part-0.parquet"))
    return str(folder)


def _rows(users, items):
    return pa.table({
        "user_id": users.astype(np.int64), "item_id": items.astype(np.int64) * 10,
        "user_idx": users.astype(np.int32), "item_idx": items.astype(np.int32),
        "user_x": (users % 2).astype(np.float32),
        "item_tags": pa.array([[int(i % 2) + 2] for i in items], pa.list_(pa.int32())),
        # Even users rate their matching items 5, the others 1: learnable.
        "rating": np.where(users % 2 == items % 2, 5.0, 1.0).astype(np.float32),
    })


def _examples(tmp_path, n=400, seed=0):
    rng = np.random.default_rng(seed)
    users = rng.integers(2, 12, size=n)
    # Users with even ids like items 2..4, odd ids like 5..7: learnable structure.
    items = np.where(users % 2 == 0, rng.integers(2, 5, size=n), rng.integers(5, 8, size=n))
    table = _rows(users, items)
    return _write(tmp_path / f"examples{seed}", table), table


def _catalogue(tmp_path):
    items = np.arange(2, 8)
    table = pa.table({"item_id": items.astype(np.int64) * 10, "item_idx": items.astype(np.int32),
                      "item_tags": pa.array([[int(i % 2) + 2] for i in items], pa.list_(pa.int32()))})
    return _write(tmp_path / "items", table)


def _feed(users, items):
    return {"user_idx": np.asarray(users, np.int32), "user_x": (np.asarray(users) % 2).astype(np.float32),
            "item_idx": np.asarray(items, np.int32),
            "item_tags": np.array([[int(i % 2) + 2, -1] for i in items], np.int32)}


def test_item_log_frequencies(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    pq.write_table(pa.table({"item_idx": np.array([2, 2, 3, 2], np.int32)}), folder / "p.parquet")
    got = item_log_frequencies([str(folder / "p.parquet")], "item_idx", 5)
    np.testing.assert_allclose(got, np.log([0.5 / 4, 0.5 / 4, 3 / 4, 1 / 4, 0.5 / 4]), rtol=1e-6)


def test_two_tower_learns_saves_and_reloads_with_same_scores(tmp_path):
    path, _ = _examples(tmp_path)
    lines = []
    result = train_model("two_tower", SPEC, path, str(tmp_path / "model"),
                         settings=TrainSettings(epochs=15, batch_size=64, learning_rate=0.02, temperature=0.5, seed=3),
                         model_params={"embedding_dim": 8, "tower_layers": [16]}, feature_state_json='{"x": 1}',
                         log=lines.append)
    assert len(lines) == 15 and "examples/s" in lines[0] and "loss" in lines[0]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.best_epoch == 15 and result.factorised
    assert json.loads(open(tmp_path / "model" / FEATURE_STATE_FILE).read()) == {"x": 1}
    model = load_model(result.model_path)
    batch = _feed([2, 3], [2, 6])
    user = np.asarray(model.user_tower(batch))
    item = np.asarray(model.item_tower(batch))
    np.testing.assert_allclose(np.asarray(model(batch)), (user * item).sum(axis=1), rtol=1e-5)
    # The learned structure: user 2 (even) prefers item 2 over item 6; user 3 the opposite.
    scores = np.asarray(model.score_matrix(_feed([2, 3], [2, 2]), _feed([2, 3], [2, 6])))
    assert scores[0, 0] > scores[0, 1] and scores[1, 1] > scores[1, 0]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_trains_saves_and_reloads(kind, tmp_path):
    path, _ = _examples(tmp_path, n=256)
    objective = "rating" if kind in ("mf_mean", "deepfm", "neumf") else "implicit"
    params = {"embedding_dim": 4, **{k: v for k, v in SMALL.items() if k in KINDS[kind].params}}
    history = None
    if kind == "item_item":     # the user is their history: every user's items 2..4 or 5..7
        history = _write(tmp_path / "history", pa.table({
            "user_idx": pa.array(range(2, 12), pa.int32()),
            "history": pa.array([[2, 3, 4] if u % 2 == 0 else [5, 6, 7] for u in range(2, 12)],
                                pa.list_(pa.int32()))}))
    result = train_model(kind, SPEC, path, str(tmp_path / kind),
                         settings=TrainSettings(objective=objective, epochs=2, batch_size=64, seed=1),
                         model_params=params, item_features_path=_catalogue(tmp_path), user_history_path=history,
                         log=lambda _: None)
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["loss"])
    saved = json.loads(open(tmp_path / kind / "train.json").read())
    assert saved["kind"] == kind and saved["objective"] == objective and saved["best_epoch"] == 2
    model = load_model(result.model_path)
    batch = _feed([2, 3, 1], [2, 6, 1])
    again = load_model(result.model_path)
    np.testing.assert_allclose(np.asarray(again(batch)), np.asarray(model(batch)), rtol=1e-6)


def test_rating_objective_learns_the_ratings(tmp_path):
    path, _ = _examples(tmp_path)
    result = train_model("mf_mean", SPEC, path, str(tmp_path / "m"),
                         settings=TrainSettings(objective="rating", epochs=30, batch_size=64, learning_rate=0.05),
                         model_params={"embedding_dim": 4}, log=lambda _: None)
    model = load_model(result.model_path)
    # Seen pairs: even user 2 rated items 2 (5) and 3 (1); odd user 3 rated items 5 (5) and 6 (1).
    predicted = np.asarray(model(_feed([2, 2, 3, 3], [2, 3, 5, 6])))
    np.testing.assert_allclose(predicted, [5, 1, 5, 1], atol=0.5)


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    path, _ = _examples(tmp_path)
    # The holdout's ratings are the opposite of training's: the more it learns, the worse it gets there.
    rng = np.random.default_rng(9)
    users = rng.integers(2, 12, size=100)
    items = rng.integers(2, 8, size=100)
    flipped = _rows(users, items).set_column(6, "rating", pa.array(np.where(users % 2 == items % 2, 1.0, 5.0),
                                                                     pa.float32()))
    holdout = _write(tmp_path / "holdout", flipped)
    lines = []
    result = train_model("mf_mean", SPEC, path, str(tmp_path / "m"),
                         settings=TrainSettings(objective="rating", epochs=12, batch_size=64, learning_rate=0.05,
                                                patience=2),
                         model_params={"embedding_dim": 4}, holdout_path=holdout, log=lines.append)
    rmses = [h["holdout"]["rmse"] for h in result.history]
    assert result.metric == "rmse" and "holdout rmse" in lines[0]
    assert len(result.history) == result.best_epoch + 2 < 12 and "early stop" in lines[-1]
    assert result.best_metric == min(rmses) == rmses[result.best_epoch - 1]
    # The saved model is the best epoch's, not the last one's.
    again = RatingHoldout(holdout, SPEC).evaluate(load_model(result.model_path))
    assert again["rmse"] == pytest.approx(result.best_metric, rel=1e-5)


def test_rating_holdout_matches_numpy(tmp_path):
    path, table = _examples(tmp_path, n=50)
    model = load_model(train_model("mf_mean", SPEC, path, str(tmp_path / "m"),
                                   settings=TrainSettings(objective="rating", epochs=1, batch_size=16),
                                   model_params={"embedding_dim": 4}, log=lambda _: None).model_path)
    got = RatingHoldout(path, SPEC, batch_size=7).evaluate(model)
    predicted = np.asarray(model(_feed(table.column("user_idx").to_numpy(), table.column("item_idx").to_numpy())))
    err = predicted - table.column("rating").to_numpy()
    assert got["rows"] == 50
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-5)
    assert got["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-5)


def test_ranking_metrics_by_hand():
    top = np.array([[5, 1, 7], [2, 3, 4], [9, -1, -1]])
    relevant = [np.array([1, 7]), np.array([8]), np.array([9, 4, 2, 1])]
    got = ranking_metrics(top, relevant + [], k=3)
    d = 1 / np.log2([2, 3, 4])
    ndcg = [(d[1] + d[2]) / (d[0] + d[1]), 0.0, d[0] / d.sum()]
    ap = [(1 / 2 + 2 / 3) / 2, 0.0, 1.0 / 3]
    assert got["users"] == 3
    assert got["precision"] == pytest.approx(np.mean([2 / 3, 0, 1 / 3]))
    assert got["recall"] == pytest.approx(np.mean([1.0, 0.0, 0.25]))
    assert got["ndcg"] == pytest.approx(np.mean(ndcg))
    assert got["map"] == pytest.approx(np.mean(ap))


def test_ranking_holdout_excludes_training_items(tmp_path):
    train = _write(tmp_path / "train", _rows(np.array([2, 2, 3]), np.array([2, 3, 5])))
    holdout = _write(tmp_path / "holdout", _rows(np.array([2, 2, 3]), np.array([3, 4, 6])))
    evaluator = RankingHoldout(holdout, train, _catalogue(tmp_path), SPEC, k=2)
    assert evaluator.users.ids.to_pylist() == [2, 3]
    # Catalogue positions: item idx 2..7 -> 0..5. User 2 had item 3 in training: only item 4 is relevant.
    assert [r.tolist() for r in evaluator.relevant] == [[2], [4]]
    assert [s.tolist() for s in evaluator.seen] == [[0, 1], [3]]


def test_negative_sampler_follows_popularity_and_skips_untrained_items(tmp_path):
    items = pa.table({"item_id": np.arange(5, dtype=np.int64), "item_idx": np.array([1, 2, 3, 4, 5], np.int32)})
    catalogue = read_side_table(_write(tmp_path / "c", items), {"id": {"name": "item_idx"}}, "item_id")
    counts = np.array([0, 0, 1, 3, 0, 6], np.float64)      # per item index; idx 1 is never a candidate
    sampler = NegativeSampler(catalogue, "item_idx", counts, mode="popularity", seed=4)
    _, idx = sampler.sample(20000, step=0)
    share = np.bincount(idx.numpy(), minlength=6) / 20000
    np.testing.assert_allclose(share, [0, 0, 0.1, 0.3, 0, 0.6], atol=0.015)
    _, again = sampler.sample(20000, step=0)
    assert np.array_equal(again.numpy(), idx.numpy())      # stateless: same step, same draw
    uniform = NegativeSampler(catalogue, "item_idx", counts, mode="uniform", seed=4)
    _, idx = uniform.sample(20000, step=1)
    np.testing.assert_allclose(np.bincount(idx.numpy(), minlength=6) / 20000, [0, 0, .25, .25, .25, .25],
                               atol=0.015)


def test_export_embeddings_sorted_by_id_and_score_exactly(tmp_path):
    path, table = _examples(tmp_path)
    result = train_model("mf_mean", SPEC, path, str(tmp_path / "m"),
                         settings=TrainSettings(objective="rating", epochs=1, batch_size=64),
                         model_params={"embedding_dim": 4}, log=lambda _: None)
    model = load_model(result.model_path)
    users = table.select(["user_id", "user_idx", "user_x"])
    paths = export_embeddings(model, _write(tmp_path / "users", users), _catalogue(tmp_path), str(tmp_path / "m"))
    user_t, item_t = pq.read_table(paths["user"]), pq.read_table(paths["item"])
    assert user_t.column_names == ["user_id", "embedding"] and item_t.column_names == ["item_id", "embedding"]
    assert user_t.column("user_id").to_pylist() == sorted(table.column("user_id").to_pylist())
    assert item_t.column("item_id").to_pylist() == [20, 30, 40, 50, 60, 70]
    u = np.array(user_t.column("embedding").to_pylist())
    v = np.array(item_t.column("embedding").to_pylist())
    assert u.shape[1] == 4 + 2                      # [p_u, a_u + mu, 1]
    uid = user_t.column("user_id").to_numpy()
    expected = np.asarray(model(_feed(np.repeat(uid, 6), np.tile(np.arange(2, 8), len(uid))))).reshape(len(uid), 6)
    np.testing.assert_allclose(u @ v.T, expected, rtol=1e-5, atol=1e-5)
    ids, emb = embed_side(model.user_tower, path, SPEC["user"], "user_id")
    assert ids.to_pylist() == table.column("user_id").to_pylist()   # file order kept
    assert emb.shape == (len(table), 4)


def test_sampled_negatives_never_count_the_positive(tmp_path):
    from models.tasks import sampled_bce_loss

    pos = np.array([1.0, -2.0], np.float32)
    neg = np.array([[0.5, 3.0], [-1.0, 2.0]], np.float32)
    valid = np.array([[True, False], [True, True]])
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    expected = (softplus(-1.0) + softplus(2.0) + softplus(0.5) + softplus(-1.0) + softplus(2.0)) / 5
    assert float(sampled_bce_loss(pos, neg, valid)) == pytest.approx(expected, rel=1e-6)


def test_one_worker_multi_worker_strategy_trains_like_the_default_strategy(tmp_path):
    """MultiWorkerMirroredStrategy must be created before any other TF op: run it in a fresh process."""
    path, _ = _examples(tmp_path, n=256)
    catalogue = _catalogue(tmp_path)
    script = textwrap.dedent(f"""
        import json, os, sys
        os.environ.pop("TF_CONFIG", None)
        import tensorflow as tf
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        import numpy as np
        from models.train import TrainSettings, train_model, load_model
        settings = TrainSettings(epochs=2, batch_size=64, seed=5)
        out = {{}}
        for name, strat in (("multi", strategy), ("default", None)):
            for kind in ("two_tower", "neumf"):
                r = train_model(kind, {SPEC!r}, {path!r}, os.path.join({str(tmp_path)!r}, name + kind),
                                settings=settings, model_params={{"embedding_dim": 4}},
                                item_features_path={catalogue!r}, strategy=strat, log=lambda _: None)
                model = load_model(r.model_path)
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
def test_full_softmax_loss_of_a_training_step_is_numpy_log_softmax_over_the_catalogue(power, tmp_path):
    # One step over all rows with a learning rate too small to move the weights: the logged loss is the
    # loss of the saved model, recomputed here with NumPy against every trained catalogue item; with
    # user_weight_power each row weighs (its user's rows) ** -power.
    path, table = _examples(tmp_path, n=200)
    result = train_model("mf", SPEC, path, str(tmp_path / "m"),
                         settings=TrainSettings(loss="full_softmax", epochs=1, batch_size=200, learning_rate=1e-12,
                                                temperature=0.01, seed=5, user_weight_power=power),
                         model_params={"embedding_dim": 4}, item_features_path=_catalogue(tmp_path),
                         log=lambda _: None)
    model = load_model(result.model_path)
    users = table.column("user_idx").to_numpy()
    items = table.column("item_idx").to_numpy()
    u = np.asarray(model.user_tower(_feed(users, items)), np.float64)
    v = np.asarray(model.item_tower(_feed(np.full(6, 2), np.arange(2, 8))), np.float64)   # catalogue items 2..7
    logits = u @ v.T / 0.01
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    per_row = -log_softmax[np.arange(len(items)), items - 2]
    rows_of_user = {u: int((users == u).sum()) for u in np.unique(users)}
    weight = np.array([rows_of_user[u] ** -power for u in users])
    expected = (weight * per_row).sum() / weight.sum()
    assert result.history[0]["loss"] == pytest.approx(expected, rel=1e-4)
    if power:
        assert abs(expected - per_row.mean()) > 1e-3      # the weights change the loss here
    assert json.loads(open(tmp_path / "m" / "train.json").read())["loss"] == "full_softmax"


def test_user_weight_power_weighs_in_batch_softmax_rows(tmp_path):
    # In-batch softmax without log-Q, one step over all rows: the batch's items are the candidates.
    path, table = _examples(tmp_path, n=120)
    result = train_model("mf", SPEC, path, str(tmp_path / "m"),
                         settings=TrainSettings(epochs=1, batch_size=120, learning_rate=1e-12, temperature=0.5,
                                                log_q=False, seed=5, user_weight_power=1.0),
                         model_params={"embedding_dim": 4}, log=lambda _: None)
    model = load_model(result.model_path)
    users = table.column("user_idx").to_numpy()
    items = table.column("item_idx").to_numpy()
    u = np.asarray(model.user_tower(_feed(users, items)), np.float64)
    v = np.asarray(model.item_tower(_feed(users, items)), np.float64)
    logits = u @ v.T / 0.5
    same = (items[:, None] == items[None, :]) & ~np.eye(len(items), dtype=bool)
    logits[same] = -1e9                                    # accidental hits
    per_row = -(np.diag(logits) - np.log(np.exp(logits).sum(axis=1)))
    weight = np.array([1.0 / (users == x).sum() for x in users])
    expected = (weight * per_row).sum() / weight.sum()
    assert result.history[0]["loss"] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="user_weight_power weighs the examples of a softmax loss"):
        TrainSettings(loss="sampled_bce", user_weight_power=0.5).check("mf")


def test_full_softmax_two_tower_learns_the_structure(tmp_path):
    path, _ = _examples(tmp_path)
    result = train_model("two_tower", SPEC, path, str(tmp_path / "model"),
                         settings=TrainSettings(loss="full_softmax", epochs=10, batch_size=64, learning_rate=0.02,
                                                temperature=0.5, seed=3),
                         model_params={"embedding_dim": 8, "tower_layers": [16]},
                         item_features_path=_catalogue(tmp_path), log=lambda _: None)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    model = load_model(result.model_path)
    # Even users like items 2..4, odd users 5..7 (uniformly within the group).
    scores = np.asarray(model.score_matrix(_feed([2, 3], [2, 2]), _feed([2, 2], np.arange(2, 8))))
    assert scores[0, :3].min() > scores[0, 3:].max() and scores[1, 3:].min() > scores[1, :3].max()


def test_full_softmax_refuses_a_big_or_mismatched_catalogue(tmp_path):
    from models.catalogue import CatalogueItems

    catalogue = read_side_table(_catalogue(tmp_path), SPEC["item"], "item_id")
    items = CatalogueItems(catalogue, "item_idx", 8)
    assert len(items) == 6 and items.item_index.tolist() == [2, 3, 4, 5, 6, 7]
    assert items.labels(np.array([7, 2, 5])).numpy().tolist() == [5, 0, 3]
    assert items.missing(np.array([1, 3, 9])).tolist() == [1, 9]
    with pytest.raises(ValueError, match=r"catalogue has 6 trained items \(at most 5\); use loss in_batch_softmax "
                                         r"with extra_negatives"):
        CatalogueItems(catalogue, "item_idx", 8, max_items=5)
    path, _ = _examples(tmp_path)
    fewer = pa.table({"item_id": np.array([20, 30], np.int64), "item_idx": np.array([2, 3], np.int32),
                      "item_tags": pa.array([[2], [3]], pa.list_(pa.int32()))})
    with pytest.raises(ValueError, match=r"4 item indices of the training examples \(e.g. 4, 5, 6, 7\) are not "
                                         r"trained items of the catalogue"):
        train_model("mf", SPEC, path, str(tmp_path / "m"), settings=TrainSettings(loss="full_softmax", epochs=1),
                    model_params={"embedding_dim": 4}, item_features_path=_write(tmp_path / "few", fewer),
                    log=lambda _: None)
