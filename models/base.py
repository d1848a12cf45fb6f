"""The contract every nightrec model follows: a score split into per-user, per-item and pair parts.

    score(u, i) = pair(user_parts(u), item_parts(i))

``user_parts`` and ``item_parts`` return dicts of tensors whose first axis
is the row (a user, an item). ``pair_scores`` combines them in one of two
layouts:

* aligned (``cross=False``): the parts' leading axes broadcast against each
  other, e.g. ``[batch]`` with ``[batch]`` (one score per training row), or
  ``[batch, 1]`` with ``[batch, n_neg]`` (a user against its sampled negatives);
* cross (``cross=True``): users ``[n_users]`` against items ``[n_items]``,
  giving ``[n_users, n_items]`` -- exhaustive scoring of a block of users
  against a block of the catalogue, and the in-batch softmax.

A model whose pair part is a dot product is *factorised*: ``user_embedding``
and ``item_embedding`` give vectors whose dot product is exactly the score,
so the catalogue is scored with one matrix product (``jobs.scoring``).
The other models are scored with ``score_matrix`` (see ``models.model_scoring``).
"""

from __future__ import annotations

import keras
from keras import ops

from models.layers import side_field_names


def dot(u, v, cross=False):
    """<u, v> over the last axis: aligned [...] or cross [n_u, n_v]."""
    if cross:
        return ops.matmul(u, ops.transpose(v))
    return ops.sum(u * v, axis=-1)


def add_sides(user_term, item_term, cross=False):
    """A per-user scalar plus a per-item scalar: aligned [...] or cross [n_u, n_i]."""
    if cross:
        return user_term[:, None] + item_term[None, :]
    return user_term + item_term


def expand_rows(parts, axis=1):
    """Insert a broadcast axis after the row axis of every part ([n, ...] -> [n, 1, ...])."""
    return {k: ops.expand_dims(v, axis) for k, v in parts.items()}


def group_rows(parts, groups):
    """Reshape every part [groups * r, ...] -> [groups, r, ...]."""
    return {k: ops.reshape(v, (groups, -1) + tuple(v.shape[1:])) for k, v in parts.items()}


class RecommenderModel(keras.Model):
    """Base class: ``call`` scores aligned (user, item) rows; subclasses define the parts.

    Args (shared by every family):
        spec: the model input spec ``{"user": side_spec, "item": side_spec}``.
        kind: the named model this instance was built as (``models.kinds``).
        embedding_dim: width of the embeddings.
        use_id, use_features: embed the ids / the side features.
        l2: L2 penalty on embeddings (and dense kernels where the family has them).
        dropout: dropout rate of the MLPs in training.
        id_dropout: probability of replacing an id by the unseen index in training.
        output_bias: initial value of the model's global bias (the mean
            training rating for the rating objective, 0 for implicit).
    """

    family = ""

    def __init__(self, spec, kind="", embedding_dim=32, use_id=True, use_features=True, l2=0.0, dropout=0.0,
                 id_dropout=0.0, output_bias=0.0, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self.kind = kind
        self.embedding_dim = int(embedding_dim)
        self.use_id = bool(use_id)
        self.use_features = bool(use_features)
        self.l2 = float(l2)
        self.dropout = float(dropout)
        self.id_dropout = float(id_dropout)
        self.output_bias = float(output_bias)

    # -- what subclasses implement ------------------------------------------------------
    @property
    def factorised(self) -> bool:
        """True when the score is exactly <user_embedding(u), item_embedding(i)>."""
        return False

    def user_parts(self, inputs, training=False) -> dict:
        """Per-user quantities: dict of [n_users, ...] tensors."""
        raise TypeError(f"{type(self).__name__} does not define user_parts")

    def item_parts(self, inputs, training=False) -> dict:
        """Per-item quantities: dict of [n_items, ...] tensors."""
        raise TypeError(f"{type(self).__name__} does not define item_parts")

    def pair_scores(self, user, item, cross=False, training=False):
        """Combine user and item parts into scores (see the module docstring for layouts)."""
        raise TypeError(f"{type(self).__name__} does not define pair_scores")

    def pair_flops(self) -> int:
        """Floating-point operations of ``pair_scores`` per (user, item) pair, the work that exhaustive
        scoring repeats for every pair (a multiply-add counts 2; an add, a bias or a ReLU 1)."""
        raise TypeError(f"{type(self).__name__} does not define pair_flops")

    # -- shared behaviour -------------------------------------------------------------------
    def build(self, input_shape=None):
        """Create every weight by scoring one all-zero row of every input column of the spec."""
        dummy = {}
        for side_spec in self.spec.values():
            for entry in [side_spec["id"]] + side_spec.get("categorical", []):
                dummy[entry["name"]] = ops.zeros((1,), "int32")
            for entry in side_spec.get("multi_categorical", []):
                dummy[entry["name"]] = ops.zeros((1, int(entry["max_len"])), "int32")
            for name in side_spec.get("continuous", []):
                dummy[name] = ops.zeros((1,), "float32")
        self.pair_scores(self.user_parts(dummy), self.item_parts(dummy))
        self.built = True

    def call(self, inputs, training=False):
        """Scores of aligned (user, item) rows: [batch]."""
        return self.pair_scores(self.user_parts(inputs, training), self.item_parts(inputs, training), training=training)

    def score_matrix(self, user_inputs, item_inputs):
        """Every user against every item: [n_users, n_items]."""
        return self.pair_scores(self.user_parts(user_inputs), self.item_parts(item_inputs), cross=True)

    def scores_against(self, user_inputs, item_inputs, groups, training=False):
        """Each user against its own group of items.

        Args:
            user_inputs: [n] rows; item_inputs: [n * r] rows, user b's items at b*r..b*r+r-1.

        Returns:
            [n, r] scores.
        """
        user = expand_rows(self.user_parts(user_inputs, training))
        item = group_rows(self.item_parts(item_inputs, training), groups)
        return self.pair_scores(user, item, training=training)

    def input_names(self, side: str) -> list[str]:
        """Input columns the model reads for ``side`` ("user" or "item")."""
        side_spec = self.spec[side]
        return side_field_names(side_spec) + list(side_spec.get("continuous", []))

    def user_embedding(self, inputs):
        """[n, d] user vectors; <user_embedding(u), item_embedding(i)> == score(u, i) (factorised models)."""
        raise TypeError(f"{self.kind}: the score is not a dot product; use score_matrix (models.model_scoring)")

    def item_embedding(self, inputs):
        """[n, d] item vectors (factorised models)."""
        raise TypeError(f"{self.kind}: the score is not a dot product; use score_matrix (models.model_scoring)")

    def base_config(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "embedding_dim": self.embedding_dim, "use_id": self.use_id,
                "use_features": self.use_features, "l2": self.l2, "dropout": self.dropout,
                "id_dropout": self.id_dropout, "output_bias": self.output_bias, "name": self.name}
