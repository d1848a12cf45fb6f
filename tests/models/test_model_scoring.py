"""In-process exhaustive and two-stage top-K of a real Keras DeepFM against NumPy references."""

import numpy as np
import pyarrow as pa
import pytest

from models.catalogue import SideTable
from models.model_scoring import recommend, recommend_two_stage
from models.registry import build_model
from tests.fixtures.models import SPEC, write_table

N_USERS, N_ITEMS = 6, 7


def _sides(rng):
    users = {"user_idx": np.arange(N_USERS, dtype=np.int32),
             "user_gender": rng.integers(0, 4, N_USERS).astype(np.int32),
             "user_age": rng.standard_normal(N_USERS).astype(np.float32)}
    genres = rng.integers(0, 5, (N_ITEMS, 3)).astype(np.int32)
    genres[:, 1:][rng.random((N_ITEMS, 2)) < 0.5] = -1
    items = {"item_idx": np.arange(N_ITEMS, dtype=np.int32), "item_genres": genres,
             "item_year": rng.standard_normal(N_ITEMS).astype(np.float32)}
    # source ids: users 100.., items 10, 20, ... (ascending, as the catalogue order requires)
    return (SideTable(ids=pa.array(np.arange(100, 100 + N_USERS)), columns=users),
            SideTable(ids=pa.array(10 * np.arange(1, N_ITEMS + 1)), columns=items))


@pytest.fixture(scope="module")
def deepfm():
    rng = np.random.default_rng(3)
    users, catalogue = _sides(rng)
    model = build_model("deepfm", SPEC, embedding_dim=4, deep_layers=[8, 4])
    model.score_matrix(users.columns, catalogue.columns)
    model.set_weights([rng.normal(scale=0.4, size=w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
                       for w in model.get_weights()])
    # the plain model on every aligned (user, item) row: the reference scores
    rows = {c: np.repeat(v, N_ITEMS, axis=0) for c, v in users.columns.items()}
    rows.update({c: np.tile(v, (N_USERS,) + (1,) * (v.ndim - 1)) for c, v in catalogue.columns.items()})
    plain = np.asarray(model(rows)).reshape(N_USERS, N_ITEMS)
    seen = [np.array([0, 3]), np.array([], np.int64), np.arange(N_ITEMS), np.array([6]),
            np.arange(1, N_ITEMS), np.array([2, 4])]
    return model, users, catalogue, plain, seen


def _reference(scores, seen, k, allowed=None):
    """Per user row: positions of the k best scores, seen (and not allowed) excluded, ties to the lower position."""
    out = []
    for row, excluded in enumerate(seen):
        keep = [p for p in range(scores.shape[1]) if p not in set(excluded.tolist())
                and (allowed is None or p in allowed[row])]
        out.append(sorted(keep, key=lambda p: (-scores[row, p], p))[:k])
    return out


def _by_user(table, users, catalogue):
    """{user row: [catalogue positions by rank]} from a recommendation table."""
    user_row = {u: r for r, u in enumerate(users.ids.to_pylist())}
    item_pos = {i: p for p, i in enumerate(catalogue.ids.to_pylist())}
    out = {r: [] for r in range(len(users))}
    for u, rank, i in sorted(zip(table["user_id"].to_pylist(), table["rank"].to_pylist(), table["item_id"].to_pylist())):
        out[user_row[u]].append(item_pos[i])
    return [out[r] for r in range(len(users))]


def test_exhaustive_top_k_equals_argsort_of_the_plain_model(deepfm):
    model, users, catalogue, plain, seen = deepfm
    table = recommend(model, users, catalogue, seen, k=3, user_block=4, item_block=3)
    assert _by_user(table, users, catalogue) == _reference(plain, seen, 3)
    # user 2 saw everything: no rows; user 4 has one unseen item: one row
    assert [len(r) for r in _by_user(table, users, catalogue)] == [3, 3, 0, 3, 1, 3]
    first = table.filter(pa.compute.equal(table["rank"], 1))
    expected = [plain[r, _reference(plain, seen, 1)[r][0]] for r in (0, 1, 3, 4, 5)]
    np.testing.assert_allclose(first["score"].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_two_stage_ranks_the_retrievers_candidates_with_the_model(deepfm):
    model, users, catalogue, plain, seen = deepfm
    rng = np.random.default_rng(8)
    user_vectors = rng.standard_normal((N_USERS, 3)).astype(np.float32)
    item_vectors = rng.standard_normal((N_ITEMS, 3)).astype(np.float32)
    retrieval = user_vectors.astype(np.float64) @ item_vectors.T.astype(np.float64)
    candidates = [set(c) for c in _reference(retrieval, seen, 4)]       # the retriever's top 4 unseen
    table = recommend_two_stage(model, users, catalogue, seen, 2, user_vectors, item_vectors, candidates=4,
                                user_block=4)
    expected = _reference(plain, seen, 2, allowed=candidates)
    assert expected != _reference(plain, seen, 2)        # the retrieval stage changes the answer here
    assert _by_user(table, users, catalogue) == expected


def test_two_stage_with_every_item_as_candidate_is_the_exhaustive_top_k(deepfm):
    model, users, catalogue, plain, seen = deepfm
    rng = np.random.default_rng(9)
    vectors = rng.standard_normal((N_USERS, 2)).astype(np.float32), rng.standard_normal((N_ITEMS, 2)).astype(np.float32)
    two_stage = recommend_two_stage(model, users, catalogue, seen, 3, *vectors, candidates=50)
    exhaustive = recommend(model, users, catalogue, seen, 3)
    assert _by_user(two_stage, users, catalogue) == _by_user(exhaustive, users, catalogue)
    np.testing.assert_allclose(two_stage["score"].to_numpy(), exhaustive["score"].to_numpy(), rtol=1e-6)


def test_two_stage_refuses_vectors_that_do_not_match_the_catalogue(deepfm):
    model, users, catalogue, _, seen = deepfm
    with pytest.raises(ValueError, match="6 item vectors for 7 catalogue items"):
        recommend_two_stage(model, users, catalogue, seen, 2, np.zeros((N_USERS, 2), np.float32),
                            np.zeros((6, 2), np.float32), candidates=3)


def _write_side_tables(root, users, catalogue):
    """The fixture's sides as tables: the catalogue's item features (shuffled rows) and the users' rows."""
    def lists(matrix):
        return pa.array([[int(v) for v in row if v >= 0] for row in matrix], pa.list_(pa.int32()))

    items = pa.table({"item_id": catalogue.ids, "item_idx": catalogue.columns["item_idx"],
                      "item_genres": lists(catalogue.columns["item_genres"]),
                      "item_year": catalogue.columns["item_year"]})
    item_features = write_table(root / "item_features", items.take(pa.array([3, 0, 6, 2, 5, 1, 4])))
    return item_features, pa.table({"user_id": users.ids, **users.columns})


def _spark_top_k(spark, model_file, item_features, user_table, seen, k, *, item_vectors=None, user_vectors=None,
                 candidates=None, block_rows=2):
    import functools

    from jobs import scoring
    from models.model_scoring import ArrowBatchScorer, catalogue_scorer
    from models.registry import version_key

    rows = user_table.append_column("seen_pos", pa.array([s.tolist() for s in seen], pa.list_(pa.int32())))
    rows = rows.append_column("source", pa.array(["model"] * len(seen)))
    if user_vectors is not None:
        rows = rows.append_column("embedding", pa.array(user_vectors.tolist(), pa.list_(pa.float32())))
    build = functools.partial(catalogue_scorer, model_file, item_features, item_block=3)
    key = version_key(model_file, item_features)

    def build_scorer(payload, lo):
        return ArrowBatchScorer(scoring.worker_cached(key, build), k, block_rows=block_rows,
                                item_vectors=payload, candidates=candidates)

    frame = spark.createDataFrame(rows.to_pandas()).repartition(3)
    item_ids = pa.array(10 * np.arange(1, N_ITEMS + 1))
    out = scoring.score_in_spark(frame, item_ids, [(0, item_vectors)], build_scorer, k=k).toArrow()
    return out.sort_by([("user_id", "ascending"), ("rank", "ascending")])


def test_spark_scoring_of_a_saved_model_equals_argsort_of_the_plain_model(spark, deepfm, root):
    model, users, catalogue, plain, seen = deepfm
    model_file = root / "model.keras"
    model.save(model_file.local_path)
    item_features, user_table = _write_side_tables(root, users, catalogue)
    table = _spark_top_k(spark, model_file, item_features, user_table, seen, k=3)
    assert _by_user(table, users, catalogue) == _reference(plain, seen, 3)
    assert set(table["source"].to_pylist()) == {"model"}
    first = table.filter(pa.compute.equal(table["rank"], 1))
    expected = [plain[r, _reference(plain, seen, 1)[r][0]] for r in (0, 1, 3, 4, 5)]
    np.testing.assert_allclose(first["score"].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_spark_two_stage_scoring_ranks_the_retrievers_candidates(spark, deepfm, root):
    model, users, catalogue, plain, seen = deepfm
    model_file = root / "model.keras"
    model.save(model_file.local_path)
    item_features, user_table = _write_side_tables(root, users, catalogue)
    rng = np.random.default_rng(8)
    user_vectors = rng.standard_normal((N_USERS, 3)).astype(np.float32)
    item_vectors = rng.standard_normal((N_ITEMS, 3)).astype(np.float32)
    retrieval = user_vectors.astype(np.float64) @ item_vectors.T.astype(np.float64)
    candidates = [set(c) for c in _reference(retrieval, seen, 4)]
    table = _spark_top_k(spark, model_file, item_features, user_table, seen, 2, item_vectors=item_vectors,
                         user_vectors=user_vectors, candidates=4)
    assert _by_user(table, users, catalogue) == _reference(plain, seen, 2, allowed=candidates)


def test_spark_scoring_names_missing_user_inputs(spark, deepfm, root):
    model, users, catalogue, _, seen = deepfm
    model_file = root / "model.keras"
    model.save(model_file.local_path)
    item_features, user_table = _write_side_tables(root, users, catalogue)
    with pytest.raises(Exception, match=r"user inputs \['user_age'\] are missing"):
        _spark_top_k(spark, model_file, item_features, user_table.drop(["user_age"]), seen, k=3)


def test_arrow_batch_scorer_of_a_model_and_catalogue_on_mock_equals_argsort(deepfm, mock_root):
    from models.model_scoring import ArrowBatchScorer, catalogue_scorer

    model, users, catalogue, plain, seen = deepfm
    with (mock_root / "model").writing_folder() as local:
        model.save(f"{local}/model.keras")
    item_features, user_table = _write_side_tables(mock_root, users, catalogue)
    scorer = catalogue_scorer(mock_root / "model" / "model.keras", item_features, item_block=3)
    # seen_pos as Spark hands it: list<int>, null for a user with no events (row 1 has none).
    seen_pos = pa.array([s.tolist() if len(s) else None for s in seen], pa.list_(pa.int32()))
    batch = pa.RecordBatch.from_pydict({**user_table.to_pydict(), "seen_pos": seen_pos})
    rows, positions, scores = ArrowBatchScorer(scorer, 3, block_rows=4).top_k_batch(batch)
    got = [positions[rows == r].tolist() for r in range(N_USERS)]
    assert got == _reference(plain, seen, 3)
    np.testing.assert_allclose(scores, plain[rows, positions], rtol=1e-5, atol=1e-6)
    # Two-stage: each user's retriever vector must have the item vectors' width.
    two_stage = ArrowBatchScorer(scorer, 2, item_vectors=np.zeros((N_ITEMS, 3), np.float32), candidates=4)
    short = pa.array([[0.0, 1.0]] * N_USERS, pa.list_(pa.float32()))
    with pytest.raises(ValueError, match=r"the retriever's user embeddings: id 100 has a length 2 vector, "
                                         r"expected length 3"):
        two_stage.top_k_batch(batch.append_column("embedding", short))
