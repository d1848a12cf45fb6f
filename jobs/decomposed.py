"""Exhaustive top-K for non-factorised models (DeepFM, Wide & Deep, NCF/NeuMF), decomposed.

Scoring every (user, item) pair with the whole model repeats, for every pair,
work that depends on one side only: embedding look-ups, first-order terms,
FM field sums, and the user and item halves of the first dense layer. Those
are computed once per user and once per item (the model's job: issue 4's
models expose per-user parts, per-item parts and the pair part) and arrive
here as ``Parts``:

    bias   [n]     everything additive of one side: first-order weights, the
                   global bias (on the user side), and the FM self-interaction
                   0.5 * (||sum_f v_f||^2 - sum_f ||v_f||^2) over that side's fields
    dot    [n, f]  the side's FM field sum  sum_f v_f  (NeuMF/GMF: p_u * h and q_i)
    hidden [n, H1] the side's half of the first dense layer, W1_side x_side
                   (the layer bias b1 included on the user side)

so that, for DeepFM,

    logit(u, i) = bias_u + bias_i + <dot_u, dot_i> + MLP(relu(hidden_u + hidden_i))

because ||s_u + s_i||^2 = ||s_u||^2 + ||s_i||^2 + 2 <s_u, s_i> and
W1 [x_u; x_i] = W1_u x_u + W1_i x_i. Only the pair part runs per pair
(``PairHead.flops_per_pair``): 2f for the FM dot, 2 H1 for the add and ReLU
of the first layer, 2 a b + 2 b for each later a -> b layer, 2 H_L for the
output, against 2 (fields x width) H1 + the full FM for the plain model.
Wide & Deep fits the same form when its wide part has no user x item cross
features (a cross feature is a per-pair look-up: write a pair model with
``cross``/``aligned`` for it). NCF: GMF is a dot (h folded into the user
side), the MLP tower splits like DeepFM's deep part.

Selection, seen-item masking, tie-breaking and item blocks are those of
``jobs.scoring``/``jobs.topk``. Scores are logits: a model whose output is
sigmoid(logit) ranks the same, and float32 sigmoids saturate into ties.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame

from jobs import scoring, topk

PART_COLUMNS = ("bias", "dot", "hidden")


@dataclasses.dataclass(frozen=True)
class Parts:
    """Per-side parts of n users or n items (see the module docstring).

    Attributes:
        bias: [n] float32. dot: [n, f] float32 (f may be 0). hidden: [n, H1] float32 (H1 may be 0).
    """

    bias: np.ndarray
    dot: np.ndarray
    hidden: np.ndarray

    def __post_init__(self):
        n = len(self.bias)
        for name in PART_COLUMNS:
            value = np.asarray(getattr(self, name), dtype=np.float32)
            if value.shape[:1] != (n,) or value.ndim != (1 if name == "bias" else 2):
                raise ValueError(f"Parts.{name} has shape {value.shape}, expected ({n}{'' if name == 'bias' else ', width'})")
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.bias)

    def take(self, index) -> "Parts":
        """The rows ``index`` (a slice or an integer array)."""
        return Parts(self.bias[index], self.dot[index], self.hidden[index])

    @property
    def nbytes(self) -> int:
        return self.bias.nbytes + self.dot.nbytes + self.hidden.nbytes


class PairModel(Protocol):
    """What the exhaustive scorer needs from a model's pair part."""

    def cross(self, user: Parts, item: Parts) -> np.ndarray:
        """Logits of every (user, item) pair: [len(user), len(item)] float32."""

    def aligned(self, user: Parts, item: Parts) -> np.ndarray:
        """Logits of aligned rows (user[r], item[r]): [r] float32."""


@dataclasses.dataclass(frozen=True)
class PairHead:
    """The pair part of DeepFM / Wide & Deep / NCF in NumPy.

    logit = bias_u + bias_i + <dot_u, dot_i> + out_b + out_w . MLP(relu(hidden_u + hidden_i)),
    MLP = the ``layers`` (W [a, b], bias [b]) each followed by ReLU.

    Attributes:
        layers: dense layers after the first one, as (weights [a, b], bias [b]).
        out_w: [H_last] output weights of the deep part, or None for a model
            without one (FM, GMF, MF).
        out_b: the output bias.
    """

    layers: list[tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)
    out_w: np.ndarray | None = None
    out_b: float = 0.0
    _scratch: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A reused float32 work array (fresh large arrays cost page faults on every call)."""
        size = int(np.prod(shape))
        if self._scratch.get(name) is None or self._scratch[name].size < size:
            self._scratch[name] = np.empty(size, np.float32)
        return self._scratch[name][:size].reshape(shape)

    def _deep(self, first: np.ndarray) -> np.ndarray:
        """relu(first) through the MLP and the output weights, in place: [r, H1] -> [r]."""
        # ReLU against a row of zeros: twice as fast as against the scalar 0 in NumPy 2.4.
        h = np.maximum(first, np.zeros(first.shape[1], np.float32), out=first)
        for number, (weights, bias) in enumerate(self.layers):
            h = np.matmul(h, weights, out=self._buffer(f"layer{number}", (h.shape[0], weights.shape[1])))
            h += bias
            np.maximum(h, np.zeros(h.shape[1], np.float32), out=h)
        return h @ self.out_w

    def cross(self, user: Parts, item: Parts) -> np.ndarray:
        logits = user.bias[:, None] + item.bias[None, :] + np.float32(self.out_b)
        if user.dot.shape[1]:
            logits += user.dot @ item.dot.T
        if self.out_w is not None:
            first = self._buffer("first", (len(user), len(item), user.hidden.shape[1]))
            np.add(user.hidden[:, None, :], item.hidden[None, :, :], out=first)
            logits += self._deep(first.reshape(-1, first.shape[-1])).reshape(logits.shape)
        return logits.astype(np.float32, copy=False)

    def aligned(self, user: Parts, item: Parts) -> np.ndarray:
        logits = user.bias + item.bias + np.float32(self.out_b)
        if user.dot.shape[1]:
            logits += np.einsum("rf,rf->r", user.dot, item.dot)
        if self.out_w is not None:
            logits += self._deep(user.hidden + item.hidden)
        return logits.astype(np.float32, copy=False)

    def flops_per_pair(self, dot_width: int) -> int:
        """Floating-point operations per (user, item) pair of ``cross`` (multiply-add = 2)."""
        flops = 2 * dot_width + 3  # FM dot; bias_u + bias_i + out_b
        if self.out_w is not None:
            width = len(self.out_w) if not self.layers else self.layers[0][0].shape[0]
            flops += 2 * width  # add the two halves, ReLU
            for weights, _ in self.layers:
                a, b = weights.shape
                flops += 2 * a * b + 2 * b  # matmul, bias, ReLU
            flops += 2 * len(self.out_w) + 1  # output layer, add to the logit
        return flops


def exhaustive_top_k(
    user: Parts,
    item: Parts,
    model: PairModel,
    k: int,
    seen_offsets: np.ndarray,
    seen_pos: np.ndarray,
    *,
    user_block: int = 8,
    item_block: int = 512,
    group_width: int = topk.DEFAULT_GROUP_WIDTH,
    col_offset: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k unseen items of every user under a decomposed model, in one process.

    Memory: one [user_block, item_block] logit block and the model's
    intermediate [user_block * item_block, H] activations at a time.

    Args:
        user: parts of n users; item: parts of m items (catalogue positions
            ``col_offset .. col_offset + m``, in item-id order).
        model: the pair part (``PairHead`` or any ``PairModel``).
        k: results per user.
        seen_offsets: [n + 1] offsets of each user's seen positions in ``seen_pos``.
        seen_pos: global catalogue positions to exclude.

    Returns:
        (rows [r], positions [r], scores [r]) ordered by row, then score
        descending, then position; min(k, unseen items) per user; scores are logits.
    """
    n, m = len(user), len(item)
    width = topk.padded_width(min(item_block, max(m, 1)), group_width)
    buffer = np.full((user_block, width), topk.NEG_INF, np.float32)
    found_rows, found_pos, found_vals = [], [], []
    for u0 in range(0, n, user_block):
        u1 = min(n, u0 + user_block)
        offsets = seen_offsets[u0 : u1 + 1] - seen_offsets[u0]
        seen = seen_pos[seen_offsets[u0] : seen_offsets[u1]]
        block_user = user.take(slice(u0, u1))
        pieces = []
        for i0 in range(0, m, item_block):
            i1 = min(m, i0 + item_block)
            logits = model.cross(block_user, item.take(slice(i0, i1)))
            if np.isnan(logits).any():
                raise ValueError(f"the pair model gave NaN logits for users {u0}..{u1 - 1}, items {i0}..{i1 - 1}")
            scores = buffer[: u1 - u0]
            scores[:, : i1 - i0] = logits
            scores[:, i1 - i0 :] = topk.NEG_INF
            topk.mask_positions(scores, offsets, seen, col_offset=col_offset + i0)
            pieces.append(topk.select_top_k(scores, k, group_width=group_width, col_offset=col_offset + i0))
        if pieces:
            rows, pos, vals = topk.keep_top_k(*(np.concatenate(p) for p in zip(*pieces)), k, u1 - u0)
            found_rows.append(rows + u0)
            found_pos.append(pos)
            found_vals.append(vals)
    if not found_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(found_rows), np.concatenate(found_pos), np.concatenate(found_vals)


def two_stage_top_k(
    user_emb: np.ndarray,
    item_matrix: np.ndarray,
    user: Parts,
    item: Parts,
    model: PairModel,
    k: int,
    n_retrieve: int,
    seen_offsets: np.ndarray,
    seen_pos: np.ndarray,
    *,
    block_rows: int = scoring.DEFAULT_BLOCK_ROWS,
    group_width: int = topk.DEFAULT_GROUP_WIDTH,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Retrieve the top ``n_retrieve`` unseen items by embedding dot product, rank them with ``model``.

    Args:
        user_emb: [n, d] two-tower user embeddings; item_matrix: [m, d] item embeddings.
        user, item: the ranking model's parts of the same users and items.
        model: the ranking model's pair part.
        k: results per user (k <= n_retrieve).
        seen_offsets, seen_pos: seen catalogue positions per user (as in ``exhaustive_top_k``).

    Returns:
        (rows, positions, scores) as ``exhaustive_top_k``, ranked by ``model``
        among each user's retrieved items.
    """
    if k > n_retrieve:
        raise ValueError(f"two-stage scoring ranks the top n_retrieve={n_retrieve} items; k={k} must not exceed it")
    n = len(user)
    retriever = scoring.BlockScorer(item_matrix, n_retrieve, block_rows=block_rows, group_width=group_width)
    found = []
    for u0 in range(0, n, block_rows):
        u1 = min(n, u0 + block_rows)
        offsets = seen_offsets[u0 : u1 + 1] - seen_offsets[u0]
        rows, pos, _ = retriever.top_k(user_emb[u0:u1], offsets, seen_pos[seen_offsets[u0] : seen_offsets[u1]])
        logits = model.aligned(user.take(rows + u0), item.take(pos))
        rows, pos, vals = topk.keep_top_k(rows, pos, logits, k, u1 - u0)
        found.append((rows + u0, pos, vals))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    rows, pos, vals = (np.concatenate(p) for p in zip(*found))
    return rows, pos, vals


# -- Spark -----------------------------------------------------------------------------------
def parts_of_batch(batch: pa.RecordBatch, dot_width: int, hidden_width: int) -> Parts:
    """An Arrow batch [user_id, bias: float, dot: array<float>, hidden: array<float>] -> Parts."""
    ids = batch.column("user_id")
    bias = batch.column("bias").fill_null(np.nan).to_numpy(zero_copy_only=False).astype(np.float32)
    if not np.isfinite(bias).all():
        raise ValueError(f"user parts: id {ids[int(np.nonzero(~np.isfinite(bias))[0][0])].as_py()!r} has a "
                         f"null, NaN or infinite bias; fix the model's per-user parts")
    return Parts(
        bias,
        scoring.float_matrix(batch.column("dot"), dot_width, ids, "user parts 'dot'"),
        scoring.float_matrix(batch.column("hidden"), hidden_width, ids, "user parts 'hidden'"),
    )


class DecomposedScorer:
    """Scores Arrow batches of users with parts against one block of item parts (``score_in_spark``)."""

    def __init__(self, item: Parts, model: PairModel, k: int, *, block_rows: int, item_block: int,
                 group_width: int, col_offset: int = 0):
        self.item, self.model, self.k = item, model, k
        self.block_rows, self.item_block, self.group_width, self.col_offset = block_rows, item_block, group_width, col_offset

    def top_k_batch(self, batch: pa.RecordBatch):
        user = parts_of_batch(batch, self.item.dot.shape[1], self.item.hidden.shape[1])
        return exhaustive_top_k(user, self.item, self.model, self.k, *scoring.list_offsets(batch.column("seen_pos")),
                                user_block=self.block_rows, item_block=self.item_block,
                                group_width=self.group_width, col_offset=self.col_offset)


def top_k_decomposed_for_users(
    users: DataFrame,
    item_ids: pa.Array,
    item: Parts,
    model: PairModel,
    *,
    k: int,
    block_rows: int = 8,
    item_block: int = 512,
    item_block_bytes: int = scoring.DEFAULT_ITEM_BLOCK_BYTES,
    group_width: int = topk.DEFAULT_GROUP_WIDTH,
    partitions: int | None = None,
) -> DataFrame:
    """Exhaustive top-K of a decomposed model for every user row, in Spark.

    Args:
        users: DataFrame[user_id, bias: float, dot: array<float>, hidden: array<float>,
            seen_pos: array<int> (nullable), source: string].
        item_ids: [m] catalogue ids, unique and ascending; ``item``: their parts in that order.
        model: the pair part (picklable: it is broadcast with the item parts).
        block_rows, item_block: users and items per ``model.cross`` call.
        item_block_bytes: largest slice of item parts broadcast as one block.

    Returns:
        DataFrame[user_id, rank, item_id, score, source] (as ``scoring.top_k_for_users``).
    """
    scoring.check_catalogue(item_ids, np.zeros((len(item), 0), np.float32))
    per_item = 1 + item.dot.shape[1] + item.hidden.shape[1]
    spans = scoring.item_blocks(len(item), per_item, item_block_bytes, group_width)
    blocks = [(lo, (item.take(slice(lo, hi)), model)) for lo, hi in spans]

    def build_scorer(payload, lo: int) -> DecomposedScorer:
        block_items, block_model = payload
        return DecomposedScorer(block_items, block_model, k, block_rows=block_rows, item_block=item_block,
                                group_width=group_width, col_offset=lo)

    rows = users.select("user_id", *PART_COLUMNS, "seen_pos", "source")
    return scoring.score_in_spark(rows, item_ids, blocks, build_scorer, k=k, partitions=partitions)


class TwoStageScorer:
    """Retrieves by embedding and ranks by a pair model, for Arrow batches of users (``score_in_spark``)."""

    def __init__(self, item_matrix: np.ndarray, item: Parts, model: PairModel, k: int, n_retrieve: int, *,
                 block_rows: int, group_width: int):
        self.item_matrix, self.item, self.model, self.k, self.n_retrieve = item_matrix, item, model, k, n_retrieve
        self.block_rows, self.group_width = block_rows, group_width

    def top_k_batch(self, batch: pa.RecordBatch):
        ids = batch.column("user_id")
        emb = scoring.float_matrix(batch.column("embedding"), self.item_matrix.shape[1], ids, "user embeddings")
        user = parts_of_batch(batch, self.item.dot.shape[1], self.item.hidden.shape[1])
        return two_stage_top_k(emb, self.item_matrix, user, self.item, self.model, self.k, self.n_retrieve,
                               *scoring.list_offsets(batch.column("seen_pos")), block_rows=self.block_rows,
                               group_width=self.group_width)


def top_k_two_stage_for_users(
    users: DataFrame,
    item_ids: pa.Array,
    item_matrix: np.ndarray,
    item: Parts,
    model: PairModel,
    *,
    k: int,
    n_retrieve: int = 200,
    block_rows: int = scoring.DEFAULT_BLOCK_ROWS,
    item_block_bytes: int = scoring.DEFAULT_ITEM_BLOCK_BYTES,
    group_width: int = topk.DEFAULT_GROUP_WIDTH,
    partitions: int | None = None,
) -> DataFrame:
    """Two-stage top-K in Spark: exhaustive two-tower retrieval of ``n_retrieve`` items, ranked by ``model``.

    Args:
        users: DataFrame[user_id, embedding: array<float>, bias: float, dot: array<float>,
            hidden: array<float>, seen_pos: array<int> (nullable), source: string].
        item_ids: [m] catalogue ids, unique and ascending; ``item_matrix`` [m, d]
            their two-tower embeddings and ``item`` their ranking-model parts, same order.
        n_retrieve: candidates per user from the retrieval stage.
        item_block_bytes: the item embeddings and parts are broadcast whole;
            larger catalogues are refused (use ``top_k_decomposed_for_users``).

    Returns:
        DataFrame[user_id, rank, item_id, score (the ranking model's logit), source].
    """
    matrix = scoring.check_catalogue(item_ids, item_matrix)
    if matrix.nbytes + item.nbytes > item_block_bytes:
        raise ValueError(
            f"two-stage scoring broadcasts the whole catalogue ({(matrix.nbytes + item.nbytes) / 2**20:.0f} MiB), "
            f"more than the item block budget ({item_block_bytes / 2**20:.0f} MiB); raise scoring.item_block_mb "
            f"or score exhaustively"
        )

    def build_scorer(payload, lo: int) -> TwoStageScorer:
        items, parts, pair_model = payload
        return TwoStageScorer(items, parts, pair_model, k, n_retrieve, block_rows=block_rows, group_width=group_width)

    rows = users.select("user_id", "embedding", *PART_COLUMNS, "seen_pos", "source")
    return scoring.score_in_spark(rows, item_ids, [(0, (matrix, item, model))], build_scorer, k=k, partitions=partitions)
