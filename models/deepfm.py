"""The DeepFM family: DeepFM, FM and Wide & Deep over the fields of both sides.

Every feature of the user and the item is a field f: categorical fields
(the ids among them) with an embedding v_f and a first-order weight w_f,
continuous columns c with a vector v_c and weight w_c scaled by the value.

* ``fm`` (Rendle 2010): s = w0 + sum_f w_f x_f + sum_{f<g} <v_f, v_g> x_f x_g
* ``deepfm`` (Guo et al. 2017): the FM plus MLP([v_1, ..., v_F]) over the
  same (shared) field embeddings
* ``wide_deep`` (Cheng et al. 2016): w0 + first-order terms + crossed
  user x item categorical features (the wide part) + the MLP (the deep part)

Decomposition used for exhaustive scoring (``user_parts`` / ``item_parts``):
with S = sum of a side's field vectors and Q = sum of their squared norms,
the FM second-order term over all fields is

    0.5 (|S_u + S_i|^2 - Q_u - Q_i) = fm_self_u + fm_self_i + <S_u, S_i>,
    fm_self = 0.5 (|S|^2 - Q)   (the pairs within one side),

so the FM is a dot product plus per-side terms (``fm`` is factorised), and
the first layer of the MLP splits into a user half and an item half.
"""

from __future__ import annotations

from models.base import RecommenderModel, add_sides, dot
from models.layers import (
    MLP,
    CrossedWeights,
    FieldVectors,
    LinearSide,
    SplitDense,
    side_field_names,
    split_mlp_flops,
)
from models.tf_runtime import keras, ops


def default_crosses(spec) -> list[list[str]]:
    """Every (user field, item field) pair of categorical fields except (user id, item id)."""
    user_fields = side_field_names(spec["user"])
    item_fields = side_field_names(spec["item"])
    ids = (spec["user"]["id"]["name"], spec["item"]["id"]["name"])
    return [[a, b] for a in user_fields for b in item_fields if (a, b) != ids]


def second_order(fields):
    """FM pairwise term of one set of fields: [..., F, k] -> [...] = sum_{f<g} <v_f, v_g>."""
    total = ops.sum(fields, axis=-2)
    return 0.5 * (ops.sum(total * total, axis=-1) - ops.sum(fields * fields, axis=(-2, -1)))


@keras.saving.register_keras_serializable(package="nightrec")
class DeepFMModel(RecommenderModel):
    """First-order terms, optional FM interactions, optional deep MLP, optional wide crosses.

    Args:
        spec: the model input spec.
        embedding_dim: k, the width of every field vector.
        deep_layers: ReLU widths of the deep MLP (its output layer is linear, width 1).
        fm: include the FM second-order term.
        deep: include the deep MLP.
        wide_crosses: include crossed categorical features.
        crosses: [[user_field, item_field], ...] (None: ``default_crosses``).
        cross_buckets: size of the hashed weight table of the crosses.
        use_id, use_features: which fields exist.
        kind: the preset name ("deepfm", "fm", "wide_deep").
    """

    family = "deepfm"

    def __init__(self, spec, embedding_dim=16, deep_layers=(64, 32), fm=True, deep=True, wide_crosses=False,
                 crosses=None, cross_buckets=1 << 17, use_id=True, use_features=True, l2=0.0, dropout=0.0,
                 id_dropout=0.0, output_bias=0.0, kind="deepfm", **kwargs):
        super().__init__(spec, kind=kind, embedding_dim=embedding_dim, use_id=use_id, use_features=use_features, l2=l2,
                         dropout=dropout, id_dropout=id_dropout, output_bias=output_bias, **kwargs)
        self.deep_layers = [int(h) for h in deep_layers]
        self.fm = bool(fm)
        self.deep = bool(deep)
        self.wide_crosses = bool(wide_crosses)
        self.crosses = [list(c) for c in (crosses if crosses is not None else default_crosses(spec))] \
            if self.wide_crosses else []
        self.cross_buckets = int(cross_buckets)
        if self.deep and not self.deep_layers:
            raise ValueError(f"{kind}: the deep part needs at least one layer in deep_layers")
        common = dict(use_id=use_id, use_features=use_features, l2=l2, id_dropout=id_dropout)
        self.user_first = LinearSide(spec["user"], 1, name="user_first_order", **common)
        self.item_first = LinearSide(spec["item"], 1, name="item_first_order", **common)
        if self.fm or self.deep:
            self.user_fields = FieldVectors(spec["user"], embedding_dim, name="user_fields", **common)
            self.item_fields = FieldVectors(spec["item"], embedding_dim, name="item_fields", **common)
        if self.deep:
            self.deep_first = SplitDense(self.deep_layers[0], self.user_fields.n_fields * self.embedding_dim,
                                         self.item_fields.n_fields * self.embedding_dim, l2=l2, name="deep_first")
            self.deep_rest = MLP(self.deep_layers[1:], 1, dropout=dropout, l2=l2, name="deep_rest")
        if self.crosses:
            self._check_crosses()
            self.cross_weights = CrossedWeights(self.cross_buckets, l2=l2, name="crosses")
        self.global_bias = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.output_bias),
                                           name="global_bias")

    def _check_crosses(self):
        for side, position in (("user", 0), ("item", 1)):
            known = side_field_names(self.spec[side])
            for cross in self.crosses:
                if cross[position] not in known:
                    raise ValueError(
                        f"{self.kind}: crossed {side} field {cross[position]!r} is not a categorical {side} "
                        f"feature; expected one of {', '.join(known)}"
                    )

    def _vocab(self, side, name) -> int:
        s = self.spec[side]
        for entry in [s["id"]] + s.get("categorical", []) + s.get("multi_categorical", []):
            if entry["name"] == name:
                return int(entry["vocab_size"])
        raise KeyError(name)

    @property
    def factorised(self) -> bool:
        return not self.deep and not self.crosses

    def _side_parts(self, side, inputs, training):
        first = self.user_first if side == "user" else self.item_first
        parts = {"first": first(inputs, training=training)[:, 0]}
        if self.fm or self.deep:
            fields = (self.user_fields if side == "user" else self.item_fields)(inputs, training=training)
            if self.fm:
                parts["fm_sum"] = ops.sum(fields, axis=1)
                parts["fm_self"] = second_order(fields)
            if self.deep:
                flat = ops.reshape(fields, (-1, fields.shape[1] * fields.shape[2]))
                half = self.deep_first.user_half if side == "user" else self.deep_first.item_half
                parts["deep"] = half(flat)
        position = 0 if side == "user" else 1
        for name in sorted({c[position] for c in self.crosses}):
            idx = ops.cast(inputs[name], "int32")
            parts[f"x:{name}"] = idx if len(idx.shape) == 2 else idx[:, None]
        return parts

    def user_parts(self, inputs, training=False):
        """{"first": sum_f w_f x_f [n]; "fm_sum": S_u [n, k]; "fm_self": [n];
        "deep": user half of the first deep layer [n, h]; "x:<field>": crossed indices [n, L]}."""
        return self._side_parts("user", inputs, training)

    def item_parts(self, inputs, training=False):
        """The item counterparts of ``user_parts`` (the deep layer's bias rides with the item half)."""
        return self._side_parts("item", inputs, training)

    def pair_scores(self, user, item, cross=False, training=False):
        score = add_sides(user["first"], item["first"], cross=cross) + self.global_bias
        if self.fm:
            score = score + add_sides(user["fm_self"], item["fm_self"], cross=cross)
            score = score + dot(user["fm_sum"], item["fm_sum"], cross=cross)
        if self.deep:
            hidden = self.deep_first.combine(user["deep"], item["deep"], cross=cross)
            score = score + self.deep_rest(hidden, training=training)[..., 0]
        for n, (a, b) in enumerate(self.crosses):
            ua, ib = user[f"x:{a}"], item[f"x:{b}"]
            if cross:
                ua, ib = ua[:, None, :], ib[None, :, :]
            score = score + self.cross_weights(ua, ib, cross_id=n, user_vocab=self._vocab("user", a),
                                               item_vocab=self._vocab("item", b))
        return score

    def pair_flops(self) -> int:
        """first-order sides + global bias: 2; FM: both self-interactions 2 + the dot of the field sums 2k;
        deep: ``split_mlp_flops`` + 1 to add it; Wide & Deep crosses: a hashed weight look-up and an add
        per crossed index pair (counted as 2 per cross of single-valued fields)."""
        flops = 2
        if self.fm:
            flops += 2 + 2 * self.embedding_dim
        if self.deep:
            flops += split_mlp_flops(self.deep_first, self.deep_rest) + 1
        return flops + 2 * len(self.crosses)

    def user_embedding(self, inputs):
        """FM only: [S_u, 1, w0 + first_u + fm_self_u] ([n, k + 2])."""
        if not self.factorised:
            return super().user_embedding(inputs)
        p = self.user_parts(inputs)
        rest = p["first"] + self.global_bias + (p["fm_self"] if self.fm else 0.0)
        vec = p["fm_sum"] if self.fm else ops.zeros_like(rest)[:, None]
        return ops.concatenate([vec, ops.ones_like(rest)[:, None], rest[:, None]], axis=-1)

    def item_embedding(self, inputs):
        """FM only: [S_i, first_i + fm_self_i, 1] ([n, k + 2])."""
        if not self.factorised:
            return super().item_embedding(inputs)
        p = self.item_parts(inputs)
        rest = p["first"] + (p["fm_self"] if self.fm else 0.0)
        vec = p["fm_sum"] if self.fm else ops.zeros_like(rest)[:, None]
        return ops.concatenate([vec, rest[:, None], ops.ones_like(rest)[:, None]], axis=-1)

    def get_config(self):
        return {
            **self.base_config(),
            "deep_layers": self.deep_layers,
            "fm": self.fm,
            "deep": self.deep,
            "wide_crosses": self.wide_crosses,
            "crosses": self.crosses if self.wide_crosses else None,
            "cross_buckets": self.cross_buckets,
        }
