"""Exhaustive scoring of any Keras model, block by block, and the top-K of every user.

This is the simple, exact path for every model (the non-factorised ones
included): item parts are computed once for the whole catalogue, then each
block of users is scored against every block of items with
``model.pair_scores(..., cross=True)``, seen items are set to -inf before
selection, and ``tf.math.top_k`` picks the K best (equal scores: the lower
catalogue position, i.e. the lower item id, first). Factorised models can
instead be scored from embedding tables by ``jobs.scoring`` (whose NumPy
selection kernel is ``jobs.topk``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import tensorflow as tf

from jobs.arrays import float_matrix, list_offsets
from jobs.storage import Location
from models.catalogue import read_side_table
from models.data import arrow_columns, side_columns
from models.registry import load_model


def _rows(columns: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {n: a[start:stop] for n, a in columns.items()}


def _concat_parts(chunks: list[dict]) -> dict:
    return {k: tf.concat([c[k] for c in chunks], axis=0) for k in chunks[0]}


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _compiled(model) -> dict:
    """The model's part functions as tf.functions, traced once per model (not per scorer)."""
    if model not in _COMPILED:
        _COMPILED[model] = {
            "user": tf.function(lambda inputs: model.user_parts(inputs), reduce_retracing=True),
            "item": tf.function(lambda inputs: model.item_parts(inputs), reduce_retracing=True),
            "cross": tf.function(lambda user, item: model.pair_scores(user, item, cross=True), reduce_retracing=True),
            "aligned": tf.function(lambda user, item: model.pair_scores(user, item), reduce_retracing=True),
        }
    return _COMPILED[model]


class ModelBlockScorer:
    """Scores blocks of users against the whole catalogue with a Keras model's parts.

    Args:
        model: a ``models.base.RecommenderModel``.
        item_columns: the catalogue's model inputs ([n_items, ...] arrays), in catalogue order.
        item_block: items combined with a user block at once (bounds the
            [users, items, hidden] memory of non-factorised models).
    """

    def __init__(self, model, item_columns: Mapping[str, np.ndarray], item_block: int = 4096):
        self.model = model
        self.fn = _compiled(model)
        self.item_block = int(item_block)
        n_items = len(next(iter(item_columns.values())))
        self.n_items = n_items
        chunks = [self.fn["item"](_rows(item_columns, s, s + 8192)) for s in range(0, n_items, 8192)]
        self.item_parts = _concat_parts(chunks) if chunks else {}

    def scores(self, user_columns: Mapping[str, np.ndarray]) -> tf.Tensor:
        """[n_users, n_items] float32 scores of the given user rows."""
        user = self.fn["user"](dict(user_columns))
        blocks = []
        for start in range(0, self.n_items, self.item_block):
            item = {k: v[start : start + self.item_block] for k, v in self.item_parts.items()}
            blocks.append(self.fn["cross"](user, item))
        return tf.concat(blocks, axis=1)

    def scores_at(self, user_columns: Mapping[str, np.ndarray], positions: np.ndarray) -> tf.Tensor:
        """[n_users, n] float32 scores of each user row against its own n catalogue positions ([n_users, n])."""
        user = {k: tf.expand_dims(v, 1) for k, v in self.fn["user"](dict(user_columns)).items()}
        index = tf.constant(positions, dtype=tf.int64)
        item = {k: tf.gather(v, index) for k, v in self.item_parts.items()}
        return self.fn["aligned"](user, item)


def mask_seen(scores: tf.Tensor, seen: Sequence[np.ndarray]) -> tf.Tensor:
    """Set ``scores[r, seen[r]]`` to -inf: [n, m] -> [n, m]."""
    lengths = [len(s) for s in seen]
    if sum(lengths) == 0:
        return scores
    rows = np.repeat(np.arange(len(seen)), lengths)
    cols = np.concatenate([np.asarray(s, dtype=np.int64) for s in seen])
    index = tf.constant(np.stack([rows, cols], axis=1), dtype=tf.int64)
    return tf.tensor_scatter_nd_update(scores, index, tf.fill([len(rows)], tf.constant(-np.inf, scores.dtype)))


def top_k_blocks(
    model,
    user_columns: Mapping[str, np.ndarray],
    item_columns: Mapping[str, np.ndarray],
    seen: Sequence[np.ndarray],
    k: int,
    *,
    user_block: int = 512,
    item_block: int = 4096,
    scorer: ModelBlockScorer | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Top-``k`` unseen catalogue positions of every user row, one block of users at a time.

    Args:
        model: a ``models.base.RecommenderModel``.
        user_columns: the users' model inputs ([n_users, ...] arrays).
        item_columns: the catalogue's model inputs, in catalogue order.
        seen: per user row, catalogue positions to exclude.
        k: items per user.
        scorer: a ``ModelBlockScorer`` of ``model`` already holding the catalogue's
            item parts (``item_columns`` is then not read).

    Yields:
        (first user row of the block, positions [b, k'] int64, scores [b, k'] float32),
        k' = min(k, n_items); a position is -1 where fewer than k' items were unseen.
    """
    scorer = scorer or ModelBlockScorer(model, item_columns, item_block=item_block)
    n_users = len(seen)
    kk = min(int(k), scorer.n_items)
    for start in range(0, n_users, user_block):
        stop = min(start + user_block, n_users)
        scores = mask_seen(scorer.scores(_rows(user_columns, start, stop)), seen[start:stop])
        values, positions = tf.math.top_k(scores, k=kk, sorted=True)
        values = values.numpy()
        positions = np.where(np.isfinite(values), positions.numpy().astype(np.int64), -1)
        yield start, positions, values


def recommend(
    model,
    users,
    catalogue,
    seen: Sequence[np.ndarray],
    k: int,
    *,
    user_block: int = 512,
    item_block: int = 4096,
) -> pa.Table:
    """Top-``k`` recommendations of every user of a side table, as an Arrow table.

    Args:
        model: a ``models.base.RecommenderModel``.
        users: ``models.catalogue.SideTable`` of the users to score.
        catalogue: ``SideTable`` of the items (catalogue order = ascending item id).
        seen: per user row, catalogue positions to exclude.
        k: recommendations per user.

    Returns:
        Table[user_id, rank: int32 (1..), item_id, score: float32], ordered by
        user row then rank; a user gets fewer than k rows only when fewer
        unseen items exist.
    """
    blocks = top_k_blocks(model, users.columns, catalogue.columns, seen, k, user_block=user_block,
                          item_block=item_block)
    return _recommendation_table(users, catalogue, blocks)


def two_stage_blocks(
    model,
    user_columns: Mapping[str, np.ndarray],
    item_columns: Mapping[str, np.ndarray],
    seen: Sequence[np.ndarray],
    k: int,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    candidates: int,
    *,
    user_block: int = 512,
    item_block: int = 4096,
    scorer: ModelBlockScorer | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Two-stage top-``k``: a factorised retriever's ``candidates`` best unseen items, ordered by ``model``.

    Stage 1 scores every item exhaustively by <user_vectors[u], item_vectors[i]>
    (seen items masked first) and keeps the top ``candidates``; stage 2 scores
    only those (user, item) pairs with ``model`` and keeps the best ``k``.
    Equal ranking scores: the lower item id first.

    Args:
        user_vectors: [n_users, d] retriever embeddings, rows aligned with ``user_columns``.
        item_vectors: [n_items, d] retriever embeddings in catalogue order.
        scorer: as in ``top_k_blocks``.

    Yields:
        As ``top_k_blocks``: (first user row, positions [b, k'], scores [b, k']), -1 where none is left.
    """
    scorer = scorer or ModelBlockScorer(model, item_columns, item_block=item_block)
    n_items = scorer.n_items
    if item_vectors.shape[0] != n_items or user_vectors.shape[0] != len(seen):
        raise ValueError(f"two-stage scoring: {item_vectors.shape[0]} item vectors for {n_items} catalogue items, "
                         f"{user_vectors.shape[0]} user vectors for {len(seen)} users; they must match row for row")
    n = min(int(candidates), n_items)
    kk = min(int(k), n)
    if kk == 0:
        return
    items_t = tf.constant(item_vectors, dtype=tf.float32)
    for start in range(0, len(seen), user_block):
        stop = min(start + user_block, len(seen))
        retrieval = tf.matmul(tf.constant(user_vectors[start:stop], tf.float32), items_t, transpose_b=True)
        values, positions = tf.math.top_k(mask_seen(retrieval, seen[start:stop]), k=n, sorted=False)
        # candidates in ascending catalogue order (so equal ranking scores keep the lower item id); none = n_items
        chosen = np.sort(np.where(np.isfinite(values.numpy()), positions.numpy(), n_items), axis=1)
        valid = chosen < n_items
        ranked = scorer.scores_at(_rows(user_columns, start, stop), np.minimum(chosen, n_items - 1))
        ranked = tf.where(tf.constant(valid), ranked, tf.constant(-np.inf, ranked.dtype))
        best, at = tf.math.top_k(ranked, k=kk, sorted=True)
        best = best.numpy()
        picked = np.take_along_axis(chosen, at.numpy(), axis=1).astype(np.int64)
        yield start, np.where(np.isfinite(best), picked, -1), best


def recommend_two_stage(
    model,
    users,
    catalogue,
    seen: Sequence[np.ndarray],
    k: int,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    candidates: int,
    *,
    user_block: int = 512,
    item_block: int = 4096,
) -> pa.Table:
    """``recommend`` in two stages (``two_stage_blocks``): the same table, ranked among the retrieved candidates."""
    blocks = two_stage_blocks(model, users.columns, catalogue.columns, seen, k, user_vectors, item_vectors,
                              candidates, user_block=user_block, item_block=item_block)
    return _recommendation_table(users, catalogue, blocks)


def _recommendation_table(users, catalogue, blocks) -> pa.Table:
    """Table[user_id, rank, item_id, score] from (first user row, positions, scores) blocks."""
    parts = []
    for start, positions, values in blocks:
        rows, ranks = np.nonzero(positions >= 0)
        parts.append(pa.table({
            "user_id": users.ids.take(pa.array(start + rows)),
            "rank": pa.array((ranks + 1).astype(np.int32)),
            "item_id": catalogue.ids.take(pa.array(positions[rows, ranks])),
            "score": pa.array(values[rows, ranks].astype(np.float32)),
        }))
    if not parts:
        return pa.table({"user_id": users.ids.slice(0, 0), "rank": pa.array([], pa.int32()),
                         "item_id": catalogue.ids.slice(0, 0), "score": pa.array([], pa.float32())})
    return pa.concat_tables(parts)


def _seen_lists(column: pa.Array) -> list[np.ndarray]:
    """A nullable list<int> column of catalogue positions -> one int64 array per row (null = none)."""
    offsets, values = list_offsets(column)
    return np.split(values.astype(np.int64), offsets[1:-1]) if len(column) else []


class ArrowBatchScorer:
    """Top-K of Arrow batches of users under a loaded model, for any model (non-factorised included).

    The per-task scorer of ``jobs.scoring.score_in_spark``: the model and its
    catalogue's item parts (``scorer``) are built once per Python worker;
    each batch of users is scored against every item block, seen items
    masked before the selection.

    Args:
        scorer: a ``ModelBlockScorer`` of the model over the whole catalogue (catalogue order = ascending item id).
        k: recommendations per user.
        block_rows: users per ``top_k_batch`` call (bounds the [users, items, hidden] work memory
            with ``scorer.item_block``).
        item_vectors: two-stage scoring: [n_items, d] retriever embeddings in catalogue order
            (the batches then carry each user's retriever vector in ``embedding``); None = exhaustive.
        candidates: two-stage: the retriever's candidates per user.
    """

    def __init__(self, scorer: ModelBlockScorer, k: int, *, block_rows: int = 512,
                 item_vectors: np.ndarray | None = None, candidates: int | None = None):
        self.scorer, self.k, self.block_rows = scorer, int(k), int(block_rows)
        self.item_vectors, self.candidates = item_vectors, candidates
        self.user_inputs = side_columns(scorer.model.spec["user"])

    def top_k_batch(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k of one batch [user_id, the user tower's inputs, seen_pos: list<int> (nullable), embedding?].

        Returns:
            (rows [r], catalogue positions [r], scores [r]) ordered by row then rank;
            a row has min(k, its unseen items) entries.
        """
        missing = [name for name in self.user_inputs if name not in batch.schema.names]
        if missing:
            raise ValueError(f"scoring batch: the model's user inputs {missing} are missing "
                             f"(the batch has {batch.schema.names})")
        users = arrow_columns(batch, self.user_inputs)
        seen = _seen_lists(batch.column("seen_pos"))
        if self.item_vectors is None:
            blocks = top_k_blocks(self.scorer.model, users, {}, seen, self.k, user_block=self.block_rows,
                                  scorer=self.scorer)
        else:
            if batch.column("embedding").null_count:
                user = batch.column("user_id").filter(batch.column("embedding").is_null())[0].as_py()
                raise ValueError(f"two-stage scoring: user {user!r} has no row in the retriever's user embeddings")
            user_vectors = float_matrix(batch.column("embedding"), self.item_vectors.shape[1],
                                        batch.column("user_id"), "two-stage scoring: the retriever's user embeddings")
            blocks = two_stage_blocks(self.scorer.model, users, {}, seen, self.k, user_vectors, self.item_vectors,
                                      self.candidates, user_block=self.block_rows, scorer=self.scorer)
        found = []
        for start, positions, values in blocks:
            rows, ranks = np.nonzero(positions >= 0)
            found.append((start + rows, positions[rows, ranks], values[rows, ranks]))
        if not found:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        rows, positions, values = (np.concatenate(part) for part in zip(*found))
        return rows.astype(np.int64), positions.astype(np.int64), values.astype(np.float32)


def catalogue_scorer(model_file: Location, item_features: Location, *, item_block: int = 4096) -> ModelBlockScorer:
    """Load a saved model and compute its item parts over a catalogue (once per Spark worker).

    Meant to be built once per Python worker (``jobs.scoring.worker_cached``, keyed by
    ``models.registry.version_key(model_file, item_features)``).

    Args:
        model_file: the saved ``.keras`` file.
        item_features: the item feature table (Parquet) the catalogue is read from, in any row order.

    Returns:
        ``ModelBlockScorer`` whose catalogue position p is the p-th smallest item id of the table.
    """
    model = load_model(model_file)
    catalogue = read_side_table(item_features, model.spec["item"], "item_id")
    return ModelBlockScorer(model, catalogue.columns, item_block=item_block)
