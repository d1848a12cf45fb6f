"""Losses of the retrieval task (how a model turns scores into a loss)."""

from __future__ import annotations

from keras import ops

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
    logits = ops.matmul(user_emb, ops.transpose(item_emb)) / temperature
    logits = corrected_logits(logits, item_ids, item_log_q)
    labels = ops.eye(ops.shape(logits)[0], dtype=logits.dtype)
    log_probs = logits - ops.logsumexp(logits, axis=1, keepdims=True)
    per_row = -ops.sum(labels * log_probs, axis=1)
    if weights is not None:
        weights = ops.cast(weights, per_row.dtype)
        return ops.sum(per_row * weights) / ops.maximum(ops.sum(weights), 1e-9)
    return ops.mean(per_row)


def corrected_logits(logits, item_ids, item_log_q=None):
    """Apply the log-Q correction and mask accidental hits.

    Args:
        logits: [batch, batch], row b = user b, column j = item of row j.
        item_ids: [batch] item ids.
        item_log_q: [batch] log sampling probability of item j, or None.

    Returns:
        [batch, batch]: ``logits[b, j] - log q_j``, and a very negative value
        where j != b but item j is the same item as row b's positive.
    """
    if item_log_q is not None:
        logits = logits - ops.cast(item_log_q, logits.dtype)[None, :]
    same_item = ops.equal(item_ids[:, None], item_ids[None, :])
    diagonal = ops.cast(ops.eye(ops.shape(logits)[0]), "bool")
    accidental = ops.logical_and(same_item, ops.logical_not(diagonal))
    return ops.where(accidental, ops.full_like(logits, _MASK_LOGIT), logits)
