"""Embedding tables of factorised models, written and read through jobs.storage (local and mock://)."""

import numpy as np
import pyarrow as pa
import pytest

from models.data import read_parquet
from models.export import embed_side, export_embeddings, side_embedder
from models.registry import build_model, load_model
from models.settings import TrainSettings
from models.train import MODEL_FILE, train_model
from tests.fixtures.models import TRAIN_SPEC as SPEC
from tests.fixtures.models import randomise, train_feed, write_catalogue, write_examples, write_table


@pytest.mark.parametrize("where", ["root", "mock_root"])
def test_export_embeddings_sorted_by_id_and_score_exactly(where, request):
    root = request.getfixturevalue(where)
    path, table = write_examples(root)
    result = train_model("mf_mean", SPEC, path, root / "m",
                         settings=TrainSettings(objective="rating", epochs=1, batch_size=64),
                         model_params={"embedding_dim": 4}, log=lambda _: None)
    model = load_model(result.model_file)
    users = table.select(["user_id", "user_idx", "user_x"])
    files = export_embeddings(model, write_table(root / "users", users), write_catalogue(root), root / "m")
    assert files == {"user": root / "m" / "user_embeddings.parquet", "item": root / "m" / "item_embeddings.parquet"}
    user_t, item_t = read_parquet(files["user"]), read_parquet(files["item"])
    assert user_t.column_names == ["user_id", "embedding"] and item_t.column_names == ["item_id", "embedding"]
    assert user_t.column("user_id").to_pylist() == sorted(table.column("user_id").to_pylist())
    assert item_t.column("item_id").to_pylist() == [20, 30, 40, 50, 60, 70]
    u = np.array(user_t.column("embedding").to_pylist())
    v = np.array(item_t.column("embedding").to_pylist())
    assert u.shape[1] == 4 + 2                      # [p_u, a_u + mu, 1]
    uid = user_t.column("user_id").to_numpy()
    expected = np.asarray(model(train_feed(np.repeat(uid, 6), np.tile(np.arange(2, 8), len(uid))))).reshape(len(uid), 6)
    np.testing.assert_allclose(u @ v.T, expected, rtol=1e-5, atol=1e-5)
    ids, emb = embed_side(model.user_tower, path, SPEC["user"], "user_id")
    assert ids.to_pylist() == table.column("user_id").to_pylist()   # file order kept
    assert emb.shape == (len(table), 4)


def test_side_embedder_loads_a_model_from_mock_and_embeds_arrow_batches(mock_root):
    model = build_model("mf", SPEC, embedding_dim=3)
    model(train_feed([2, 3], [2, 3]))
    randomise(model, seed=2)
    with (mock_root / "m").writing_folder() as local:
        model.save(f"{local}/{MODEL_FILE}")
    embed = side_embedder(mock_root / "m" / MODEL_FILE, "item")
    batch = pa.record_batch({"item_idx": pa.array([7, 2, 5], pa.int32()),
                             "item_tags": pa.array([[3], [], None], pa.list_(pa.int32()))})
    table = model.item_tower.embed.tables["item_idx"].embeddings.numpy()     # mf: q_i is the id embedding
    np.testing.assert_allclose(embed(batch), table[[7, 2, 5]], rtol=1e-6)
    two_tower_dense = build_model("two_tower_dense", SPEC, embedding_dim=3, tower_layers=[4], head_layers=[4])
    two_tower_dense(train_feed([2], [2]))
    with (mock_root / "d").writing_folder() as local:
        two_tower_dense.save(f"{local}/{MODEL_FILE}")
    with pytest.raises(TypeError, match=r"mock:///.*/d/model.keras: a two_tower_dense model is not factorised"):
        side_embedder(mock_root / "d" / MODEL_FILE, "user")
    with pytest.raises(FileNotFoundError, match=r"mock:///.*/nothing/model.keras: no saved model there"):
        load_model(mock_root / "nothing" / MODEL_FILE)
