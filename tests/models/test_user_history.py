"""The two-tower's history input: masked mean by hand, leave-one-out in training, save/reload, training."""

import json

import numpy as np
import pyarrow as pa
import pytest

from jobs.storage import Location
from models.catalogue import read_user_history
from models.registry import build_model, load_model
from models.settings import TrainSettings
from models.train import TRAIN_FILE, train_model
from tests.fixtures.models import (SPEC, TRAIN_SPEC, item_rows, pairs, train_feed, user_rows, write_catalogue,
                                   write_examples, write_table)

# History lists per user index (SPEC: user vocabulary 6, item vocabulary 7), -1 padded.
LISTS = np.array([[-1, -1, -1], [-1, -1, -1], [2, 3, 4], [5, -1, -1], [-1, -1, -1], [6, 2, -1]], np.int32)
# Hand-set item embeddings: row j = [j*j, 1, -j, 0] (rows 0, 1 unused by the lists).
TABLE = np.array([[j * j, 1.0, -j, 0.0] for j in range(7)], np.float32)


def _model(embedding="own", **params):
    model = build_model("two_tower", SPEC, embedding_dim=4, tower_layers=[8], history_max_len=3,
                        history_embedding=embedding, **params)
    model(pairs(user_rows(), item_rows()))
    model.set_history(LISTS)
    table = model.history_table if embedding == "own" else model.item_tower.embed.tables["item_idx"]
    table.set_weights([TABLE])
    return model


def _rows(users, items):
    return {"user_idx": np.array(users, np.int32), "user_gender": np.full(len(users), 2, np.int32),
            "user_age": np.zeros(len(users), np.float32), "item_idx": np.array(items, np.int32),
            "item_genres": np.full((len(items), 3), -1, np.int32), "item_year": np.zeros(len(items), np.float32)}


@pytest.mark.parametrize("embedding", ["own", "shared"])
def test_masked_mean_leaves_the_examples_own_item_out_in_training(embedding):
    model = _model(embedding)
    # user 2 (history 2, 3, 4) with item 3; user 5 (6, 2) with item 4 (not in its history); user 3 (5) with item 5
    rows = _rows([2, 5, 3], [3, 4, 5])
    training = np.asarray(model.history_vector(rows, training=True))
    scoring = np.asarray(model.history_vector(rows, training=False))
    np.testing.assert_allclose(training, [[(4 + 16) / 2, 1, -3, 0],         # items 2, 4 (3 left out)
                                          [(36 + 4) / 2, 1, -4, 0],         # items 6, 2 (4 is not in it)
                                          [0, 0, 0, 0]], rtol=1e-6)         # its only item left out: none
    np.testing.assert_allclose(scoring, [[(4 + 9 + 16) / 3, 1, -3, 0],      # the whole list
                                         [(36 + 4) / 2, 1, -4, 0],
                                         [25, 1, -5, 0]], rtol=1e-6)
    # The user tower's MLP reads [features, that mean]; in training with the example's own item left out.
    features_only = _rows([2], [3])
    expected = model.user_tower(features_only, extra=np.array([[10, 1, -3, 0]], np.float32))
    np.testing.assert_allclose(np.asarray(model.user_parts(features_only, training=True)["vec"]),
                               np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_history_dropout_leaves_out_random_items_in_training_only():
    model = _model("own", history_dropout=0.5)
    rows = _rows([2] * 64, [3] * 64)     # history 2, 3, 4; own item 3: the mean of a subset of {2, 4}
    subsets = {(0.0,), (4.0,), (16.0,), (10.0,)}   # first coordinate j*j: none, {2}, {4}, {2, 4}
    got = np.asarray(model.history_vector(rows, training=True))[:, 0]
    assert {(float(v),) for v in got} <= subsets and len({float(v) for v in got}) > 1
    np.testing.assert_allclose(np.asarray(model.history_vector(rows))[:, 0], np.full(64, 29 / 3), rtol=1e-6)


def test_a_user_without_history_gets_the_zero_vector():
    model = _model("own")
    rows = _rows([4, 1, 0], [2, 2, 2])   # known user without history, unseen user, null user
    np.testing.assert_array_equal(np.asarray(model.history_vector(rows)), np.zeros((3, 4), np.float32))
    with_zeros = model.user_tower(rows, extra=np.zeros((3, 4), np.float32))
    np.testing.assert_allclose(np.asarray(model.user_embedding(rows)), np.asarray(with_zeros), rtol=1e-6)


def test_save_reload_keeps_the_histories_and_the_scores(tmp_path):
    model = _model("shared")
    users, items = user_rows(), item_rows()
    before = np.asarray(model.score_matrix(users, items))
    model.save(str(tmp_path / "m.keras"))
    again = load_model(Location(str(tmp_path / "m.keras")))
    np.testing.assert_array_equal(np.asarray(again.user_history), LISTS)
    np.testing.assert_allclose(np.asarray(again.score_matrix(users, items)), before, rtol=1e-6)
    dots = np.asarray(again.user_embedding(users)) @ np.asarray(again.item_embedding(items)).T
    np.testing.assert_allclose(dots, before, rtol=1e-5, atol=1e-6)


def test_history_contains_marks_the_items_of_each_users_whole_list():
    model = _model("own")
    got = np.asarray(model.history_contains(_rows([2, 5, 0], [2, 2, 2]), np.array([3, 5, 2, 9, 6, 4], np.int32)))
    np.testing.assert_array_equal(got, [[True, False, True, False, False, True],      # history 2, 3, 4
                                        [False, False, True, False, True, False],     # history 6, 2
                                        [False] * 6])                                 # no history


def test_known_positives_leave_the_softmax_but_the_diagonal_stays():
    from models.tasks import in_batch_softmax_from_scores

    scores = np.array([[1.0, 2.0, 0.5], [0.3, 0.1, 1.5]], np.float32)
    known = np.array([[True, True, False], [False, True, True]])   # row 0's own item (col 0) is in its history
    got = float(in_batch_softmax_from_scores(scores, np.array([7, 8, 9]), None, 1.0, known=known))
    row0 = -(1.0 - np.log(np.exp(1.0) + np.exp(0.5)))          # col 1 masked, diagonal kept
    row1 = -(0.1 - np.log(np.exp(0.3) + np.exp(0.1)))          # col 2 masked, diagonal (col 1) kept
    np.testing.assert_allclose(got, (row0 + row1) / 2, rtol=1e-5)


def test_without_the_user_id_users_with_the_same_history_and_features_get_the_same_vector():
    model = _model("own", history_user_id=False)
    assert "user_idx" not in model.user_tower.embed.tables
    lists = LISTS.copy()
    lists[4] = lists[2]                      # user 4 gets user 2's history
    model.set_history(lists)
    vectors = np.asarray(model.user_embedding(_rows([2, 4, 3], [2, 2, 2])))
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-6)
    assert not np.allclose(vectors[0], vectors[2])


def test_history_settings_are_checked():
    with pytest.raises(ValueError, match="history_user_id False .* needs history_max_len >= 1"):
        build_model("two_tower", SPEC, embedding_dim=4, history_user_id=False)
    with pytest.raises(ValueError, match="use_id=False removes"):
        build_model("two_tower", SPEC, embedding_dim=4, use_id=False, history_max_len=3)
    with pytest.raises(ValueError, match=r"history_dropout must be in \[0, 1\)"):
        build_model("two_tower", SPEC, embedding_dim=4, history_max_len=3, history_dropout=1.0)
    with pytest.raises(ValueError, match="history_embedding must be one of shared, own"):
        build_model("two_tower", SPEC, embedding_dim=4, history_max_len=3, history_embedding="both")
    model = _model("own")
    with pytest.raises(ValueError, match=r"expected \(6, 3\)"):
        model.set_history(np.zeros((6, 2), np.int32))
    with pytest.raises(ValueError, match="history_max_len do not apply"):
        build_model("mf", SPEC, embedding_dim=4, history_max_len=3)


def _write_history(folder, rows):
    """The history table of [(user index, [item indices])] in ``folder``."""
    return write_table(folder, pa.table({"user_id": pa.array([u for u, _ in rows], pa.int64()),
                                         "user_idx": pa.array([u for u, _ in rows], pa.int32()),
                                         "history": pa.array([h for _, h in rows], pa.list_(pa.int32()))}))


def test_read_user_history_pads_and_keeps_the_most_recent(root):
    path = _write_history(root / "h", [(3, [7, 2, 5]), (2, [4])])
    got = read_user_history(path, 5, 2)
    np.testing.assert_array_equal(got, [[-1, -1], [-1, -1], [4, -1], [7, 2], [-1, -1]])
    with pytest.raises(ValueError, match="user_idx outside 0..2"):
        read_user_history(path, 3, 2)


def test_two_tower_with_history_trains_saves_and_reloads(root):
    path, table = write_examples(root, n=256)
    users = table.column("user_idx").to_numpy()
    items = table.column("item_idx").to_numpy()
    rows = [(int(u), sorted({int(i) for i in items[users == u]})) for u in np.unique(users)]
    history = _write_history(root / "history", rows)
    params = {"embedding_dim": 4, "tower_layers": [8], "history_max_len": 3}
    settings = TrainSettings(epochs=3, batch_size=64, seed=1, mask_history=True)
    with pytest.raises(ValueError, match="needs user_history "):
        train_model("two_tower", TRAIN_SPEC, path, root / "none", settings=settings, model_params=params,
                    log=lambda _: None)
    result = train_model("two_tower", TRAIN_SPEC, path, root / "m", settings=settings, model_params=params,
                         item_features=write_catalogue(root), user_history=history, log=lambda _: None)
    assert len(result.history) == 3 and np.isfinite(result.history[-1]["loss"])
    assert json.loads((root / "m" / TRAIN_FILE).read_text())["model_params"]["history_max_len"] == 3
    model = load_model(result.model_file)
    expected = np.full((12, 3), -1, np.int32)
    for u, h in rows:
        expected[u, : min(3, len(h))] = h[:3]
    np.testing.assert_array_equal(np.asarray(model.user_history), expected)
    # The reloaded user vectors read those lists: psi(u) = tower(features of u, mean of its lists' item embeddings),
    # the mean taken here with NumPy from the item tower's id table (history_embedding "shared").
    table_e = model.item_tower.embed.tables["item_idx"].embeddings.numpy()
    users_to_check = np.array([2, 3, 1])                 # user index 1 (unseen): no history, the zero vector
    means = np.array([table_e[expected[u][expected[u] >= 0]].mean(axis=0) if (expected[u] >= 0).any()
                      else np.zeros(4) for u in users_to_check], np.float32)
    feed = train_feed(users_to_check, [2, 6, 1])
    np.testing.assert_allclose(np.asarray(model.user_embedding(feed)),
                               np.asarray(model.user_tower(feed, extra=means)), rtol=1e-5, atol=1e-6)


def test_full_softmax_with_mask_history_trains(root):
    path, table = write_examples(root, n=256)
    users = table.column("user_idx").to_numpy()
    items = table.column("item_idx").to_numpy()
    rows = [(int(u), sorted({int(i) for i in items[users == u]})) for u in np.unique(users)]
    result = train_model("two_tower", TRAIN_SPEC, path, root / "m",
                         settings=TrainSettings(loss="full_softmax", epochs=2, batch_size=64, seed=1,
                                                mask_history=True),
                         model_params={"embedding_dim": 4, "tower_layers": [8], "history_max_len": 3},
                         item_features=write_catalogue(root),
                         user_history=_write_history(root / "history", rows), log=lambda _: None)
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["loss"])
    assert json.loads((root / "m" / TRAIN_FILE).read_text())["settings"]["mask_history"] is True
