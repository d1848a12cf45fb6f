"""The NCF family (He et al. 2017, "Neural collaborative filtering"; the seeds' ANCF).

p_u, q_i are id embeddings (the "GMF" embeddings); s_u, t_i are a second set
of embeddings of the id and, with ``use_features``, of the side features
(the "MLP" embeddings), so a user with features and no history still scores.

* ``gmf``:     s = h . (p_u * q_i) + b
* ``mlp_ncf``: s = MLP([s_u, t_i])
* ``ancf``:    s = p_u . q_i + f([s_u, t_i]),  f an MLP with a linear output
* ``neumf``:   s = phi([p_u * q_i, psi([s_u, t_i])]) with phi linear:
               h . (p_u * q_i) + w . psi([s_u, t_i]) + b

Because phi is linear, h . (p_u * q_i) = (p_u * h) . q_i: the GMF part is a
dot product of per-side vectors (``gmf`` is factorised), and the MLP's first
layer splits into user and item halves (``models.layers.SplitDense``).
"""

from __future__ import annotations

from models.base import RecommenderModel, dot
from models.layers import MLP, SideEmbedding, SplitDense, split_mlp_flops
from models.tf_runtime import keras, ops


@keras.saving.register_keras_serializable(package="nightrec")
class NCFModel(RecommenderModel):
    """GMF, MLP and their combinations.

    Args:
        spec: the model input spec.
        embedding_dim: width of p, q and of each field of s, t.
        mlp_layers: ReLU widths of the MLP over [s_u, t_i].
        gmf: include h . (p_u * q_i) (learned h).
        mlp: include the MLP part.
        additive: ANCF: p_u . q_i (h fixed to ones) plus an MLP with a linear output.
        use_features: s_u, t_i include the side features besides the id.
        kind: the preset name ("gmf", "mlp_ncf", "ancf", "neumf").
    """

    family = "ncf"

    def __init__(self, spec, embedding_dim=16, mlp_layers=(64, 32, 16), gmf=True, mlp=True, additive=False,
                 use_id=True, use_features=True, l2=0.0, dropout=0.0, id_dropout=0.0, output_bias=0.0, kind="neumf",
                 **kwargs):
        super().__init__(spec, kind=kind, embedding_dim=embedding_dim, use_id=use_id, use_features=use_features, l2=l2,
                         dropout=dropout, id_dropout=id_dropout, output_bias=output_bias, **kwargs)
        self.mlp_layers = [int(h) for h in mlp_layers]
        self.gmf = bool(gmf)
        self.mlp = bool(mlp)
        self.additive = bool(additive)
        if self.mlp and not self.mlp_layers:
            raise ValueError(f"{kind}: the MLP part needs at least one layer in mlp_layers")
        if not (self.gmf or self.mlp):
            raise ValueError(f"{kind}: needs the GMF part, the MLP part or both")
        ids_only = dict(use_id=True, use_features=False, l2=l2, id_dropout=id_dropout)
        if self.gmf or self.additive:
            self.user_gmf = SideEmbedding(spec["user"], embedding_dim, name="user_gmf", **ids_only)
            self.item_gmf = SideEmbedding(spec["item"], embedding_dim, name="item_gmf", **ids_only)
        if self.gmf:
            self.gmf_weights = self.add_weight(shape=(self.embedding_dim,), initializer="ones", name="gmf_weights")
        if self.mlp:
            side = dict(use_id=use_id, use_features=use_features, l2=l2, id_dropout=id_dropout)
            self.user_mlp = SideEmbedding(spec["user"], embedding_dim, name="user_mlp", **side)
            self.item_mlp = SideEmbedding(spec["item"], embedding_dim, name="item_mlp", **side)
            self.mlp_first = SplitDense(self.mlp_layers[0], self.user_mlp.output_width,
                                        self.item_mlp.output_width, l2=l2, name="mlp_first")
            linear_out = not self.gmf  # mlp_ncf / ancf: the MLP ends in the score; neumf: phi does
            self.mlp_rest = MLP(self.mlp_layers[1:], 1 if linear_out else None, dropout=dropout, l2=l2,
                                output_bias=output_bias, name="mlp_rest")
            if self.gmf:
                self.phi = keras.layers.Dense(1, use_bias=False, name="phi_mlp")
        if self.gmf:
            self.global_bias = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.output_bias),
                                               name="global_bias")

    @property
    def factorised(self) -> bool:
        return not self.mlp

    def _side_parts(self, side, inputs, training):
        parts = {}
        if self.gmf or self.additive:
            vec = (self.user_gmf if side == "user" else self.item_gmf)(inputs, training=training)
            parts["gmf"] = vec * self.gmf_weights if (self.gmf and side == "user") else vec
        if self.mlp:
            emb = (self.user_mlp if side == "user" else self.item_mlp)(inputs, training=training)
            half = self.mlp_first.user_half if side == "user" else self.mlp_first.item_half
            parts["mlp"] = half(emb)
        return parts

    def user_parts(self, inputs, training=False):
        """{"gmf": p_u * h (or p_u for ANCF) [n, k]; "mlp": user half of the MLP's first layer [n, h1]}."""
        return self._side_parts("user", inputs, training)

    def item_parts(self, inputs, training=False):
        """{"gmf": q_i [n, k]; "mlp": item half of the MLP's first layer (with its bias) [n, h1]}."""
        return self._side_parts("item", inputs, training)

    def pair_scores(self, user, item, cross=False, training=False):
        score = None
        if "gmf" in user:
            score = dot(user["gmf"], item["gmf"], cross=cross)
        if self.gmf:
            score = score + self.global_bias
        if self.mlp:
            hidden = self.mlp_rest(self.mlp_first.combine(user["mlp"], item["mlp"], cross=cross), training=training)
            term = (self.phi(hidden) if self.gmf else hidden)[..., 0]
            score = term if score is None else score + term
        return score

    def pair_flops(self) -> int:
        """GMF / ANCF dot: 2k (+ 1 for the global bias of GMF); MLP: ``split_mlp_flops``, then for NeuMF
        phi's 2 per unit of the last layer, and 1 to add it to the GMF term."""
        flops = 0
        if self.gmf or self.additive:
            flops += 2 * self.embedding_dim
        if self.gmf:
            flops += 1
        if self.mlp:
            flops += split_mlp_flops(self.mlp_first, self.mlp_rest)
            if self.gmf:
                flops += 2 * self.mlp_layers[-1]
            if self.gmf or self.additive:
                flops += 1
        return flops

    def user_embedding(self, inputs):
        """GMF only: [p_u * h, 1] ([n, k + 1])."""
        if not self.factorised:
            return super().user_embedding(inputs)
        vec = self.user_parts(inputs)["gmf"]
        return ops.concatenate([vec, ops.ones_like(vec[:, :1])], axis=-1)

    def item_embedding(self, inputs):
        """GMF only: [q_i, b] ([n, k + 1])."""
        if not self.factorised:
            return super().item_embedding(inputs)
        vec = self.item_parts(inputs)["gmf"]
        return ops.concatenate([vec, ops.zeros_like(vec[:, :1]) + self.global_bias], axis=-1)

    def get_config(self):
        return {
            **self.base_config(),
            "mlp_layers": self.mlp_layers,
            "gmf": self.gmf,
            "mlp": self.mlp,
            "additive": self.additive,
        }
