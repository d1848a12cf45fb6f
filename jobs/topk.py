"""Exact per-row top-K of score matrices in NumPy, without a full-row argpartition.

``np.argpartition`` over every score costs ~5-20 ns per element on this
hardware, more than the matrix product that made the scores. nightrec selects
in two levels instead, which is exact and reads each score once, plus about
K x w of them again per row:

1. The columns of a row are dealt into ``G = m / w`` strided groups
   (group ``g`` holds columns ``g, g + G, g + 2G, ...``), so the group maxima
   are an element-wise maximum of ``w`` contiguous slices: [n, G].
2. A threshold ``t`` per row that is at most the row's K-th best score: the
   group maxima are folded once more into ``S = max(4K, 64)`` supergroups
   and ``t`` is the K-th largest supergroup maximum (a partition over ``S``
   values, not ``G`` or ``m``). K different supergroups reach ``t``, each
   through its own column, so the row's K-th best score is at least ``t``:
   every top-K score is ``>= t`` and lies in a group whose maximum is
   ``>= t``. With S >> K the top K rarely share a supergroup, so usually
   about K groups qualify.
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
# box (best of 15, two sweeps): width 8 -> 0.49-0.52, 16 -> 0.43-0.50, 32 -> 0.45-0.46,
# 64 -> 0.53, 128 -> 0.67-0.72 ns per score.
DEFAULT_GROUP_WIDTH = 32
# Step 2's supergroups: S = max(4K, 64); the chance that two of the top K share
# one (and one more group qualifies) is about K^2 / 2S.
SUPERGROUPS_PER_K = 4
MIN_SUPERGROUPS = 64


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
    if rows.size == 0:
        return rows, cols, vals
    # One sort on (row, score descending) packed into a uint64; only when two
    # candidates of a row tie on the score does the column need a second key.
    key = (rows.astype(np.uint64) << np.uint64(32)) | (~_sortable_bits(vals)).astype(np.uint64)
    order = np.argsort(key)
    if (np.diff(key[order]) == 0).any():
        order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    keep = rank_within_rows(rows, n) < k
    return rows[keep], cols[keep], vals[keep]


def _sortable_bits(vals: np.ndarray) -> np.ndarray:
    """float32 [r] -> uint32 [r] in the same order (unsigned comparison; no NaN; -0.0 == 0.0)."""
    bits = (np.asarray(vals, dtype=np.float32) + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 is 0.0
    return np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))


def _threshold(group_max: np.ndarray, k: int, supergroups: int) -> np.ndarray:
    """[n, G] group maxima -> [n] a value at most each row's k-th best score (step 2; supergroups > k).

    The k-th largest maximum of ``supergroups`` disjoint sets of groups
    (set ``s`` holds groups ``s, s + S, ...``); the groups themselves when
    there are too few of them for that to save work.
    """
    n, groups = group_max.shape
    if groups <= k:
        return np.full(n, NEG_INF, np.float32)
    folds = groups // supergroups
    if folds < 2:
        return np.partition(group_max, groups - k, axis=1)[:, groups - k]
    main = folds * supergroups
    folded = group_max[:, :main].reshape(n, folds, supergroups).max(axis=1)  # [n, S]
    rest = groups - main
    if rest:
        np.maximum(folded[:, :rest], group_max[:, main:], out=folded[:, :rest])
    return np.partition(folded, supergroups - k, axis=1)[:, supergroups - k]


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
    threshold = _threshold(group_max, k, supergroups=max(SUPERGROUPS_PER_K * k, MIN_SUPERGROUPS))
    threshold = np.maximum(threshold, _LOWEST)  # never admit -inf
    cand_rows, cand_groups = np.divmod(np.flatnonzero(group_max >= threshold[:, None]), groups)
    members = grouped[cand_rows, :, cand_groups]  # [c, w]
    hit = np.flatnonzero(members >= threshold[cand_rows, None])
    cand, member = np.divmod(hit, group_width)
    rows = cand_rows[cand]
    cols = member * groups + cand_groups[cand] + col_offset
    return keep_top_k(rows, cols, members.reshape(-1)[hit], k, n)


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
