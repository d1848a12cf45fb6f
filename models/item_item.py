"""The factorised item-item model: s(u, i) = sum_{j in h(u)} e_j . q_i (EASE with B = E Q^T).

The user is the sum of their history items' embeddings (``UserHistoryLists``);
it trains with the reconstruction loss (``models.tasks.reconstruction_loss``).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from models.base import RecommenderModel, dot
from models.layers import RESERVED_ROWS, ReservedZerosNormal
from models.user_history import UserHistoryLists


@keras.saving.register_keras_serializable(package="nightrec")
class ItemItemModel(UserHistoryLists, RecommenderModel):
    """The factorised item-item model: the user is the sum of their history items' embeddings.

        s(u, i) = sum_{j in h(u)} e_j . q_i = x_u E Q^T = x_u B,   B = E Q^T  (rank embedding_dim)

    x_u is u's 0/1 history row over the item vocabulary, E and Q two item
    tables (the history side and the scored side). It is EASE (Steck 2019,
    "Embarrassingly Shallow Autoencoders") with its item-item matrix B
    factorised, a linear autoencoder of the history; FISM (Kabbur et al.
    2013) with sum pooling. The score is a dot product of the user tower
    psi(u) = x_u E and the item tower phi(i) = q_i, so the model is
    factorised (embedding tables exported, scored exhaustively).

    It trains with ``models.tasks.reconstruction_loss`` (loss
    ``reconstruction``): every item of the vocabulary is a target, 1 for the
    items of the history, scored without their own term e_k . q_k (EASE's
    zero diagonal: an item never predicts itself), 0 for the rest; ``l2``
    weighs EASE's penalty ||E Q^T||_F^2 (``penalty``).

    Args:
        spec: the model input spec (only the user and item ids are read).
        embedding_dim: rank of B.
        history_max_len: length of each user's history list (>= 1).
        l2: weight of ||E Q^T||_F^2 added to each step's loss.
    """

    family = "two_tower"

    def __init__(self, spec, embedding_dim=64, history_max_len=200, l2=0.0, kind="item_item", **kwargs):
        for fixed in ("use_id", "use_features", "hidden", "tower", "head", "biases"):
            kwargs.pop(fixed, None)
        super().__init__(spec, kind=kind, embedding_dim=embedding_dim, use_id=True, use_features=False, l2=l2,
                         **kwargs)
        self.history_max_len = int(history_max_len)
        if self.history_max_len < 1:
            raise ValueError(f"{kind}: the user is their history; history_max_len must be >= 1, "
                             f"got {history_max_len!r}")
        self._add_history_lists(spec)
        vocab = int(spec["item"]["id"]["vocab_size"])
        self.history_items = keras.layers.Embedding(vocab, self.embedding_dim, name="history_items",
                                                    embeddings_initializer=ReservedZerosNormal(0.01))
        self.items = keras.layers.Embedding(vocab, self.embedding_dim, name="items",
                                            embeddings_initializer=ReservedZerosNormal(0.01))
        # Built now: the towers read the tables themselves (a sparse product, the Gram matrices), not only
        # through the layers' calls.
        self.history_items.build()
        self.items.build()

    @property
    def factorised(self) -> bool:
        return True

    def _history_rows(self, inputs):
        """The rows' 0/1 history rows as a sparse [n, item vocab] tensor."""
        lists = tf.cast(self.history_lists(inputs), tf.int64)
        where = tf.where(lists >= 0)
        return tf.sparse.reorder(tf.SparseTensor(
            tf.stack([where[:, 0], tf.gather_nd(lists, where)], axis=1), tf.ones(tf.shape(where)[:1], tf.float32),
            tf.stack([tf.shape(lists, out_type=tf.int64)[0], tf.constant(self.items.input_dim, tf.int64)])))

    def user_parts(self, inputs, training=False):
        """{"vec": psi(u) = sum_{j in h(u)} e_j [n, d]} (zeros for a user without history)."""
        return {"vec": tf.sparse.sparse_dense_matmul(self._history_rows(inputs), self.history_items.embeddings)}

    def item_parts(self, inputs, training=False):
        """{"vec": q_i [n, d]}."""
        return {"vec": self.items(ops.cast(inputs[self.spec["item"]["id"]["name"]], "int32"))}

    def pair_scores(self, user, item, cross=False, training=False):
        return dot(user["vec"], item["vec"], cross=cross)

    def pair_flops(self) -> int:
        return 2 * self.embedding_dim

    def user_embedding(self, inputs):
        return self.user_parts(inputs)["vec"]

    def item_embedding(self, inputs):
        return self.item_parts(inputs)["vec"]

    def history_reconstruction(self, inputs):
        """The rows' users' history rows and their reconstruction, over the item vocabulary.

        Returns:
            (x [n, vocab] 0/1 history rows, s [n, vocab] scores x_u E Q^T with the history items'
            own terms e_k . q_k removed), the reserved indices (null, unseen) left out of both.
        """
        x = tf.sparse.to_dense(self._history_rows(inputs))
        e, q = self.history_items.embeddings, self.items.embeddings
        scores = tf.matmul(tf.matmul(x, e), q, transpose_b=True) - x * tf.reduce_sum(e * q, axis=1)[None, :]
        return x[:, RESERVED_ROWS:], scores[:, RESERVED_ROWS:]

    def penalty(self):
        """``l2`` * ||E Q^T||_F^2, computed as sum((E^T E) * (Q^T Q)) (no vocab x vocab matrix)."""
        if not self.l2:
            return tf.constant(0.0)
        e, q = self.history_items.embeddings, self.items.embeddings
        return self.l2 * tf.reduce_sum(tf.matmul(e, e, transpose_a=True) * tf.matmul(q, q, transpose_a=True))

    def input_names(self, side: str) -> list[str]:
        return [self.spec[side]["id"]["name"]]

    def get_config(self):
        return {**self.base_config(), "history_max_len": self.history_max_len}
