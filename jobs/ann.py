"""Approximate top-K for large catalogues: a FAISS index over the item embeddings, exact answers guaranteed in form.

Exhaustive scoring costs users x items; at millions of items an approximate
nearest-neighbour index (FAISS, Johnson, Douze and Jegou 2017, "Billion-scale
similarity search with GPUs"; here its CPU indexes) reads a small part of
the catalogue per user. nightrec uses it as a candidate generator only:

1. The index (``AnnSettings``: ``flat``, ``ivf`` or ``hnsw``, inner-product
   metric) is built once on the driver over the item matrix (``build_index``)
   and serialised; the bytes and the item matrix are broadcast by
   ``jobs.scoring.score_in_spark`` and each Python worker deserialises the
   index once (``jobs.scoring.worker_cached``).
2. Each block of users retrieves C = k + (most seen items of a user in the
   block) + ``extra_candidates`` candidates (at least ``candidate_multiple``
   x k), so seen items cannot crowd out the K.
3. The candidates are re-scored exactly (<user, item> in float32, as the
   exact path), seen items dropped, and the top K kept with the exact path's
   order (score descending, then the lower item id).
4. A user is re-scored exhaustively (``jobs.scoring.BlockScorer``) when the
   index gave fewer than K unseen candidates, or when the K-th score is not
   above the lowest retrieved one (an item tied with the K-th may be beyond
   the retrieved set): every user gets min(K, unseen items) rows, exactly
   like the exact path, and a flat index gives exactly the exact path's lists.

Memory per Python worker: the broadcast item matrix and index bytes, the
deserialised index (IVF-Flat, HNSW and flat hold the vectors again) and,
once a user falls back, the exhaustive scorer's transposed copy of the
matrix with its [fallback_rows, items] buffer: about 4x the float32 matrix.

Recall is measured, not assumed: ``recall_at_k`` compares the lists with
exact scoring on a seeded sample of users and ``check_recall`` fails when it
is below a floor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs import scoring, topk
from jobs.arrays import float_matrix, list_offsets

INDEX_TYPES = ("flat", "ivf", "hnsw")


def _faiss():
    """The ``faiss`` module (``faiss-cpu``), with a clear message when it is not installed."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a declared dependency
        raise ImportError("scoring method 'ann' needs FAISS: pip install faiss-cpu") from None
    return faiss


@dataclasses.dataclass(frozen=True)
class AnnSettings:
    """The approximate index and its retrieval.

    Attributes:
        index: ``flat`` (exact inner-product search: a check, not a speed-up), ``ivf`` (the default: k-means
            cells, ``nlist`` of them, ``nprobe`` searched per user; the one measured in bench/scoring.py) or
            ``hnsw`` (a graph of ``hnsw_m`` links per node, ``ef_construction`` / ``ef_search`` beam widths;
            slower to build on one thread).
        nlist: IVF cells; None: about 4 sqrt(items), at most (training items) / 39 (k-means wants >= 39
            training points a cell).
        nprobe: IVF cells searched per user.
        hnsw_m: HNSW links per node.
        ef_construction: HNSW beam width while building.
        ef_search: HNSW beam width while searching (raised to the candidate count when that is larger).
        extra_candidates: candidates retrieved beyond k + the most seen items of a user of the block.
        candidate_multiple: at least ``candidate_multiple`` x k candidates per user.
        train_sample: at most this many items train the IVF quantiser (a seeded sample).
        seed: seed of the IVF training sample and k-means.
        build_threads: threads that build the index (1: the same index every time; HNSW built with
            several threads may differ between builds).
        fallback_rows: users per exhaustive re-score of the fallback (a [rows, items] buffer).
    """

    index: str = "ivf"
    nlist: int | None = None
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    extra_candidates: int = 10
    candidate_multiple: float = 2.0
    train_sample: int = 100_000
    seed: int = 0
    build_threads: int = 1
    fallback_rows: int = 16

    def __post_init__(self):
        if self.index not in INDEX_TYPES:
            raise ValueError(f"ann index {self.index!r} is not one of {', '.join(INDEX_TYPES)}; set scoring.ann.index")
        positive = {"nprobe": self.nprobe, "hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction,
                    "ef_search": self.ef_search, "train_sample": self.train_sample,
                    "build_threads": self.build_threads, "fallback_rows": self.fallback_rows}
        if self.nlist is not None:
            positive["nlist"] = self.nlist
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ann setting {name} must be a positive integer, got {value!r}")
        if not isinstance(self.extra_candidates, int) or self.extra_candidates < 0:
            raise ValueError(f"ann setting extra_candidates must be an integer >= 0, got {self.extra_candidates!r}")
        if not self.candidate_multiple >= 1:
            raise ValueError(f"ann setting candidate_multiple must be >= 1 (candidates per result), "
                             f"got {self.candidate_multiple!r}")

    def cells(self, m: int) -> int:
        """The IVF cell count for a catalogue of ``m`` items."""
        if self.nlist is not None:
            return min(self.nlist, m)
        return max(1, min(int(4 * math.sqrt(m)), min(m, self.train_sample) // 39))


def build_index(item_matrix: np.ndarray, settings: AnnSettings) -> Any:
    """A FAISS inner-product index over the catalogue (row i of ``item_matrix`` is catalogue position i).

    Args:
        item_matrix: [m, d] float32 item embeddings in catalogue order.
        settings: the index type and its parameters.

    Returns:
        A ``faiss.Index`` with m vectors (IVF trained with ``settings.seed``; search parameters set).
    """
    faiss = _faiss()
    items = np.ascontiguousarray(item_matrix, dtype=np.float32)
    m, d = items.shape
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(settings.build_threads)
    try:
        if settings.index == "flat":
            index = faiss.IndexFlatIP(d)
        elif settings.index == "hnsw":
            index = faiss.IndexHNSWFlat(d, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = settings.ef_construction
        else:
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, settings.cells(m), faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = settings.seed
            sample = items
            if m > settings.train_sample:
                rows = np.random.default_rng(settings.seed).choice(m, settings.train_sample, replace=False)
                sample = items[np.sort(rows)]
            index.train(sample)
        if m:
            index.add(items)
    finally:
        faiss.omp_set_num_threads(threads)
    _set_search_parameters(index, settings, settings.ef_search)
    return index


def _set_search_parameters(index, settings: AnnSettings, candidates: int) -> None:
    faiss = _faiss()
    if settings.index == "ivf":
        faiss.extract_index_ivf(index).nprobe = min(settings.nprobe, faiss.extract_index_ivf(index).nlist)
    elif settings.index == "hnsw":
        index.hnsw.efSearch = max(settings.ef_search, candidates)


def serialize_index(index) -> bytes:
    """The index as bytes (``faiss.serialize_index``), to broadcast."""
    return _faiss().serialize_index(index).tobytes()


def deserialize_index(data: bytes):
    """``serialize_index`` reversed."""
    return _faiss().deserialize_index(np.frombuffer(data, dtype=np.uint8))


def candidate_count(k: int, max_seen: int, m: int, settings: AnnSettings) -> int:
    """Candidates retrieved per user of a block: max(k + max_seen + extra, multiple x k), at most m."""
    return min(m, max(k + max_seen + settings.extra_candidates, math.ceil(settings.candidate_multiple * k)))


class AnnScorer:
    """Scores blocks of users from the index's candidates; exhaustive for the users it cannot answer.

    Args:
        index: the FAISS index over catalogue positions 0..m-1.
        item_matrix: [m, d] float32 item embeddings (exact re-scoring and the fallback).
        k: results per user.
        settings: the retrieval settings.
        block_rows: users per search.
        group_width: first-level group width of the fallback's selection.

    Attributes:
        fallback_users: users re-scored exhaustively so far (counts, for the logs and tests).
    """

    def __init__(self, index, item_matrix: np.ndarray, k: int, settings: AnnSettings, *,
                 block_rows: int = scoring.DEFAULT_BLOCK_ROWS, group_width: int = topk.DEFAULT_GROUP_WIDTH):
        self.index, self.items, self.k, self.settings = index, item_matrix, k, settings
        self.m, self.dim = item_matrix.shape
        self.block_rows, self.group_width = block_rows, group_width
        self._exact: scoring.BlockScorer | None = None
        self.fallback_users = 0

    def _exhaustive(self) -> scoring.BlockScorer:
        if self._exact is None:
            self._exact = scoring.BlockScorer(self.items, self.k, block_rows=self.settings.fallback_rows,
                                              group_width=self.group_width)
        return self._exact

    def top_k(self, user_emb: np.ndarray, seen_offsets: np.ndarray, seen_pos: np.ndarray):
        """Top-k unseen items of up to ``block_rows`` users (same contract as ``BlockScorer.top_k``).

        Args:
            user_emb: [n, d] float32.
            seen_offsets: [n + 1] offsets of each user's seen positions in ``seen_pos``.
            seen_pos: catalogue positions to exclude.

        Returns:
            (rows [r], positions [r], scores [r]) ordered by row then rank; a row has min(k, unseen items).
        """
        n = user_emb.shape[0]
        if n == 0 or self.m == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        seen_counts = np.diff(seen_offsets)
        c = candidate_count(self.k, int(seen_counts.max()), self.m, self.settings)
        _set_search_parameters(self.index, self.settings, c)
        _, found = self.index.search(np.ascontiguousarray(user_emb, np.float32), c)  # [n, c], -1: none
        valid = found >= 0
        safe = np.where(valid, found, 0)
        exact = np.einsum("nd,ncd->nc", user_emb, self.items[safe])  # [n, c] exact re-score
        exact[~valid] = topk.NEG_INF
        lowest = np.where(valid, exact, np.inf).min(axis=1)  # lowest retrieved score per user
        # seen candidates -> -inf: (row, position) pairs as one int64 key each
        seen_keys = np.repeat(np.arange(n, dtype=np.int64), seen_counts) * self.m + seen_pos
        cand_keys = np.arange(n, dtype=np.int64)[:, None] * self.m + safe
        exact[np.isin(cand_keys, seen_keys) & valid] = topk.NEG_INF
        cand_rows = np.repeat(np.arange(n), c)
        keep = np.isfinite(exact.reshape(-1))
        rows_k, pos_k, vals_k = topk.keep_top_k(cand_rows[keep], found.reshape(-1)[keep],
                                                exact.reshape(-1)[keep], self.k, n)
        got = np.bincount(rows_k, minlength=n)
        kth = np.full(n, np.inf, np.float32)
        full = got == self.k
        last = np.cumsum(got) - 1
        kth[full] = vals_k[last[full]]
        complete = valid.sum(axis=1) >= self.m  # the whole catalogue was retrieved: nothing is missing
        short = (got < self.k) & ~complete
        tied = full & ~complete & (kth <= lowest)
        redo = np.flatnonzero(short | tied)
        if redo.size == 0:
            return rows_k, pos_k, vals_k
        self.fallback_users += int(redo.size)
        keep_rows = ~np.isin(rows_k, redo)
        parts = [(rows_k[keep_rows], pos_k[keep_rows], vals_k[keep_rows])]
        exhaustive = self._exhaustive()
        for start in range(0, redo.size, exhaustive.block_rows):
            users = redo[start : start + exhaustive.block_rows]
            offsets = np.concatenate([[0], np.cumsum(seen_counts[users])]).astype(np.int64)
            positions = np.concatenate([seen_pos[seen_offsets[u]:seen_offsets[u + 1]] for u in users]) \
                if offsets[-1] else np.zeros(0, np.int64)
            r, p, v = exhaustive.top_k(np.ascontiguousarray(user_emb[users]), offsets, positions)
            parts.append((users[r], p, v))
        rows_all, pos_all, vals_all = (np.concatenate(x) for x in zip(*parts))
        order = np.argsort(rows_all, kind="stable")  # by row; each row's entries keep their rank
        return rows_all[order], pos_all[order], vals_all[order]

    def top_k_batch(self, batch: pa.RecordBatch):
        """``top_k`` of an Arrow batch [user_id, embedding, seen_pos, ...] of up to block_rows users."""
        emb = float_matrix(batch.column("embedding"), self.dim, batch.column("user_id"), "user embeddings")
        offsets, values = list_offsets(batch.column("seen_pos"))
        return self.top_k(emb, offsets, values.astype(np.int64, copy=False))


def top_k_for_users(
    users: DataFrame,
    item_ids: pa.Array,
    item_matrix: np.ndarray,
    *,
    k: int,
    settings: AnnSettings = AnnSettings(),
    index=None,
    user_id_type: str | None = None,
    block_rows: int = scoring.DEFAULT_BLOCK_ROWS,
    group_width: int = topk.DEFAULT_GROUP_WIDTH,
    partitions: int | None = None,
) -> DataFrame:
    """Approximate top-K of every user row: the index's candidates, re-scored exactly, seen items excluded.

    The same inputs and output as ``jobs.scoring.top_k_for_users``.

    Args:
        users: DataFrame[user_id, embedding: array<float> (length d), seen_pos: array<int> (nullable),
            source: string].
        item_ids: [m] catalogue ids, unique and ascending.
        item_matrix: [m, d] float32 item embeddings in the same order.
        k: recommendations per user.
        settings: the index and retrieval settings.
        index: an index already built by ``build_index`` over ``item_matrix`` (default: built here).
        user_id_type, block_rows, group_width, partitions: as in ``jobs.scoring.top_k_for_users``.

    Returns:
        DataFrame[user_id, rank: int (1..), item_id, score: float, source: string]: min(k, unseen items)
        rows per user, best first, ties to the lower item id.
    """
    matrix = scoring.check_catalogue(item_ids, item_matrix)
    data = serialize_index(index if index is not None else build_index(matrix, settings))
    key = "ann-index-" + hashlib.sha256(data).hexdigest()

    def build_scorer(payload, _lo: int) -> AnnScorer:
        index_bytes, items = payload
        faiss = _faiss()
        faiss.omp_set_num_threads(1)  # one task per core
        found = scoring.worker_cached(key, lambda: deserialize_index(index_bytes))
        return AnnScorer(found, items, k, settings, block_rows=block_rows, group_width=group_width)

    rows = users.select("user_id", "embedding", "seen_pos", "source")
    return scoring.score_in_spark(rows, item_ids, [(0, (data, matrix))], build_scorer, k=k,
                                  user_id_type=user_id_type, partitions=partitions)


class RecallBelowFloor(RuntimeError):
    """The approximate lists' measured recall is below the configured floor."""


@dataclasses.dataclass(frozen=True)
class RecallReport:
    """recall@K of approximate lists against exact scoring on a sample of users.

    Attributes:
        recall: mean over the sampled users of |ann_K ∩ exact_K| / |exact_K| (users with an empty exact
            list are not counted); None when no user was counted.
        k: the cut-off.
        users: the users counted.
        seed: the sample's seed.
    """

    recall: float | None
    k: int
    users: int
    seed: int

    def as_manifest(self) -> dict:
        """{"ann_recall_at_k": …, "ann_recall_k": …, "ann_recall_users": …, "ann_recall_seed": …}."""
        return {"ann_recall_at_k": self.recall, "ann_recall_k": self.k, "ann_recall_users": self.users,
                "ann_recall_seed": self.seed}


def recall_at_k(
    ann_recs: DataFrame,
    users: DataFrame,
    item_ids: pa.Array,
    item_matrix: np.ndarray,
    *,
    k: int,
    sample_users: int,
    seed: int,
    **exact_kwargs,
) -> RecallReport:
    """recall@K of ``ann_recs`` against exact scoring (``jobs.scoring.top_k_for_users``) of a user sample.

    The sample: the ``sample_users`` users with the smallest xxhash64(seed, user_id) (the same users on any
    cluster).

    Args:
        ann_recs: DataFrame[user_id, rank, item_id, ...] (``top_k_for_users`` of this module).
        users: the rows that were scored, DataFrame[user_id, embedding, seen_pos, source].
        item_ids, item_matrix: the catalogue, as scored.
        k: the cut-off (ranks <= k of both lists).
        sample_users: users in the sample (>= 1).
        seed: the sample's seed.
        exact_kwargs: block sizes for ``jobs.scoring.top_k_for_users``.

    Returns:
        The ``RecallReport``.
    """
    if sample_users < 1:
        raise ValueError(f"recall sample_users must be >= 1, got {sample_users}")
    order = F.xxhash64(F.lit(int(seed)), F.col("user_id"))
    chosen = users.select("user_id").distinct().orderBy(order, "user_id").limit(int(sample_users))
    sample = users.join(chosen, on="user_id", how="left_semi")
    exact = scoring.top_k_for_users(sample, item_ids, item_matrix, k=k, **exact_kwargs).where(F.col("rank") <= k)
    approx = ann_recs.where(F.col("rank") <= k).join(chosen, on="user_id", how="left_semi")
    hits = exact.select("user_id", "item_id").join(approx.select("user_id", "item_id"), on=["user_id", "item_id"],
                                                   how="left_semi").groupBy("user_id").agg(F.count("*").alias("hit"))
    per_user = (exact.groupBy("user_id").agg(F.count("*").alias("relevant"))
                .join(hits, on="user_id", how="left")
                .select((F.coalesce("hit", F.lit(0)) / F.col("relevant")).alias("recall")))
    row = per_user.agg(F.avg("recall").alias("recall"), F.count("*").alias("users")).collect()[0]
    return RecallReport(None if row.recall is None else float(row.recall), k, int(row.users), int(seed))


def check_recall(report: RecallReport, floor: float) -> RecallReport:
    """``report`` when its recall reaches ``floor``; ``RecallBelowFloor`` otherwise (fail the run).

    Args:
        report: from ``recall_at_k``.
        floor: the least acceptable recall@K, in [0, 1].
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"ann recall floor must be in [0, 1], got {floor!r}")
    if report.recall is None:
        raise RecallBelowFloor(f"ann recall@{report.k} could not be measured: no sampled user has an exact list; "
                               f"score at least one user with unseen items")
    if report.recall < floor:
        raise RecallBelowFloor(
            f"ann recall@{report.k} is {report.recall:.4f} on {report.users} sampled users, below the floor "
            f"{floor:.4f}; raise scoring.ann.nprobe (ivf) or ef_search (hnsw), or use scoring.method: exact")
    return report
