"""Embedding tables: run one tower over a side's feature table."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.data import iter_batches, parquet_files, side_columns


def embed_side(tower, features_path: str, side_spec: Mapping, id_col: str, batch_size: int = 8192):
    """Embeddings of every row of a side feature table.

    Args:
        tower: a callable Keras layer mapping an input dict to [batch, dim].
        features_path: Parquet folder with ``id_col`` and the tower's inputs.
        side_spec: the side's feature spec.
        id_col: the id column to carry along (``user_id`` / ``item_id``).

    Returns:
        (ids: pyarrow.Array of the source's id type, embeddings: [n, dim] float32).
    """
    columns = side_columns(side_spec)
    files = parquet_files(features_path)
    ids = pa.concat_arrays(
        [pq.read_table(f, columns=[id_col]).column(0).combine_chunks() for f in files]
    )
    chunks = []
    for batch in iter_batches(files, columns, batch_size, shuffle=False, pool_rows=batch_size):
        feed = {n: a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a.astype(np.int32)
                for n, a in batch.items()}
        chunks.append(np.asarray(tower(feed), dtype=np.float32))
    emb = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return ids, emb


def embeddings_table(ids: pa.Array, emb: np.ndarray, id_col: str) -> pa.Table:
    """(ids, [n, dim]) -> Table[id_col, embedding: list<float32>]."""
    flat = pa.array(emb.reshape(-1), type=pa.float32())
    dim = emb.shape[1] if emb.ndim == 2 else 0
    lists = pa.FixedSizeListArray.from_arrays(flat, dim) if dim else pa.array([[]] * len(ids), pa.list_(pa.float32()))
    return pa.table({id_col: ids, "embedding": lists.cast(pa.list_(pa.float32()))})


def side_embedder(model_path: str, side: str):
    """Load a saved two-tower model once and return its ``side`` tower as a record-batch embedder.

    Meant to run inside a Spark Python worker (``jobs.scoring.embed_rows``).

    Args:
        model_path: the saved ``model.keras``.
        side: ``"user"`` or ``"item"``.

    Returns:
        ``embed(batch: pyarrow.RecordBatch) -> [rows, dim] float32``; the batch
        holds the side's input columns (``side_columns(model.spec[side])``).
    """
    from models.data import _to_numpy
    from models.train import load_model

    model = load_model(model_path)
    tower = {"user": model.user_tower, "item": model.item_tower}[side]
    columns = side_columns(model.spec[side])

    def embed(batch: pa.RecordBatch) -> np.ndarray:
        feed = {}
        for name, pad_len in columns.items():
            values = _to_numpy(batch.column(name), pad_len)
            feed[name] = values.astype(np.float32 if np.issubdtype(values.dtype, np.floating) else np.int32)
        return np.asarray(tower(feed), dtype=np.float32)

    return embed
