"""Published embedding tables: fixed-size float32 vectors, model_version, and a manifest, read without nightrec."""

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import embeddings
from jobs.commit import NightCommit
from jobs.storage import Location


def _frame(spark, ids, matrix):
    return spark.createDataFrame([(int(i), [float(v) for v in row]) for i, row in zip(ids, matrix)],
                                 "item_id bigint, embedding array<float>")


def test_embedding_table_round_trips_with_its_manifest(spark, tmp_path):
    rng = np.random.default_rng(8)
    ids = np.array([40, 3, 17, 8, 25])
    matrix = rng.standard_normal((5, 4)).astype(np.float32)
    matrix[2] = 0.0  # a zero vector stays zero when normalised
    night = NightCommit(Location(tmp_path / "wh"), dt.date(2024, 6, 30), "run1")

    def write(folder):
        return embeddings.write_embedding_table(_frame(spark, ids, matrix).repartition(3), folder, id_col="item_id",
                                                model_version="2024-06-30/run1", score_function="cosine",
                                                normalise=True, rows_per_file=2)

    part = night.stage_files("item_embeddings", write, {"model": "mf"}, model="mf")
    staged = night.staged_location(part)
    assert part.path == "item_embeddings/ds=2024-06-30/model=mf"
    assert (staged / "_SUCCESS").exists()
    table, manifest = embeddings.read_embedding_table(staged)
    assert {k: manifest[k] for k in ("id_column", "dimension", "dtype", "normalised", "score_function",
                                     "model_version", "row_count", "table", "model", "ds")} == {
        "id_column": "item_id", "dimension": 4, "dtype": "float32", "normalised": True, "score_function": "cosine",
        "model_version": "2024-06-30/run1", "row_count": 5, "table": "item_embeddings", "model": "mf",
        "ds": "2024-06-30"}
    assert len(manifest["files"]) == 3  # 5 rows, at most 2 a file
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert table.column("item_id").to_pylist() == sorted(ids.tolist())  # files ordered by id, sorted inside
    order = np.argsort(ids)
    norms = np.linalg.norm(matrix[order], axis=1, keepdims=True)
    expected = np.where(norms > 0, matrix[order] / np.where(norms > 0, norms, 1), 0)
    got = np.stack(table.column("embedding").to_pylist())
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert set(table.column("model_version").to_pylist()) == {"2024-06-30/run1"}
    # readers without nightrec: pandas and DuckDB over the *.parquet glob, the manifest as plain JSON
    frame = __import__("pandas").read_parquet(staged.local_path)
    assert frame["embedding"].iloc[0].dtype == np.float32 and len(frame["embedding"].iloc[0]) == 4
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    dtype = con.execute(f"select typeof(embedding) from '{staged.local_path}/*.parquet' limit 1").fetchone()[0]
    assert dtype in ("FLOAT[4]", "FLOAT[]")
    assert json.loads((staged / "_manifest.json").read_text())["dimension"] == 4


def test_dot_tables_keep_the_vectors_and_bad_settings_say_so(spark, tmp_path):
    folder = Location(tmp_path / "users")
    frame = spark.createDataFrame([("u1", [1.0, 2.0]), ("u0", [3.0, 4.0])], "user_id string, embedding array<double>")
    facts = embeddings.write_embedding_table(frame, folder, id_col="user_id", model_version="v1")
    assert (facts["normalised"], facts["score_function"], facts["dimension"]) == (False, "dot", 2)
    table = pq.read_table(folder.local_path)
    assert table.column("user_id").to_pylist() == ["u0", "u1"]
    assert table.column("embedding").to_pylist() == [[3.0, 4.0], [1.0, 2.0]]
    with pytest.raises(ValueError, match="score_function 'l2' is not one of dot, cosine"):
        embeddings.write_embedding_table(frame, folder, id_col="user_id", model_version="v1", score_function="l2")
