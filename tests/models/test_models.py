"""One contract test over every named model, and the formulas of the seeds checked by hand."""

import numpy as np
import pytest

from jobs.storage import Location
from models.base import RecommenderModel
from models.deepfm import second_order
from models.kinds import KERAS_KINDS, KINDS
from models.registry import build_model, load_model
from tests.fixtures.models import SPEC, item_rows, pairs, randomise, small_params, user_rows

@pytest.mark.parametrize("kind", sorted(KERAS_KINDS))
def test_every_kind_scores_consistently_and_round_trips(kind, tmp_path):
    model = build_model(kind, SPEC, output_bias=3.5, **small_params(kind))
    users, items = user_rows(), item_rows()
    model(pairs(users, items))
    randomise(model)
    assert isinstance(model, RecommenderModel) and model.kind == kind
    matrix = np.asarray(model.score_matrix(users, items))
    assert matrix.shape == (4, 5) and np.isfinite(matrix).all()
    # Aligned rows (the training path) give the same scores as the cross layout.
    aligned = np.asarray(model(pairs(users, items))).reshape(4, 5)
    np.testing.assert_allclose(aligned, matrix, rtol=1e-5, atol=1e-5)
    # A user against its own group of items (the sampled-negatives path).
    grouped = np.asarray(model.scores_against(users, {k: np.tile(v, (4,) + (1,) * (v.ndim - 1))
                                                      for k, v in items.items()}, 4))
    np.testing.assert_allclose(grouped, matrix, rtol=1e-5, atol=1e-5)
    if model.factorised:
        dots = np.asarray(model.user_embedding(users)) @ np.asarray(model.item_embedding(items)).T
        np.testing.assert_allclose(dots, matrix, rtol=1e-5, atol=1e-5)
    else:
        with pytest.raises(TypeError, match="not a dot product"):
            model.user_embedding(users)
    model.save(str(tmp_path / "m.keras"))
    again = load_model(Location(str(tmp_path / "m.keras")))
    assert type(again) is type(model) and again.kind == kind
    np.testing.assert_allclose(np.asarray(again.score_matrix(users, items)), matrix, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", [k for k in sorted(KERAS_KINDS) if "use_features" in KINDS[k].params])
def test_unseen_user_is_scored_from_features(kind):
    model = build_model(kind, SPEC, **small_params(kind))
    users, items = user_rows(), item_rows()
    model(pairs(users, items))
    randomise(model, seed=1)
    cold = {k: v.copy() for k, v in users.items()}
    cold["user_idx"][:] = 1                       # nobody known: only gender and age differ
    scores = np.asarray(model.score_matrix(cold, items))
    assert np.isfinite(scores).all()
    assert not np.allclose(scores[0], scores[1])  # different features, different scores


def test_reserved_rows_start_at_zero():
    model = build_model("mf", SPEC, embedding_dim=4)
    model(pairs(user_rows(), item_rows()))
    table = model.user_tower.embed.tables["user_idx"].embeddings.numpy()
    assert np.all(table[:2] == 0) and np.all(table[2:] != 0)


def test_mf_mean_is_dot_plus_biases_plus_mean():
    model = build_model("mf_mean", SPEC, output_bias=3.5, embedding_dim=3)
    users, items = user_rows(), item_rows()
    model(pairs(users, items))
    randomise(model, seed=2)
    p = model.user_tower.embed.tables["user_idx"].embeddings.numpy()[users["user_idx"]]
    q = model.item_tower.embed.tables["item_idx"].embeddings.numpy()[items["item_idx"]]
    a = model.user_bias.embeddings.numpy()[users["user_idx"], 0]
    b = model.item_bias.embeddings.numpy()[items["item_idx"], 0]
    mu = float(model.global_bias.numpy())
    expected = p @ q.T + a[:, None] + b[None, :] + mu
    np.testing.assert_allclose(np.asarray(model.score_matrix(users, items)), expected, rtol=1e-5)


def test_fm_second_order_equals_explicit_pairwise_sum():
    rng = np.random.default_rng(3)
    fields = rng.normal(size=(2, 4, 3)).astype(np.float32)     # 2 rows, 4 fields, k = 3
    explicit = np.array([sum(fields[r, f] @ fields[r, g] for f in range(4) for g in range(f + 1, 4))
                         for r in range(2)])
    np.testing.assert_allclose(np.asarray(second_order(fields)), explicit, rtol=1e-5)


def test_fm_score_equals_first_order_plus_all_pairwise_interactions():
    model = build_model("fm", SPEC, output_bias=0.5, embedding_dim=3)
    users, items = user_rows(), item_rows()
    model(pairs(users, items))
    randomise(model, seed=4)
    u, i = 1, 2                                   # user idx 3 (gender 3, age -1) x item idx 4
    ufv = model.user_fields
    ifv = model.item_fields
    uemb = {n: t.embeddings.numpy() for n, t in ufv.embed.tables.items()}
    iemb = {n: t.embeddings.numpy() for n, t in ifv.embed.tables.items()}
    genres = [g for g in items["item_genres"][i] if g >= 0]
    vectors = [uemb["user_idx"][users["user_idx"][u]], uemb["user_gender"][users["user_gender"][u]],
               users["user_age"][u] * ufv.continuous_vectors.numpy()[0],
               iemb["item_idx"][items["item_idx"][i]], np.mean([iemb["item_genres"][g] for g in genres], axis=0),
               items["item_year"][i] * ifv.continuous_vectors.numpy()[0]]
    pairwise = sum(vectors[f] @ vectors[g] for f in range(6) for g in range(f + 1, 6))
    uw = {n: t.embeddings.numpy()[:, 0] for n, t in model.user_first.embed.tables.items()}
    iw = {n: t.embeddings.numpy()[:, 0] for n, t in model.item_first.embed.tables.items()}
    first = (uw["user_idx"][users["user_idx"][u]] + uw["user_gender"][users["user_gender"][u]]
             + users["user_age"][u] * model.user_first.dense.kernel.numpy()[0, 0]
             + iw["item_idx"][items["item_idx"][i]] + np.mean([iw["item_genres"][g] for g in genres])
             + items["item_year"][i] * model.item_first.dense.kernel.numpy()[0, 0])
    expected = float(model.global_bias.numpy()) + first + pairwise
    assert float(np.asarray(model.score_matrix(users, items))[u, i]) == pytest.approx(expected, rel=1e-5)


def test_gmf_and_ancf_formulas():
    users, items = user_rows(), item_rows()
    gmf = build_model("gmf", SPEC, output_bias=0.25, embedding_dim=3)
    gmf(pairs(users, items))
    randomise(gmf, seed=5)
    p = gmf.user_gmf.tables["user_idx"].embeddings.numpy()[users["user_idx"]]
    q = gmf.item_gmf.tables["item_idx"].embeddings.numpy()[items["item_idx"]]
    h = gmf.gmf_weights.numpy()
    expected = (p * h) @ q.T + float(gmf.global_bias.numpy())
    np.testing.assert_allclose(np.asarray(gmf.score_matrix(users, items)), expected, rtol=1e-5)

    ancf = build_model("ancf", SPEC, embedding_dim=3, mlp_layers=[5], use_features=False)
    ancf(pairs(users, items))
    randomise(ancf, seed=6)
    p = ancf.user_gmf.tables["user_idx"].embeddings.numpy()[users["user_idx"]]
    q = ancf.item_gmf.tables["item_idx"].embeddings.numpy()[items["item_idx"]]
    s = ancf.user_mlp.tables["user_idx"].embeddings.numpy()[users["user_idx"]]
    t = ancf.item_mlp.tables["item_idx"].embeddings.numpy()[items["item_idx"]]
    first = ancf.mlp_first
    out = ancf.mlp_rest.out
    hidden = np.maximum(0, (s @ first.user_kernel.numpy())[:, None, :] + (t @ first.item_kernel.numpy())[None]
                        + first.bias.numpy())
    f = hidden @ out.kernel.numpy()[:, 0] + out.bias.numpy()[0]
    np.testing.assert_allclose(np.asarray(ancf.score_matrix(users, items)), p @ q.T + f, rtol=1e-5, atol=1e-6)


def test_split_dense_equals_dense_over_the_concatenation():
    from models.layers import SplitDense

    layer = SplitDense(3, user_dim=2, item_dim=4)
    rng = np.random.default_rng(7)
    p, q = rng.normal(size=(5, 2)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    out = np.asarray(layer(p, q))
    w = np.concatenate([layer.user_kernel.numpy(), layer.item_kernel.numpy()])
    np.testing.assert_allclose(out, np.maximum(0, np.concatenate([p, q], axis=1) @ w + layer.bias.numpy()),
                               rtol=1e-5, atol=1e-6)
    cross = np.asarray(layer.combine(layer.user_half(p), layer.item_half(q[:2]), cross=True))
    assert cross.shape == (5, 2, 3)
    np.testing.assert_allclose(cross[4, 1], np.maximum(0, np.concatenate([p[4], q[1]]) @ w + layer.bias.numpy()),
                               rtol=1e-5, atol=1e-6)


def test_crossed_weights_look_up_buckets_and_average_valid_pairs():
    from models.layers import CrossedWeights

    layer = CrossedWeights(buckets=50)
    layer.build()
    layer.table.embeddings.assign(np.arange(50, dtype=np.float32)[:, None])
    a = np.array([[2], [3]], np.int32)                    # user field, V_a = 4
    b = np.array([[1, 4, -1], [0, -1, -1]], np.int32)     # item field, V_b = 5, padded
    out = np.asarray(layer(a, b, cross_id=1, user_vocab=4, item_vocab=5))
    # bucket = ((1 * 4 + a) * 5 + b) % 50
    expected = [np.mean([((4 + 2) * 5 + 1) % 50, ((4 + 2) * 5 + 4) % 50]), ((4 + 3) * 5 + 0) % 50]
    np.testing.assert_allclose(out, expected)


def test_wide_deep_crosses_every_user_field_with_every_item_field_but_the_ids():
    model = build_model("wide_deep", SPEC, embedding_dim=4, deep_layers=[4])
    assert model.crosses == [["user_idx", "item_genres"], ["user_gender", "item_idx"], ["user_gender", "item_genres"]]
    with pytest.raises(ValueError, match="crossed user field 'user_zip'"):
        build_model("wide_deep", SPEC, embedding_dim=4, deep_layers=[4], crosses=[["user_zip", "item_idx"]])


def test_build_model_refuses_parameters_of_other_kinds():
    with pytest.raises(ValueError, match="tower_layers do not apply"):
        build_model("mf", SPEC, tower_layers=[4])
    with pytest.raises(ValueError, match="unknown model kind 'svd'"):
        build_model("svd", SPEC)


def test_factorised_kinds_are_the_models_that_say_so():
    from models.kinds import FACTORISED_KINDS

    factorised = {kind for kind in KERAS_KINDS if build_model(kind, SPEC, **small_params(kind)).factorised}
    assert factorised == FACTORISED_KINDS & KERAS_KINDS
    assert FACTORISED_KINDS - KERAS_KINDS == {"als"}   # scored from its embedding tables, not a Keras model


def test_als_is_not_built_as_a_keras_model():
    assert KINDS["als"].family == "spark_als" and not KINDS["als"].keras and KERAS_KINDS == set(KINDS) - {"als"}
    with pytest.raises(ValueError, match="kind als .* is not a Keras model: it is trained in Spark by jobs.als"):
        build_model("als", SPEC, embedding_dim=4)


@pytest.mark.parametrize("kind, params, flops", [
    # first-order 2; FM 2 + 2*4; deep: halves + ReLU 2*8, 8 -> 4: 2*8*4 + 4 + 4, output 4 -> 1: 2*4 + 1, add 1
    ("deepfm", {"embedding_dim": 4, "deep_layers": [8, 4]}, 2 + 10 + (16 + 72 + 9 + 1)),
    ("fm", {"embedding_dim": 4}, 2 + 10),
    # GMF dot 2*4 + bias 1; MLP: 16 + 72 (no output layer); phi 2*4; add 1
    ("neumf", {"embedding_dim": 4, "mlp_layers": [8, 4]}, 9 + 88 + 8 + 1),
    ("mlp_ncf", {"embedding_dim": 4, "mlp_layers": [8, 4]}, 16 + 72 + 9),
    ("two_tower_dense", {"embedding_dim": 4, "head_layers": [8]}, 16 + 17),
    ("mf", {"embedding_dim": 4}, 8),
    ("mf_mean", {"embedding_dim": 4}, 10),
])
def test_pair_flops_counted_by_hand(kind, params, flops):
    assert build_model(kind, SPEC, **params).pair_flops() == flops
