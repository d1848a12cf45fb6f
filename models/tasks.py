"""Losses: how a model's scores become a training loss.

* implicit feedback, two-tower family: in-batch sampled softmax with the
  log-Q popularity correction and accidental hits masked, or a full softmax
  over every catalogue item (no sampling, so no correction);
* implicit feedback, DeepFM and NCF families: binary cross-entropy with
  sampled negatives;
* implicit feedback, ``item_item``: the squared error of reconstructing
  each user's whole history row (EASE's loss);
* explicit ratings: mean squared error.
"""

from __future__ import annotations

from models.tf_runtime import ops

_MASK_LOGIT = -1e9


def in_batch_softmax_loss(user_emb, item_emb, item_ids, item_log_q=None, temperature=1.0, weights=None):
    """Sampled softmax over the items of the batch (the other rows are negatives).

    Row ``b`` is a (user, positive item) pair; its logits are the scores of
    user ``b`` against every item of the batch, divided by ``temperature``.
    With ``item_log_q`` (log sampling probability of each batch item, i.e.
    its popularity) the logits are corrected by ``- log q_j`` (Yi et al. 2019,
    "Sampling-bias-corrected neural modeling"), so popular items are not
    over-penalised for appearing often as negatives. A negative that is the
    same item as the row's positive (an accidental hit) is masked out.

    Args:
        user_emb: [batch, dim]; item_emb: [batch, dim].
        item_ids: [batch] int ids of the positive items.
        item_log_q: [batch] float or None.
        temperature: positive scalar.
        weights: [batch] float example weights or None.

    Returns:
        Scalar mean cross-entropy.
    """
    logits = ops.matmul(user_emb, ops.transpose(item_emb))
    return in_batch_softmax_from_scores(logits, item_ids, item_log_q, temperature, weights)


def in_batch_softmax_from_scores(scores, item_ids, item_log_q=None, temperature=1.0, weights=None, known=None,
                                 positive_offset=0, weight_total=None):
    """The in-batch softmax loss from a score matrix (row b = user b, column j = item of row j).

    Any model can supply the matrix (``RecommenderModel.score_matrix`` of the
    batch's users and items); see ``in_batch_softmax_loss`` for the rest.
    ``scores`` may carry extra columns after the batch's own items: items
    sampled from the catalogue as further negatives (mixed negative
    sampling, Yang et al. 2020), with their ids and log-Q in ``item_ids`` /
    ``item_log_q``.

    In a multi-worker job the candidates are the whole global batch: every
    replica's items, gathered (``positive_offset`` is then where this
    replica's rows start among them), so the loss of a global batch does not
    depend on how many workers share it.

    Args:
        scores: [batch, n_batch_items + n_extra]: n_batch_items = batch, or the global batch's items.
        item_ids: [n_batch_items + n_extra]; item_log_q: [n_batch_items + n_extra] or None.
        known: [batch, n_batch_items + n_extra] bool or None: True where the column's item is another known
            positive of the row's user (e.g. in its history); such negatives are masked out like
            accidental hits (the row's own positive is always kept).
        positive_offset: int scalar: row b's positive is column ``positive_offset + b``.
        weight_total: see ``weighted_mean`` (multi-worker steps).

    Returns:
        Scalar mean cross-entropy of the positives.
    """
    logits = corrected_logits(scores / temperature, item_ids, item_log_q, positive_offset)
    own = _positive_columns(logits, positive_offset)
    if known is not None:
        logits = ops.where(ops.logical_and(known, ops.logical_not(own)), _MASK_LOGIT, logits)
    log_probs = logits - ops.logsumexp(logits, axis=1, keepdims=True)
    per_row = -ops.sum(ops.where(own, log_probs, ops.zeros_like(log_probs)), axis=1)
    return weighted_mean(per_row, weights, weight_total)


def full_softmax_loss(scores, labels, temperature=1.0, known=None, weights=None, weight_total=None):
    """Softmax cross-entropy over the whole catalogue (every item is a candidate; nothing is sampled).

    Row ``b`` is a (user, positive item) pair; its logits are the user's
    scores against every catalogue item divided by ``temperature``, and the
    loss is ``-log softmax(logits)[labels[b]]``. With no sampling there is no
    log-Q correction and no accidental hit (each item is one column).

    Args:
        scores: [batch, n_items] scores of each row's user against every catalogue item.
        labels: [batch] int column of each row's positive item.
        temperature: positive scalar.
        known: [batch, n_items] bool or None: True where the column's item is another known positive
            of the row's user (e.g. in its history); such columns are masked out of the softmax (the
            row's own positive is always kept).
        weights: [batch] float example weights or None.

    Returns:
        Scalar (weighted) mean cross-entropy.
    """
    logits = scores / temperature
    labels = ops.cast(labels, "int32")
    if known is not None:
        own = ops.equal(ops.arange(ops.shape(logits)[1], dtype="int32")[None, :], labels[:, None])
        logits = ops.where(ops.logical_and(known, ops.logical_not(own)), _MASK_LOGIT, logits)
    log_probs = logits - ops.logsumexp(logits, axis=1, keepdims=True)
    per_row = -ops.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
    return weighted_mean(per_row, weights, weight_total)


def reconstruction_loss(scores, history, weights=None, weight_total=None):
    """Squared error of each row's user's history row, reconstructed over the whole item vocabulary.

    EASE's loss (Steck 2019): every item is a target, 1 if it is in the user's
    history, else 0; an item of the history must be scored without its own
    term (the caller's job: ``models.item_item.ItemItemModel.history_reconstruction``),
    so no item predicts itself.

    Args:
        scores: [batch, n_items] the row's user's reconstruction of every item.
        history: [batch, n_items] 0/1, the row's user's history.
        weights: [batch] float row weights or None. Rows are (user, item)
            examples, so a user comes n_u times an epoch; weights 1/n_u make
            every user's row count once.

    Returns:
        Scalar: the (weighted) mean over rows of sum_k (history_k - scores_k)^2.
    """
    err = ops.cast(history, scores.dtype) - scores
    per_row = ops.sum(err * err, axis=1)
    return weighted_mean(per_row, weights, weight_total)


def weighted_mean(per_row, weights=None, weight_total=None):
    """The (weighted) mean of per-row losses: [batch] -> scalar.

    Args:
        per_row: [batch] losses.
        weights: [batch] row weights or None (every row alike).
        weight_total: the denominator instead of ``sum(weights)``: in a multi-worker step, the global
            batch's weight sum divided by the number of replicas, so that the replicas' losses average
            to the weighted mean over the global batch (each replica's own sum differs).
    """
    if weights is None:
        return ops.mean(per_row)
    weights = ops.cast(weights, per_row.dtype)
    total = ops.sum(weights) if weight_total is None else ops.cast(weight_total, per_row.dtype)
    return ops.sum(per_row * weights) / ops.maximum(total, 1e-9)


def sampled_bce_loss(positive_logits, negative_logits, negative_valid=None):
    """Binary cross-entropy of positives (label 1) and sampled negatives (label 0).

    Args:
        positive_logits: [batch] scores of the observed (user, item) rows.
        negative_logits: [batch, n_neg] scores of each user against its sampled items.
        negative_valid: [batch, n_neg] bool; False drops a negative (an
            accidental hit: the sampled item is the row's positive).

    Returns:
        Scalar: the mean loss over the positives and the valid negatives.
    """
    pos = ops.softplus(-positive_logits)
    neg = ops.softplus(negative_logits)
    if negative_valid is None:
        negative_valid = ops.ones_like(negative_logits, dtype="bool")
    mask = ops.cast(negative_valid, neg.dtype)
    count = ops.cast(ops.shape(pos)[0], neg.dtype) + ops.sum(mask)
    return (ops.sum(pos) + ops.sum(neg * mask)) / count


def rating_loss(predicted, rating):
    """Mean squared error: [batch], [batch] -> scalar."""
    diff = predicted - ops.cast(rating, predicted.dtype)
    return ops.mean(diff * diff)


def _positive_columns(logits, positive_offset=0):
    """[batch, n_candidates] bool: True at column ``positive_offset + b`` of row b (the row's own positive)."""
    rows = ops.arange(ops.shape(logits)[0], dtype="int32") + ops.cast(positive_offset, "int32")
    return ops.equal(rows[:, None], ops.arange(ops.shape(logits)[1], dtype="int32")[None, :])


def corrected_logits(logits, item_ids, item_log_q=None, positive_offset=0):
    """Apply the log-Q correction and mask accidental hits.

    Args:
        logits: [batch, n_candidates], row b = user b; column ``positive_offset + b``
            is row b's positive, the other columns of the batch's items are other
            rows' positives (of this replica or, gathered, of the others), the
            columns after them extra sampled items (mixed negatives), if any.
        item_ids: [n_candidates] item id of every column.
        item_log_q: [n_candidates] log of how often each column's item is
            expected among the candidates (its sampling probability), or None.
        positive_offset: int scalar, 0 unless the candidates are a gathered global batch.

    Returns:
        [batch, n_candidates]: ``logits[b, j] - log q_j``, and a very negative
        value where column j is not row b's positive but the same item.
    """
    if item_log_q is not None:
        logits = logits - ops.cast(item_log_q, logits.dtype)[None, :]
    own = _positive_columns(logits, positive_offset)
    rows = ops.arange(ops.shape(logits)[0], dtype="int32") + ops.cast(positive_offset, "int32")
    same_item = ops.equal(ops.take(item_ids, rows)[:, None], item_ids[None, :])
    accidental = ops.logical_and(same_item, ops.logical_not(own))
    return ops.where(accidental, ops.full_like(logits, _MASK_LOGIT), logits)
