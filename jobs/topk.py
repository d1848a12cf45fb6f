"""Exact per-row top-K of score matrices in NumPy, without a full-row argpartition.

``np.argpartition`` over every score costs ~5-20 ns per element on this
hardware, more than the matrix product that made the scores. nightrec selects
in two levels instead, which is exact and reads each score once, plus about
K x w of them again per row:

1. The columns of a row are dealt into ``G = m / w`` strided groups
   (group ``g`` holds columns ``g, g + G, g + 2G, ...``), so the group maxima
   are an element-wise maximum of ``w`` contiguous slices: [n, G].
2. ``t`` = the K-th largest group maximum of the row (a partition over ``G``
   values, not ``m``). K different groups reach ``t``, so the row's K-th best
   score is at least ``t``: every top-K score is ``>= t`` and lies in a group
   whose maximum is ``>= t``. Usually K groups qualify.
3. Only the members of those groups are read again; the ones ``>= t`` (about
   K per row) are sorted by (score descending, column ascending) and the
   first K kept.

Excluded entries are ``-inf`` and never selected, so a row yields
``min(K, finite entries)`` results. Equal scores go to the lower column, so
callers that keep the catalogue in item-id order get "lower item id wins".
Ties only widen step 3 (every tied member is kept); the answer stays exact.
"""

from __future__ import annotations

import numpy as np

NEG_INF = np.float32(-np.inf)
_LOWEST = np.finfo(np.float32).min

# Whole selection, one thread, a [256, 20,480] block of scores, K = 10, on the 2-core
# box: width 16 -> 0.64, 32 -> 0.57, 64 -> 0.63, 128 -> 0.72 ns per score.
DEFAULT_GROUP_WIDTH = 32


def padded_width(m: int, group_width: int = DEFAULT_GROUP_WIDTH) -> int:
    """The smallest multiple of ``group_width`` that holds ``m`` columns."""
    return -(-m // group_width) * group_width


def rank_within_rows(rows: np.ndarray, n: int) -> np.ndarray:
    """0-based position of each entry inside its row, for ``rows`` sorted ascending.

    Args:
        rows: [r] int row index of each entry, non-decreasing.
        n: number of rows.

    Returns:
        [r] int64 (0 for the first entry of a row, 1 for the next, ...).
    """
    counts = np.bincount(rows, minlength=n)
    return np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)


def keep_top_k(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, k: int, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k best of a flat set of (row, column, score) candidates per row.

    Args:
        rows, cols, vals: [r] candidates in any order; ``cols`` are global
            columns (they break ties: the lower column wins).
        k: how many to keep per row.
        n: number of rows.

    Returns:
        (rows, cols, vals) flat, ordered by row, then score descending, then
        column ascending; at most k entries per row.
    """
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    keep = rank_within_rows(rows, n) < k
    return rows[keep], cols[keep], vals[keep]


def select_top_k(
    scores: np.ndarray, k: int, *, group_width: int = DEFAULT_GROUP_WIDTH, col_offset: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k of every row of a score matrix (two-level selection).

    Args:
        scores: [n, m] float32 with ``m`` a multiple of ``group_width``
            (pad with -inf; see ``padded_width``); -inf marks excluded entries.
            NaN is not allowed (callers check their embeddings).
        k: results per row (>= 1).
        group_width: columns per group of the first level.
        col_offset: added to the returned columns (the block's first column).

    Returns:
        (rows [r] int64, cols [r] int64, vals [r] float32) ordered by row, then
        score descending, then column ascending; a row has min(k, finite
        entries) results.
    """
    n, m = scores.shape
    if m % group_width:
        raise ValueError(
            f"select_top_k: scores have {m} columns, not a multiple of group_width={group_width}; "
            f"pad to padded_width(m) columns with -inf"
        )
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if n == 0 or m == 0:
        return empty
    groups = m // group_width
    grouped = scores.reshape(n, group_width, groups)  # [n, w, G]: column j*G + g is member j of group g
    group_max = grouped.max(axis=1)  # [n, G]
    if groups > k:
        threshold = np.partition(group_max, groups - k, axis=1)[:, groups - k]
    else:
        threshold = np.full(n, NEG_INF, np.float32)
    threshold = np.maximum(threshold, _LOWEST)  # never admit -inf
    cand_rows, cand_groups = np.nonzero(group_max >= threshold[:, None])
    members = grouped[cand_rows, :, cand_groups]  # [c, w]
    hit, member = np.nonzero(members >= threshold[cand_rows, None])
    rows = cand_rows[hit]
    cols = member * groups + cand_groups[hit] + col_offset
    vals = members[hit, member]
    return keep_top_k(rows, cols.astype(np.int64), vals, k, n)


def top_k_rows(scores: np.ndarray, k: int, *, group_width: int = DEFAULT_GROUP_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """Per-row top-k of any [n, m] score matrix, as dense [n, k'] arrays.

    A convenience around ``select_top_k`` (it pads a copy when ``m`` is not a
    multiple of ``group_width``).

    Returns:
        (cols [n, k'] int64, vals [n, k'] float32) with k' = min(k, m); rows
        with fewer finite entries are filled with column -1 and value -inf.
    """
    n, m = scores.shape
    kk = min(k, m)
    width = padded_width(m, group_width)
    if width != m:
        padded = np.full((n, width), NEG_INF, np.float32)
        padded[:, :m] = scores
    else:
        padded = np.ascontiguousarray(scores, dtype=np.float32)
    cols = np.full((n, kk), -1, np.int64)
    vals = np.full((n, kk), NEG_INF, np.float32)
    if kk == 0:
        return cols, vals
    rows, c, v = select_top_k(padded, kk, group_width=group_width)
    rank = rank_within_rows(rows, n)
    cols[rows, rank] = c
    vals[rows, rank] = v
    return cols, vals


def mask_positions(
    scores: np.ndarray, offsets: np.ndarray, positions: np.ndarray, *, col_offset: int = 0
) -> None:
    """Set the listed (row, column) entries of ``scores`` to -inf, in place.

    Args:
        scores: [n, m] float32 scores of columns ``col_offset .. col_offset + m``.
        offsets: [n + 1] int start of each row's entries in ``positions``
            (Arrow list offsets, already rebased to start at 0).
        positions: global column positions to exclude; those outside this
            block's columns are ignored.
    """
    n, m = scores.shape
    if positions.size == 0:
        return
    rows = np.repeat(np.arange(n), np.diff(offsets))
    cols = positions.astype(np.int64) - col_offset
    inside = (cols >= 0) & (cols < m)
    scores[rows[inside], cols[inside]] = NEG_INF
