"""Reusable Keras layers: feature embedding of one side (user or item), pooling, MLPs.

A *side spec* is the plain dict the feature stage writes (see
``jobs.features.FeatureState.model_spec``)::

    {"id": {"name": "user_idx", "vocab_size": N},
     "categorical": [{"name": ..., "vocab_size": ...}],
     "multi_categorical": [{"name": ..., "vocab_size": ..., "max_len": ...}],
     "continuous": [name, ...]}

Inputs arrive as a dict of tensors keyed by column name: ids and categoricals
``[batch]`` int, multi-valued ``[batch, max_len]`` int padded with -1,
continuous ``[batch]`` float. Index 0 means null and 1 unseen (an id or
category the model never trained on); both start as zero vectors, so an
unknown id adds nothing and the score comes from the side features alone.
"""

from __future__ import annotations

from models.tf_runtime import keras, ops

PAD = -1
RESERVED_ROWS = 2  # index 0 = null, 1 = unseen (jobs.features)
UNSEEN = 1


@keras.saving.register_keras_serializable(package="nightrec")
class ReservedZerosNormal(keras.initializers.RandomNormal):
    """Normal(0, stddev) embedding rows, except the reserved rows (null, unseen) start at zero."""

    def __init__(self, stddev=0.05, reserved=RESERVED_ROWS, seed=None, **kwargs):
        super().__init__(mean=0.0, stddev=stddev, seed=seed)
        self.reserved = int(reserved)

    def __call__(self, shape, dtype=None):
        values = super().__call__(shape, dtype=dtype)
        rows = ops.arange(shape[0])[:, None]
        return ops.where(rows < self.reserved, ops.zeros_like(values), values)

    def get_config(self):
        return {**super().get_config(), "reserved": self.reserved}


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
        total = ops.sum(embeddings * mask, axis=-2)
        count = ops.maximum(ops.sum(mask, axis=-2), 1.0)
        return total / count


def side_field_names(side_spec, use_id=True, use_features=True) -> list[str]:
    """Input columns a side embeds as fields: the id, categoricals, multi-valued categoricals."""
    names = [side_spec["id"]["name"]] if use_id else []
    if use_features:
        names += [s["name"] for s in side_spec.get("categorical", [])]
        names += [s["name"] for s in side_spec.get("multi_categorical", [])]
    return names


class _SideLayer(keras.layers.Layer):
    """What every layer over one side's features is configured with (see ``SideEmbedding``)."""

    width_name = "embedding_dim"

    def __init__(self, side_spec, width, use_id=True, use_features=True, l2=0.0, id_dropout=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.side_spec = side_spec
        self.width = int(width)
        self.use_id = bool(use_id)
        self.use_features = bool(use_features)
        self.l2 = float(l2)
        self.id_dropout = float(id_dropout)
        self.seed = seed

    def _field_embedding(self, width):
        """A ``SideEmbedding`` of this side with the same settings."""
        return SideEmbedding(self.side_spec, width, use_id=self.use_id, use_features=self.use_features, l2=self.l2,
                             id_dropout=self.id_dropout, seed=self.seed, name="fields")

    def get_config(self):
        return {
            **super().get_config(),
            "side_spec": self.side_spec,
            self.width_name: self.width,
            "use_id": self.use_id,
            "use_features": self.use_features,
            "l2": self.l2,
            "id_dropout": self.id_dropout,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="nightrec")
class SideEmbedding(_SideLayer):
    """Embeds every feature of one side: one vector per categorical field, plus the continuous values.

    Args:
        side_spec: the side's feature spec (see module docstring).
        embedding_dim: width of every embedding table.
        use_id: include the id embedding (False gives a features-only tower).
        use_features: include the side-information features.
        l2: L2 penalty on the embedding tables.
        id_dropout: during training, replace the id by the unseen index with
            this probability, so the unseen row learns the "average" entity
            and the features learn to carry the score on their own (cold start).
        seed: seed of the id dropout.

    Call returns:
        [batch, n_fields * embedding_dim + n_continuous] float32 (fields in
        ``field_names`` order, then the continuous columns).
    """

    def __init__(
        self, side_spec, embedding_dim, use_id=True, use_features=True, l2=0.0, id_dropout=0.0, seed=None, **kwargs
    ):
        super().__init__(side_spec, embedding_dim, use_id, use_features, l2, id_dropout, seed, **kwargs)
        self.embedding_dim = self.width
        reg = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        vocab = {s["name"]: int(s["vocab_size"]) for s in
                 [side_spec["id"]] + side_spec.get("categorical", []) + side_spec.get("multi_categorical", [])}
        self.field_names = side_field_names(side_spec, self.use_id, self.use_features)
        self.tables = {}
        for name in self.field_names:
            self.tables[name] = keras.layers.Embedding(
                vocab[name],
                self.embedding_dim,
                embeddings_initializer=ReservedZerosNormal(0.05),
                embeddings_regularizer=reg,
                name=f"emb_{name}",
            )
        self.pool = MaskedMeanPooling()
        self.continuous = list(side_spec.get("continuous", [])) if self.use_features else []
        self.multi = {s["name"] for s in side_spec.get("multi_categorical", [])}
        self.id_name = side_spec["id"]["name"]
        self.seed_generator = keras.random.SeedGenerator(seed) if self.id_dropout > 0 else None

    def build(self, input_shape=None):
        for table in self.tables.values():
            table.build((None,))
        self.built = True

    @property
    def n_fields(self) -> int:
        return len(self.field_names)

    @property
    def output_width(self) -> int:
        return self.n_fields * self.embedding_dim + len(self.continuous)

    def fields(self, inputs, training=False) -> list:
        """One [batch, embedding_dim] vector per field (multi-valued fields mean-pooled)."""
        parts = []
        for name in self.field_names:
            idx = ops.cast(inputs[name], "int32")
            if name == self.id_name and training and self.id_dropout > 0:
                drop = keras.random.uniform(ops.shape(idx), seed=self.seed_generator) < self.id_dropout
                idx = ops.where(drop, ops.full_like(idx, UNSEEN), idx)
            table = self.tables[name]
            parts.append(self.pool(idx, table(ops.maximum(idx, 0))) if name in self.multi else table(idx))
        return parts

    def continuous_values(self, inputs):
        """[batch, n_continuous] float32 (or None when the side has none)."""
        if not self.continuous:
            return None
        return ops.stack([ops.cast(inputs[c], "float32") for c in self.continuous], axis=-1)

    def call(self, inputs, training=False):
        parts = self.fields(inputs, training=training)
        cont = self.continuous_values(inputs)
        if cont is not None:
            parts.append(cont)
        return ops.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]


@keras.saving.register_keras_serializable(package="nightrec")
class LinearSide(_SideLayer):
    """A linear map of one side's features: sum of field embeddings plus A x (LinearRS; FM first order).

    ``out = sum_f E_f[x_f] + A x_cont`` where f runs over the categorical
    fields (the id among them when ``use_id``) and ``x_cont`` are the
    continuous features. With ``output_dim=1`` it is the first-order term of
    a factorisation machine (one weight per category, one per continuous column).

    Call returns:
        [batch, output_dim].
    """

    width_name = "output_dim"

    def __init__(self, side_spec, output_dim, use_id=True, use_features=True, l2=0.0, id_dropout=0.0, seed=None,
                 **kwargs):
        super().__init__(side_spec, output_dim, use_id, use_features, l2, id_dropout, seed, **kwargs)
        self.output_dim = self.width
        self.embed = self._field_embedding(self.output_dim)
        self.dense = (
            keras.layers.Dense(self.output_dim, use_bias=False, name="continuous")
            if self.embed.continuous else None
        )

    def build(self, input_shape=None):
        self.embed.build()
        if self.dense is not None:
            self.dense.build((None, len(self.embed.continuous)))
        self.built = True

    def call(self, inputs, training=False):
        parts = self.embed.fields(inputs, training=training)
        cont = self.embed.continuous_values(inputs)
        if cont is not None:
            parts.append(self.dense(cont))
        if not parts:
            raise ValueError(f"LinearSide {self.name}: the side has no fields to use (use_id=False, no features)")
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total


@keras.saving.register_keras_serializable(package="nightrec")
class FieldVectors(_SideLayer):
    """The factorisation-machine field vectors of one side: [batch, n_fields, dim].

    Every categorical field f gives its embedding v_f[x_f] (multi-valued
    fields mean-pooled); every continuous column c gives v_c * x_c (one
    learned vector per column, scaled by the value), as in DeepFM (Guo et al. 2017).
    """

    def __init__(self, side_spec, embedding_dim, use_id=True, use_features=True, l2=0.0, id_dropout=0.0, seed=None,
                 **kwargs):
        super().__init__(side_spec, embedding_dim, use_id, use_features, l2, id_dropout, seed, **kwargs)
        self.embedding_dim = self.width
        self.embed = self._field_embedding(self.embedding_dim)
        self.n_fields = self.embed.n_fields + len(self.embed.continuous)

    def build(self, input_shape=None):
        self.embed.build()
        n_cont = len(self.embed.continuous)
        self.continuous_vectors = (
            self.add_weight(
                shape=(n_cont, self.embedding_dim),
                initializer=keras.initializers.RandomNormal(stddev=0.05),
                regularizer=keras.regularizers.L2(self.l2) if self.l2 > 0 else None,
                name="continuous_vectors",
            )
            if n_cont else None
        )
        self.built = True

    def call(self, inputs, training=False):
        parts = [v[:, None, :] for v in self.embed.fields(inputs, training=training)]
        cont = self.embed.continuous_values(inputs)
        if cont is not None:
            parts.append(cont[:, :, None] * self.continuous_vectors[None, :, :])
        return ops.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


@keras.saving.register_keras_serializable(package="nightrec")
class SplitDense(keras.layers.Layer):
    """The first dense layer over a concatenation [p, q], split into its user and item halves.

    ``act(W [p, q] + b) = act(W_p p + W_q q + b)``: ``user_half(p)`` and
    ``item_half(q)`` are computed once per user and once per item, and
    ``combine`` adds them for any pairing (aligned rows, or every user with
    every item), which is how a non-factorised model is scored exhaustively.

    Args:
        units: output width.
        user_dim, item_dim: widths of p and q.
        activation: applied by ``combine``.
    """

    def __init__(self, units, user_dim, item_dim, activation="relu", l2=0.0, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.user_dim = int(user_dim)
        self.item_dim = int(item_dim)
        self.activation = keras.activations.get(activation)
        self.l2 = float(l2)

    def build(self, input_shape=None):
        reg = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        self.user_kernel = self.add_weight(shape=(self.user_dim, self.units), initializer="glorot_uniform",
                                           regularizer=reg, name="user_kernel")
        self.item_kernel = self.add_weight(shape=(self.item_dim, self.units), initializer="glorot_uniform",
                                           regularizer=reg, name="item_kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")
        self.built = True

    def user_half(self, p):
        """W_p p: [..., user_dim] -> [..., units]."""
        if not self.built:
            self.build()
        return ops.matmul(p, self.user_kernel)

    def item_half(self, q):
        """W_q q + b: [..., item_dim] -> [..., units] (the bias rides with the item half)."""
        if not self.built:
            self.build()
        return ops.matmul(q, self.item_kernel) + self.bias

    def combine(self, user_half, item_half, cross=False):
        """act(user_half + item_half): [..., units], or [n_users, n_items, units] with ``cross``."""
        if cross:
            return self.activation(user_half[:, None, :] + item_half[None, :, :])
        return self.activation(user_half + item_half)

    def call(self, p, q):
        return self.combine(self.user_half(p), self.item_half(q))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "user_dim": self.user_dim, "item_dim": self.item_dim,
                "activation": keras.activations.serialize(self.activation), "l2": self.l2}


def split_mlp_flops(first: SplitDense, rest: "MLP") -> int:
    """Per-pair FLOPs of ``rest(first.combine(user_half, item_half))`` with the halves given.

    Adding the halves and the activation: 2 per unit of ``first``; each later
    dense layer a -> b: 2ab (multiply-adds) + b (bias) + b (ReLU); a linear
    output a -> o: 2ao + o.
    """
    flops, width = 2 * first.units, first.units
    for units in rest.hidden:
        flops += 2 * width * units + 2 * units
        width = units
    if rest.output_dim is not None:
        flops += 2 * width * rest.output_dim + rest.output_dim
    return flops


@keras.saving.register_keras_serializable(package="nightrec")
class MLP(keras.layers.Layer):
    """Dense ReLU layers, optionally with dropout, then an optional linear output.

    Args:
        hidden: widths of the ReLU layers.
        output_dim: width of a final linear layer (None: no output layer).
        dropout: dropout rate after each hidden layer (training only).
        output_bias: initial value of the output layer's bias.

    Call: [..., d_in] -> [..., output_dim or hidden[-1]].
    """

    def __init__(self, hidden=(), output_dim=None, dropout=0.0, l2=0.0, output_bias=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden = [int(h) for h in hidden]
        self.output_dim = None if output_dim is None else int(output_dim)
        self.dropout = float(dropout)
        self.l2 = float(l2)
        self.output_bias = float(output_bias)
        self.seed = seed
        reg = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        self.layers_ = [keras.layers.Dense(h, activation="relu", kernel_regularizer=reg, name=f"hidden_{n}")
                        for n, h in enumerate(self.hidden)]
        self.drops = [keras.layers.Dropout(self.dropout, seed=seed) for _ in self.hidden] if self.dropout > 0 else []
        self.out = (
            keras.layers.Dense(self.output_dim, kernel_regularizer=reg,
                               bias_initializer=keras.initializers.Constant(self.output_bias), name="output")
            if self.output_dim is not None else None
        )

    def call(self, x, training=False):
        for n, layer in enumerate(self.layers_):
            x = layer(x)
            if self.drops:
                x = self.drops[n](x, training=training)
        return self.out(x) if self.out is not None else x

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "output_dim": self.output_dim,
                "dropout": self.dropout, "l2": self.l2, "output_bias": self.output_bias, "seed": self.seed}


@keras.saving.register_keras_serializable(package="nightrec")
class CrossedWeights(keras.layers.Layer):
    """Weights of crossed categorical features (the wide part of Wide & Deep).

    A cross of a user field (vocabulary ``V_a``) and an item field
    (``V_b``) maps the pair of indices (a, b) to a bucket
    ``((cross_id * V_a + a) * V_b + b) mod buckets`` and looks up one weight
    there. Multi-valued fields cross every element and average the weights
    over the valid (non-padding) combinations.

    Call args:
        a: [..., La] user-side indices, -1 padding; b: [..., Lb] item-side.
        cross_id: which cross (an int, it salts the bucket).
        user_vocab, item_vocab: V_a, V_b.
    Returns:
        [...]: the mean weight of the cross.
    """

    def __init__(self, buckets, l2=0.0, **kwargs):
        super().__init__(**kwargs)
        self.buckets = int(buckets)
        self.l2 = float(l2)
        self.table = keras.layers.Embedding(
            self.buckets, 1, embeddings_initializer="zeros",
            embeddings_regularizer=keras.regularizers.L2(self.l2) if self.l2 > 0 else None, name="cross_weights")

    def build(self, input_shape=None):
        self.table.build((None,))
        self.built = True

    def call(self, a, b, cross_id=0, user_vocab=1, item_vocab=1):
        a = ops.cast(a, "int64")[..., :, None]
        b = ops.cast(b, "int64")[..., None, :]
        valid = ops.logical_and(ops.greater_equal(a, 0), ops.greater_equal(b, 0))
        key = ((cross_id * user_vocab + ops.maximum(a, 0)) * item_vocab + ops.maximum(b, 0)) % self.buckets
        weights = self.table(ops.cast(key, "int32"))[..., 0]
        mask = ops.cast(valid, weights.dtype)
        return ops.sum(weights * mask, axis=(-2, -1)) / ops.maximum(ops.sum(mask, axis=(-2, -1)), 1.0)

    def get_config(self):
        return {**super().get_config(), "buckets": self.buckets, "l2": self.l2}
