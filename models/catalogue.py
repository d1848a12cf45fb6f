"""In-memory side tables (the item catalogue, a block of users) and negative sampling.

A side table is small next to the examples (one row per item, or per user
of a block), so it is read whole: the model inputs of every row, in id
order, beside the source ids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tensorflow as tf

from jobs.storage import Location
from models.data import arrow_columns, parquet_files, read_column, read_columns, read_parquet, side_columns, to_feed
from models.layers import RESERVED_ROWS


@dataclasses.dataclass
class SideTable:
    """Rows of one side sorted by id.

    Attributes:
        ids: [n] the source ids (pyarrow array, ascending).
        columns: input column -> [n] or [n, max_len] numpy array (model dtypes).
    """

    ids: pa.Array
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The model inputs of the given row positions."""
        return {n: a[rows] for n, a in self.columns.items()}

    def positions(self, ids) -> np.ndarray:
        """Row position of each id ([m] int64; -1 where the id is not in the table)."""
        values = np.asarray(pa.array(ids, type=self.ids.type).to_numpy(zero_copy_only=False))
        keys = np.asarray(self.ids.to_numpy(zero_copy_only=False))
        if len(keys) == 0:
            return np.full(len(values), -1, dtype=np.int64)
        pos = np.searchsorted(keys, values)
        pos = np.minimum(pos, len(keys) - 1)
        return np.where(keys[pos] == values, pos, -1).astype(np.int64)


def read_side_table(table: Location, side_spec: Mapping, id_col: str, *, unique: bool = True) -> SideTable:
    """Read a side feature table (``user_features`` / ``item_features`` Parquet) sorted by ``id_col``.

    Args:
        table: Parquet folder or file with ``id_col`` and the side's input columns.
        side_spec: the side's feature spec.
        id_col: ``user_id`` or ``item_id``.
        unique: keep the first row of each id (an examples table repeats them).

    Returns:
        SideTable in ascending id order.
    """
    files = parquet_files(table)
    columns = side_columns(side_spec)
    ids = read_column(files, id_col)
    values = to_feed(read_columns(files, columns))
    if ids.null_count:
        raise ValueError(f"{table.display()}: column {id_col} has {ids.null_count} null ids; every row needs an id")
    order = np.asarray(pc.array_sort_indices(ids))  # a stable sort
    ids = ids.take(pa.array(order))
    values = {n: a[order] for n, a in values.items()}
    if unique and len(ids):
        keys = np.asarray(ids.to_numpy(zero_copy_only=False))
        first = np.concatenate([[True], keys[1:] != keys[:-1]])
        ids = ids.filter(pa.array(first))
        values = {n: a[first] for n, a in values.items()}
    return SideTable(ids=ids, columns=values)


def index_counts(files: list[Location], column: str, vocab_size: int) -> np.ndarray:
    """Rows per value of an index column (``item_idx``, ``user_idx``): [vocab_size] float64."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    for file in files:
        with file.open_input() as handle:
            for batch in pq.ParquetFile(handle).iter_batches(columns=[column], batch_size=65536):
                idx = batch.column(0).to_numpy(zero_copy_only=False)
                counts += np.bincount(idx, minlength=vocab_size)[:vocab_size]
    return counts


class NegativeSampler:
    """Samples catalogue items as negatives, inside the training step (stateless, seeded).

    Candidates are the catalogue rows whose item index is a trained one
    (index >= 2). ``mode="uniform"`` draws them with equal probability,
    ``mode="popularity"`` in proportion to their training rows.

    Args:
        catalogue: the item side table.
        item_col: the item index column (e.g. ``item_idx``).
        counts: [vocab_size] training rows per item index (for "popularity").
        mode: "uniform" or "popularity".
        seed: the sampler's seed; each call adds its step and replica.
    """

    def __init__(self, catalogue: SideTable, item_col: str, counts: np.ndarray, mode: str = "uniform", seed: int = 0):
        if mode not in ("uniform", "popularity"):
            raise ValueError(f"negatives must be 'uniform' or 'popularity', got {mode!r}")
        idx = catalogue.columns[item_col]
        rows = np.nonzero(idx >= RESERVED_ROWS)[0]
        if rows.size == 0:
            raise ValueError("no catalogue item has a trained index (>= 2): nothing to sample negatives from")
        weights = np.ones(rows.size) if mode == "uniform" else np.maximum(counts[idx[rows]], 0.0)
        if weights.sum() <= 0:
            weights = np.ones(rows.size)
        cdf = np.cumsum(weights) / weights.sum()
        #: [vocab_size] probability that one draw is each item index.
        self.index_probability = np.zeros(max(len(counts), int(idx.max()) + 1), dtype=np.float64)
        np.add.at(self.index_probability, idx[rows], weights / weights.sum())
        self.mode = mode
        self.seed = int(seed)
        self.item_col = item_col
        self.cdf = tf.constant(cdf, dtype=tf.float64)
        self.columns = {n: tf.constant(a[rows]) for n, a in catalogue.columns.items()}

    def sample(self, n, step, replica=0):
        """``n`` sampled items: (input dict of [n, ...] tensors, item indices [n])."""
        seed = tf.stack([tf.cast(self.seed, tf.int64) * 7919 + tf.cast(replica, tf.int64), tf.cast(step, tf.int64)])
        u = tf.random.stateless_uniform([n], seed=seed, dtype=tf.float64)
        last = tf.shape(self.cdf, out_type=tf.int64)[0] - 1
        rows = tf.minimum(tf.searchsorted(self.cdf, u, side="right", out_type=tf.int64), last)
        taken = {name: tf.gather(col, rows) for name, col in self.columns.items()}
        return taken, taken[self.item_col]


#: Most catalogue items ``CatalogueItems`` accepts: a full softmax scores all of them at every training step.
FULL_SOFTMAX_MAX_ITEMS = 100_000


class CatalogueItems:
    """Every trained catalogue item as one tensor batch, for a softmax over the whole catalogue.

    The items are the catalogue rows whose item index is a trained one
    (index >= 2), one column per index, in catalogue (id) order.

    Args:
        catalogue: the item side table.
        item_col: the item index column (e.g. ``item_idx``).
        vocab_size: size of the item index vocabulary.
        max_items: refuse a larger catalogue (its [batch, items] logits at every step would be too costly).
    """

    def __init__(self, catalogue: SideTable, item_col: str, vocab_size: int,
                 max_items: int = FULL_SOFTMAX_MAX_ITEMS):
        idx = catalogue.columns[item_col]
        rows = np.nonzero(idx >= RESERVED_ROWS)[0]
        rows = rows[np.unique(idx[rows], return_index=True)[1]]
        rows.sort()
        if rows.size == 0:
            raise ValueError("no catalogue item has a trained index (>= 2): the full softmax has no candidates")
        if rows.size > max_items:
            raise ValueError(f"loss full_softmax scores every catalogue item at every training step, and the "
                             f"catalogue has {rows.size:,} trained items (at most {max_items:,}); use loss "
                             "in_batch_softmax with extra_negatives (sampled negatives) for a catalogue this big")
        #: [n_items] item index of each column.
        self.item_index = idx[rows].astype(np.int64)
        column_of = np.full(int(vocab_size), -1, dtype=np.int32)
        column_of[self.item_index] = np.arange(rows.size, dtype=np.int32)
        self._column_of = column_of
        self.column_of = tf.constant(column_of)
        self.columns = {n: tf.constant(a[rows]) for n, a in catalogue.columns.items()}

    def __len__(self) -> int:
        return int(self.item_index.size)

    def missing(self, indices: np.ndarray) -> np.ndarray:
        """The item indices among ``indices`` that have no column (not trained catalogue items)."""
        indices = np.asarray(indices, dtype=np.int64)
        inside = (indices >= 0) & (indices < self._column_of.size)
        bad = ~inside
        bad[inside] = self._column_of[indices[inside]] < 0
        return indices[bad]

    def labels(self, item_idx):
        """Column of each item index: [n] int32 (``item_idx`` [n])."""
        return tf.gather(self.column_of, tf.cast(item_idx, tf.int32))


def read_user_history(history: Location, user_vocab_size: int, max_len: int) -> np.ndarray:
    """The users' history lists as the model holds them (``jobs.history.user_history`` output).

    Args:
        history: Parquet with ``user_idx`` (int) and ``history`` (list<int> of item indices, most recent first).
        user_vocab_size: rows of the result (the user id vocabulary of the model spec).
        max_len: columns; longer lists keep their first (most recent) ``max_len`` items.

    Returns:
        [user_vocab_size, max_len] int32, -1 padded; users absent from the table (and the
        reserved rows 0, 1) have empty lists.
    """
    out = np.full((int(user_vocab_size), int(max_len)), -1, dtype=np.int32)
    for f in parquet_files(history):
        table = read_parquet(f, ["user_idx", "history"])
        rows = table.column("user_idx").to_numpy(zero_copy_only=False).astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= user_vocab_size):
            raise ValueError(f"{history.display()}: user_idx outside 0..{user_vocab_size - 1}; was the history "
                             "built with the same feature state as the model?")
        out[rows] = arrow_columns(table, {"history": int(max_len)})["history"]
    return out
