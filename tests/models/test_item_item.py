"""The factorised item-item model (EASE with B = E Q^T): scores, reconstruction and penalty by hand,
the reconstruction loss, and training that reaches EASE's closed form."""

import numpy as np
import pyarrow as pa
import pytest

from models.registry import build_model, load_model
from models.settings import TrainSettings
from models.tasks import reconstruction_loss
from models.train import TRAIN_FILE, train_model
from tests.fixtures.models import write_table

# Ids only: item_item reads nothing else. Item vocabulary 8 (rows 0, 1 reserved), user vocabulary 6.
SPEC = {
    "user": {"id": {"name": "user_idx", "vocab_size": 6}, "categorical": [], "multi_categorical": [],
             "continuous": []},
    "item": {"id": {"name": "item_idx", "vocab_size": 8}, "categorical": [], "multi_categorical": [],
             "continuous": []},
}
LISTS = np.array([[-1, -1, -1], [-1, -1, -1], [2, 3, 4], [5, -1, -1], [-1, -1, -1], [7, 2, -1]], np.int32)


def _hand_model(l2=0.0):
    """E row j = [j, 1, 0], Q row j = [1, -j, j % 2] (reserved rows 0, 1 zero)."""
    model = build_model("item_item", SPEC, embedding_dim=3, history_max_len=3, l2=l2)
    model({"user_idx": np.array([2], np.int32), "item_idx": np.array([2], np.int32)})
    model.set_history(LISTS)
    e = np.array([[j, 1, 0] if j >= 2 else [0, 0, 0] for j in range(8)], np.float32)
    q = np.array([[1, -j, j % 2] if j >= 2 else [0, 0, 0] for j in range(8)], np.float32)
    model.history_items.set_weights([e])
    model.items.set_weights([q])
    return model, e, q


def _x(users):
    """0/1 history rows [n, 8] of the user indices, from LISTS."""
    x = np.zeros((len(users), 8), np.float32)
    for r, u in enumerate(users):
        x[r, [j for j in LISTS[u] if j >= 0]] = 1
    return x


def test_score_is_the_sum_of_the_history_embeddings_dotted_with_the_item():
    model, e, q = _hand_model()
    users = {"user_idx": np.array([2, 3, 5, 4], np.int32)}    # user 4 has no history
    items = {"item_idx": np.array([2, 5, 6, 1], np.int32)}    # item 1: the unseen index
    got = np.asarray(model.score_matrix(users, items))
    # user 2: e2 + e3 + e4 = [9, 3, 0]; item 5: q5 = [1, -5, 1] -> 9 - 15 = -6
    assert got[0, 1] == pytest.approx(-6.0)
    np.testing.assert_allclose(got, _x([2, 3, 5, 4]) @ e @ q[[2, 5, 6, 1]].T, rtol=1e-6)
    assert (got[3] == 0).all() and (got[:, 3] == 0).all()
    # factorised: exported embeddings give the same scores
    np.testing.assert_allclose(np.asarray(model.user_embedding(users)) @ np.asarray(model.item_embedding(items)).T,
                               got, rtol=1e-6)
    assert model.factorised and model.input_names("user") == ["user_idx"]


def test_reconstruction_leaves_each_history_items_own_term_out():
    model, e, q = _hand_model()
    users = {"user_idx": np.array([2, 5, 4], np.int32)}
    x, scores = (np.asarray(t) for t in model.history_reconstruction(users))
    full_x = _x([2, 5, 4])
    np.testing.assert_allclose(x, full_x[:, 2:])
    # EASE's zero diagonal: item k of the history is scored from the others only
    b = e @ q.T
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(scores, (full_x @ b)[:, 2:], rtol=1e-6)
    # by hand, user 2 (items 2, 3, 4) scoring item 3: (e2 + e4) . q3 = [6, 2, 0] . [1, -3, 1] = 0
    assert scores[0, 1] == pytest.approx(0.0)
    # ... and item 6 (not in the history): [9, 3, 0] . [1, -6, 0] = -9
    assert scores[0, 4] == pytest.approx(-9.0)


def test_penalty_is_l2_times_the_squared_frobenius_norm_of_b():
    model, e, q = _hand_model(l2=0.01)
    assert float(model.penalty()) == pytest.approx(0.01 * np.sum((e @ q.T) ** 2), rel=1e-5)
    assert float(_hand_model(l2=0.0)[0].penalty()) == 0.0


def test_reconstruction_loss_by_hand():
    scores = np.array([[0.5, 0.0, 2.0], [1.0, 1.0, 0.0]], np.float32)
    history = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    # row 0: 0.25 + 0 + 1 = 1.25; row 1: 1 + 0 + 0 = 1
    assert float(reconstruction_loss(scores, history)) == pytest.approx((1.25 + 1.0) / 2)
    assert float(reconstruction_loss(scores, history, weights=np.array([1.0, 3.0], np.float32))) == \
        pytest.approx((1.25 + 3.0) / 4)


def _ease(x, lam):
    """EASE's closed form (Steck 2019): B = I - P diag(1/diag(P)), P = (X^T X + lam I)^-1."""
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def _write_training(root, histories):
    """Examples (one row per history item) and the history table of {user index: [item indices]}."""
    users = np.array([u for u, items in histories.items() for _ in items], np.int32)
    items = np.array([i for its in histories.values() for i in its], np.int32)
    examples = write_table(root / "examples", pa.table({"user_id": users.astype(np.int64),
                                                        "item_id": items.astype(np.int64),
                                                        "user_idx": users, "item_idx": items}))
    history = write_table(root / "history", pa.table({
        "user_idx": pa.array(list(histories), pa.int32()),
        "history": pa.array(list(histories.values()), pa.list_(pa.int32()))}))
    return examples, history, len(users)


def test_training_reaches_eases_closed_form_and_reloads(root):
    # Four users with overlapping histories over items 2..7 (users hold different numbers of rows).
    histories = {2: [2, 3, 4], 3: [3, 4, 5, 6], 4: [5, 6, 7], 5: [2, 4, 6, 7, 3]}
    examples, history, n_rows = _write_training(root, histories)
    # A full batch weighs every user once: loss = (1/4) ||X - X B||^2 + l2 ||B||^2, i.e. EASE with lambda = 4 l2.
    l2 = 0.5
    result = train_model("item_item", SPEC, examples, root / "model",
                         settings=TrainSettings(epochs=150, batch_size=n_rows, learning_rate=0.05, seed=4),
                         model_params={"embedding_dim": 6, "history_max_len": 5, "l2": l2},
                         user_history=history, log=lambda _: None)
    assert result.factorised and result.history[-1]["loss"] < result.history[0]["loss"]
    model = load_model(result.model_file)
    e, q = (np.asarray(w) for w in (model.history_items.embeddings, model.items.embeddings))
    learned = (e @ q.T)[2:, 2:]
    np.fill_diagonal(learned, 0.0)    # never used: an item does not score itself
    x = np.zeros((4, 6), np.float64)
    for r, items in enumerate(histories.values()):
        x[r, np.array(items) - 2] = 1
    expected = _ease(x, l2 * len(histories))
    np.testing.assert_allclose(learned, expected, atol=0.01)
    # the reloaded model scores as the trained one: x_u B for every user and item
    users = {"user_idx": np.array(list(histories), np.int32)}
    items = {"item_idx": np.arange(2, 8, dtype=np.int32)}
    scores = np.asarray(model.score_matrix(users, items))
    np.testing.assert_allclose(scores, x @ (e @ q.T)[2:, 2:], rtol=1e-4, atol=1e-5)
    assert (root / "model" / TRAIN_FILE).is_file()


def test_item_item_refuses_other_losses_and_the_rating_objective(root):
    with pytest.raises(ValueError, match="kind item_item trains with loss reconstruction, not in_batch_softmax"):
        TrainSettings(loss="in_batch_softmax").check("item_item")
    with pytest.raises(ValueError, match="kind item_item learns from the users' histories only"):
        TrainSettings(objective="rating").check("item_item")
    with pytest.raises(ValueError, match="loss reconstruction is for kind item_item, not two_tower"):
        TrainSettings(loss="reconstruction").check("two_tower")
    with pytest.raises(ValueError, match="history_max_len must be >= 1"):
        build_model("item_item", SPEC, history_max_len=0)
    examples, _, _ = _write_training(root, {2: [2, 3]})
    with pytest.raises(ValueError, match="needs user_history "):
        train_model("item_item", SPEC, examples, root / "m", settings=TrainSettings(epochs=1),
                    model_params={"history_max_len": 2}, log=lambda _: None)


def test_a_model_saved_before_the_split_of_models_two_tower_still_loads(root):
    # Saved before ItemItemModel had a module of its own, a .keras file names module "models.two_tower" for it;
    # loading goes by the registered name "nightrec>ItemItemModel".
    import json
    import zipfile

    model, e, q = _hand_model()
    model.save(root.local_path + "/new.keras")
    old = root / "old.keras"
    with zipfile.ZipFile(root.local_path + "/new.keras") as src, zipfile.ZipFile(old.local_path, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "config.json":
                config = json.loads(data)
                assert config["module"] == "models.item_item" and config["registered_name"] == "nightrec>ItemItemModel"
                data = json.dumps({**config, "module": "models.two_tower"}).encode()
            dst.writestr(name, data)
    again = load_model(old)
    users = {"user_idx": np.array([2, 3, 5], np.int32)}
    items = {"item_idx": np.arange(2, 8, dtype=np.int32)}
    np.testing.assert_allclose(np.asarray(again.score_matrix(users, items)), _x([2, 3, 5]) @ e @ q[2:].T, rtol=1e-6)
