"""The users' history lists a model holds: h(u), the items of user u's training window.

The lists come from ``jobs.history.user_history`` (read by
``models.catalogue.read_user_history``); a model keeps them as a
non-trainable int weight, one row per user index, so they are saved with it
and its user side still takes only the user's columns.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from models.layers import PAD


class UserHistoryLists:
    """Mixin: the users' history lists as a non-trainable [user vocab, history_max_len] int weight.

    Row u holds the item indices of user index u's history (``jobs.history.user_history``), PAD (-1)
    after its end; filled by ``set_history`` before training and saved with the model. The class
    using it sets ``spec``, ``kind`` and ``history_max_len`` and calls ``_add_history_lists`` when
    it is built.
    """

    def _add_history_lists(self, spec):
        self.user_history = self.add_weight(
            shape=(int(spec["user"]["id"]["vocab_size"]), self.history_max_len), dtype="int32",
            initializer=keras.initializers.Constant(PAD), trainable=False, name="user_history")

    def history_lists(self, inputs):
        """The rows' users' history lists: [n, history_max_len] int, PAD after each list's end."""
        return ops.take(self.user_history, ops.cast(inputs[self.spec["user"]["id"]["name"]], "int32"), axis=0)

    def set_history(self, lists):
        """Fill the users' history lists: ``lists`` [user vocab, history_max_len] int item indices, -1 padded."""
        if not self.history_max_len:
            raise ValueError(f"{self.kind}: this model has no history input (history_max_len 0)")
        shape = tuple(self.user_history.shape)
        if tuple(lists.shape) != shape:
            raise ValueError(f"history lists have shape {tuple(lists.shape)}, expected {shape} "
                             "(user vocabulary size, history_max_len)")
        self.user_history.assign(ops.cast(lists, "int32"))

    def history_contains(self, inputs, item_ids):
        """Whether each item is in each user's (whole) history: [n users, m items] bool.

        Args:
            inputs: the users' columns (the user id among them), [n] rows.
            item_ids: [m] item indices.
        """
        lists = tf.sort(self.history_lists(inputs), axis=1)
        queries = tf.broadcast_to(tf.cast(item_ids, tf.int32)[None, :], [tf.shape(lists)[0], tf.shape(item_ids)[0]])
        pos = tf.minimum(tf.searchsorted(lists, queries, side="left"), self.history_max_len - 1)
        return tf.equal(tf.gather(lists, pos, batch_dims=1), queries)
