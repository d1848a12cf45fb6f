"""Export of trained models: embedding tables of the factorised ones.

For a factorised model (``RecommenderModel.factorised``) the score of a
(user, item) pair is exactly ``<user_embedding(u), item_embedding(i)>``; the
tables hold those vectors for every row of the side feature tables, sorted
by id, so ``jobs.scoring`` can score the catalogue with matrix products.
``export_embeddings`` writes them in this process; ``side_embedder`` is the
per-worker embedder the nightly flow runs inside Spark (``jobs.embeddings.embed_rows``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.storage import Location
from models.data import arrow_columns, check_location, iter_batches, parquet_files, read_column, side_columns, to_feed
from models.registry import load_model

EMBEDDING_FILES = {"user": "user_embeddings.parquet", "item": "item_embeddings.parquet"}


def embed_side(embed: Callable, features: Location, side_spec: Mapping, id_col: str, batch_size: int = 8192):
    """Embeddings of every row of a side feature table, in file order.

    Args:
        embed: maps an input dict to [batch, dim] (``model.user_embedding``, a tower, ...).
        features: Parquet folder with ``id_col`` and the side's inputs.
        side_spec: the side's feature spec.
        id_col: the id column to carry along (``user_id`` / ``item_id``).

    Returns:
        (ids: pyarrow.Array of the source's id type, embeddings: [n, dim] float32).
    """
    columns = side_columns(side_spec)
    files = parquet_files(features)
    ids = read_column(files, id_col)
    chunks = [np.asarray(embed(to_feed(batch)), dtype=np.float32)
              for batch in iter_batches(files, columns, batch_size, shuffle=False, pool_rows=batch_size)]
    emb = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return ids, emb


def embeddings_table(ids: pa.Array, emb: np.ndarray, id_col: str) -> pa.Table:
    """(ids, [n, dim]) -> Table[id_col, embedding: list<float32>]."""
    flat = pa.array(emb.reshape(-1), type=pa.float32())
    dim = emb.shape[1] if emb.ndim == 2 else 0
    lists = pa.FixedSizeListArray.from_arrays(flat, dim) if dim else pa.array([[]] * len(ids), pa.list_(pa.float32()))
    return pa.table({id_col: ids, "embedding": lists.cast(pa.list_(pa.float32()))})


def export_embeddings(model, user_features: Location, item_features: Location,
                      out_dir: Location) -> dict[str, Location]:
    """Write ``user_embeddings.parquet`` and ``item_embeddings.parquet`` of a factorised model into ``out_dir``.

    Each file: ``<side>_id`` (source type), ``embedding`` (list<float32>),
    sorted by id; ``<user_emb, item_emb>`` is the model's score.

    Returns:
        {"user": the user file, "item": the item file}.
    """
    if not model.factorised:
        raise TypeError(f"{model.kind}: not factorised, it has no embedding tables; score it with "
                        "models.model_scoring")
    tables = {}
    for side, features, embed in (("user", user_features, model.user_embedding),
                                  ("item", item_features, model.item_embedding)):
        ids, emb = embed_side(embed, features, model.spec[side], f"{side}_id")
        order = pc.array_sort_indices(ids)
        tables[side] = embeddings_table(ids.take(order), emb[order.to_numpy()], f"{side}_id")
    with check_location(out_dir, "the export folder").writing_folder() as local:
        for side, table in tables.items():
            pq.write_table(table, os.path.join(local, EMBEDDING_FILES[side]))
    return {side: out_dir / EMBEDDING_FILES[side] for side in tables}


def side_embedder(model_file: Location, side: str):
    """Load a saved factorised model once and return its ``side`` embedding as a record-batch embedder.

    Meant to run inside a Spark Python worker (``jobs.embeddings.embed_rows``, with the cache key
    ``models.registry.version_key(model_file)`` and the side).

    Args:
        model_file: the saved ``model.keras``.
        side: ``"user"`` or ``"item"``.

    Returns:
        ``embed(batch: pyarrow.RecordBatch) -> [rows, dim] float32``; the batch
        holds the side's input columns (``side_columns(model.spec[side])``);
        the rows are ``model.user_embedding`` / ``model.item_embedding``.
    """
    model = load_model(model_file)
    if not model.factorised:
        raise TypeError(f"{model_file.display()}: a {model.kind} model is not factorised; it has no embeddings")
    embed_rows = {"user": model.user_embedding, "item": model.item_embedding}[side]
    columns = side_columns(model.spec[side])

    def embed(batch: pa.RecordBatch) -> np.ndarray:
        return np.asarray(embed_rows(arrow_columns(batch, columns)), dtype=np.float32)

    return embed
