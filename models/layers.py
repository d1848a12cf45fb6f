"""Reusable Keras layers: feature embedding of one side (user or item) and pooling.

A *side spec* is the plain dict the feature stage writes (see
``jobs.features.FeatureState.model_spec``)::

    {"id": {"name": "user_idx", "vocab_size": N},
     "categorical": [{"name": ..., "vocab_size": ...}],
     "multi_categorical": [{"name": ..., "vocab_size": ..., "max_len": ...}],
     "continuous": [name, ...]}

Inputs arrive as a dict of tensors keyed by column name: ids and categoricals
``[batch]`` int, multi-valued ``[batch, max_len]`` int padded with -1,
continuous ``[batch]`` float.
"""

from __future__ import annotations

import keras
from keras import ops

PAD = -1


@keras.saving.register_keras_serializable(package="nightrec")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean of the embeddings of a padded index list, ignoring padding (-1).

    Call args:
        indices: [batch, max_len] int, -1 marks padding.
        embeddings: [batch, max_len, dim] the looked-up embeddings.
    Returns:
        [batch, dim]; all-padding rows give zeros.
    """

    def call(self, indices, embeddings):
        mask = ops.cast(ops.greater_equal(indices, 0), embeddings.dtype)[..., None]
        total = ops.sum(embeddings * mask, axis=1)
        count = ops.maximum(ops.sum(mask, axis=1), 1.0)
        return total / count


@keras.saving.register_keras_serializable(package="nightrec")
class SideEmbedding(keras.layers.Layer):
    """Embeds every feature of one side and concatenates them.

    Args:
        side_spec: the side's feature spec (see module docstring).
        embedding_dim: width of every embedding table.
        use_id: include the id embedding (False gives a features-only tower).
        use_features: include the side-information features.

    Call returns:
        [batch, n_embedded * embedding_dim + n_continuous] float32.
    """

    def __init__(self, side_spec, embedding_dim, use_id=True, use_features=True, l2=0.0, **kwargs):
        super().__init__(**kwargs)
        self.side_spec = side_spec
        self.embedding_dim = int(embedding_dim)
        self.use_id = bool(use_id)
        self.use_features = bool(use_features)
        self.l2 = float(l2)
        reg = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        self.tables = {}
        if self.use_id:
            spec = side_spec["id"]
            self.tables[spec["name"]] = self._table(spec, reg)
        if self.use_features:
            for spec in side_spec.get("categorical", []) + side_spec.get("multi_categorical", []):
                self.tables[spec["name"]] = self._table(spec, reg)
        self.pool = MaskedMeanPooling()
        self.continuous = list(side_spec.get("continuous", [])) if self.use_features else []
        self.multi = {s["name"] for s in side_spec.get("multi_categorical", [])}

    def _table(self, spec, reg):
        return keras.layers.Embedding(
            int(spec["vocab_size"]),
            self.embedding_dim,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.05),
            embeddings_regularizer=reg,
            name=f"emb_{spec['name']}",
        )

    def build(self, input_shape=None):
        for table in self.tables.values():
            table.build((None,))
        self.built = True

    @property
    def output_width(self) -> int:
        return len(self.tables) * self.embedding_dim + len(self.continuous)

    def call(self, inputs):
        parts = []
        for name, table in self.tables.items():
            idx = ops.cast(inputs[name], "int32")
            if name in self.multi:
                parts.append(self.pool(idx, table(ops.maximum(idx, 0))))
            else:
                parts.append(table(idx))
        if self.continuous:
            parts.append(ops.stack([ops.cast(inputs[c], "float32") for c in self.continuous], axis=-1))
        return ops.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

    def get_config(self):
        return {
            **super().get_config(),
            "side_spec": self.side_spec,
            "embedding_dim": self.embedding_dim,
            "use_id": self.use_id,
            "use_features": self.use_features,
            "l2": self.l2,
        }
