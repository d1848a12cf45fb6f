import numpy as np
import pytest

from models.layers import MaskedMeanPooling, SideEmbedding
from models.tasks import corrected_logits, in_batch_softmax_loss

SIDE = {
    "id": {"name": "user_idx", "vocab_size": 5},
    "categorical": [{"name": "user_gender", "vocab_size": 4}],
    "multi_categorical": [{"name": "user_tags", "vocab_size": 6, "max_len": 3}],
    "continuous": ["user_age"],
}


def test_masked_mean_pooling_ignores_padding():
    idx = np.array([[1, 2, -1], [-1, -1, -1]], dtype=np.int32)
    emb = np.array(
        [[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [5.0, 5.0], [5.0, 5.0]]], dtype=np.float32
    )
    out = np.asarray(MaskedMeanPooling()(idx, emb))
    np.testing.assert_allclose(out, [[2.0, 3.0], [0.0, 0.0]])


def test_side_embedding_shape_and_values():
    layer = SideEmbedding(SIDE, embedding_dim=4)
    inputs = {
        "user_idx": np.array([2, 3]),
        "user_gender": np.array([0, 1]),
        "user_tags": np.array([[1, 4, -1], [0, -1, -1]]),
        "user_age": np.array([0.5, -1.0], dtype=np.float32),
    }
    out = np.asarray(layer(inputs))
    assert out.shape == (2, 3 * 4 + 1)
    tags = layer.tables["user_tags"].embeddings.numpy()
    np.testing.assert_allclose(out[0, 8:12], (tags[1] + tags[4]) / 2, rtol=1e-6)
    ids = layer.tables["user_idx"].embeddings.numpy()
    np.testing.assert_allclose(out[1, 0:4], ids[3], rtol=1e-6)
    np.testing.assert_allclose(out[:, -1], [0.5, -1.0])


def test_log_q_correction_subtracts_log_frequency_and_masks_accidental_hits():
    logits = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=np.float32)
    item_ids = np.array([10, 20, 10])          # rows 0 and 2 share their positive item
    log_q = np.log(np.array([0.5, 0.25, 0.5], dtype=np.float32))
    out = np.asarray(corrected_logits(logits, item_ids, log_q))
    expected = logits - log_q[None, :]
    assert out[0, 2] < -1e8 and out[2, 0] < -1e8            # accidental hits masked
    np.testing.assert_allclose(out[0, 0], expected[0, 0])    # the positive itself is kept
    np.testing.assert_allclose(out[1], expected[1], rtol=1e-6)
    np.testing.assert_allclose(out[2, 1:], expected[2, 1:], rtol=1e-6)


def test_in_batch_softmax_loss_matches_numpy():
    rng = np.random.default_rng(1)
    u = rng.normal(size=(4, 3)).astype(np.float32)
    v = rng.normal(size=(4, 3)).astype(np.float32)
    ids = np.array([1, 2, 3, 4])
    log_q = np.log(np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))
    got = float(in_batch_softmax_loss(u, v, ids, log_q, temperature=0.5))
    logits = u @ v.T / 0.5 - log_q[None, :]
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert got == pytest.approx(-np.mean(np.diag(log_softmax)), rel=1e-5)


def test_linear_side_is_sum_of_field_embeddings_plus_linear_continuous():
    from models.layers import LinearSide

    layer = LinearSide(SIDE, output_dim=3)
    inputs = {
        "user_idx": np.array([2, 4]),
        "user_gender": np.array([3, 1]),
        "user_tags": np.array([[2, 5, -1], [-1, -1, -1]]),
        "user_age": np.array([2.0, -1.0], dtype=np.float32),
    }
    out = np.asarray(layer(inputs))
    t = {n: tab.embeddings.numpy() for n, tab in layer.embed.tables.items()}
    a = layer.dense.kernel.numpy()
    expected = np.stack([
        t["user_idx"][2] + t["user_gender"][3] + (t["user_tags"][2] + t["user_tags"][5]) / 2 + 2.0 * a[0],
        t["user_idx"][4] + t["user_gender"][1] + 0.0 - 1.0 * a[0],
    ])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_field_vectors_scale_continuous_vectors_by_the_value():
    from models.layers import FieldVectors

    layer = FieldVectors(SIDE, embedding_dim=2)
    inputs = {"user_idx": np.array([2]), "user_gender": np.array([3]), "user_tags": np.array([[4, -1, -1]]),
              "user_age": np.array([3.0], dtype=np.float32)}
    out = np.asarray(layer(inputs))
    assert out.shape == (1, 4, 2)                       # id, gender, tags, age
    np.testing.assert_allclose(out[0, 3], 3.0 * layer.continuous_vectors.numpy()[0], rtol=1e-6)
    np.testing.assert_allclose(out[0, 2], layer.embed.tables["user_tags"].embeddings.numpy()[4], rtol=1e-6)


def test_id_dropout_replaces_ids_by_the_unseen_index_only_in_training():
    layer = SideEmbedding(SIDE, embedding_dim=2, use_features=False, id_dropout=0.5, seed=3)
    ids = np.arange(2, 5).repeat(200)
    inputs = {"user_idx": ids}
    eval_out = np.asarray(layer(inputs))
    table = layer.tables["user_idx"].embeddings.numpy()
    np.testing.assert_allclose(eval_out, table[ids])
    train_out = np.asarray(layer(inputs, training=True))
    dropped = np.all(train_out == 0.0, axis=1)          # the unseen row starts at zero
    assert 0.4 < dropped.mean() < 0.6
    np.testing.assert_allclose(train_out[~dropped], table[ids[~dropped]])


def test_full_softmax_loss_matches_numpy_log_softmax_over_the_catalogue():
    from models.tasks import full_softmax_loss

    rng = np.random.default_rng(2)
    scores = rng.normal(size=(3, 5)).astype(np.float32)       # 3 rows x 5 catalogue items
    labels = np.array([4, 0, 2])
    got = float(full_softmax_loss(scores, labels, temperature=0.5))
    logits = scores.astype(np.float64) / 0.5
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -np.mean(log_softmax[[0, 1, 2], labels])
    assert got == pytest.approx(expected, rel=1e-5)
    # Weighted: the mean of the rows' losses with weights 1, 0, 3.
    weighted = float(full_softmax_loss(scores, labels, temperature=0.5, weights=np.array([1.0, 0.0, 3.0])))
    rows = -log_softmax[[0, 1, 2], labels]
    assert weighted == pytest.approx((rows[0] + 3 * rows[2]) / 4, rel=1e-5)


def test_full_softmax_masks_known_positives_but_keeps_the_row_positive():
    from models.tasks import full_softmax_loss

    scores = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
    labels = np.array([0, 1])
    # Row 0 also knows items 0 (its own positive: kept) and 2 (dropped); row 1 knows nothing.
    known = np.array([[True, False, True], [False, False, False]])
    got = float(full_softmax_loss(scores, labels, temperature=1.0, known=known))
    row0 = -(1.0 - np.log(np.exp(1.0) + np.exp(2.0)))         # softmax over columns 0 and 1 only
    row1 = np.log(3.0)                                         # uniform over 3 columns
    assert got == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_every_custom_layer_model_and_initializer_is_registered_for_saving():
    import importlib
    import inspect
    import pkgutil

    import keras

    import models

    # Every module of models/ (so a class moved to a new module is still covered).
    modules = [importlib.import_module(f"models.{m.name}") for m in pkgutil.iter_modules(models.__path__)]
    classes = [c for module in modules for _, c in inspect.getmembers(module, inspect.isclass)
               if c.__module__ == module.__name__ and not c.__name__.startswith("_")
               and issubclass(c, (keras.layers.Layer, keras.initializers.Initializer))]
    names = {c.__name__ for c in classes}
    assert {"MLP", "SplitDense", "SideEmbedding", "Tower", "TwoTowerModel", "ItemItemModel", "DeepFMModel",
            "NCFModel"} <= names
    base = importlib.import_module("models.base").RecommenderModel    # abstract: never saved itself
    for cls in classes:
        if cls is not base:
            assert keras.saving.get_registered_object(f"nightrec>{cls.__name__}") is cls, cls.__name__
