"""The two-tower family: score(u, i) = rho(psi(user u), phi(item i)).

A user tower psi and an item tower phi map each side's features to a vector;
the score combines them. The seeds' models are named special cases
(``KINDS`` in ``models.registry``):

* ``mf``:        s = p_u . q_i                     (id embeddings only)
* ``mf_mean``:   s = p_u . q_i + a_u + b_i + mu     (plus biases and the global mean)
* ``linear_rs``: s = psi(u) . phi(i), psi(u) = A x_u + sum_f E_f[x_uf]   (linear towers)
* ``two_tower``: s = psi(u) . phi(i), psi, phi MLPs; optionally L2-normalised
  (then s is a cosine; the in-batch softmax divides it by a temperature)
* ``two_tower_dense``: s = rho([psi(u), phi(i)]), rho an MLP (not a dot product).
* ``item_item``:  s = sum_{j in h(u)} e_j . q_i   (``models.item_item.ItemItemModel``: EASE with
  B = E Q^T, the user is the sum of their history's embeddings)

With ``history_max_len > 0`` (``two_tower``, ``two_tower_dense``) the user
tower also reads the user's history h(u), the items of the training window
(``jobs.history.user_history``), as the masked mean of their embeddings
(Covington et al. 2016, "Deep Neural Networks for YouTube Recommendations"):
psi(u) = MLP([features of u, mean_{j in h(u)} e_j]). The lists live in the
model, one row per user index (``models.user_history``: a non-trainable int
weight, saved with it), so the user tower still takes only the user's columns
and exported user embeddings include the history. In training, the example's own item is
masked out of h(u) before pooling (leave-one-out, as the examples'
statistics); outside training the whole list is used.

With a dot-product head the model is factorised: ``user_embedding`` /
``item_embedding`` fold the biases in (``[p_u, a_u + mu, 1] . [q_i, 1, b_i]``),
so exported tables score exactly.
"""

from __future__ import annotations

import keras
from keras import ops

from models.base import RecommenderModel, add_sides, dot
from models.layers import (MLP, PAD, LinearSide, MaskedMeanPooling, ReservedZerosNormal, SideEmbedding, SplitDense,
                           split_mlp_flops)
from models.user_history import UserHistoryLists

TOWER_MODES = ("id", "linear", "mlp")
HEADS = ("dot", "dense")
#: Where the history's item embeddings come from: the item tower's id table, or a table of their own.
HISTORY_EMBEDDINGS = ("shared", "own")


@keras.saving.register_keras_serializable(package="nightrec")
class Tower(keras.layers.Layer):
    """One tower: the side's features -> a vector.

    Args:
        side_spec: the side's feature spec (see ``models.layers``).
        embedding_dim: width of the feature embeddings.
        output_dim: width of the tower output.
        hidden: widths of the hidden ReLU layers (mode "mlp").
        mode: "id" (the id embedding itself; output_dim = embedding_dim),
            "linear" (A x + sum of field embeddings) or "mlp" (concatenated
            embeddings and continuous features -> ReLU layers -> linear output).
        normalize: L2-normalise the output.
        use_id: include the id embedding ("linear"/"mlp").
        use_features: include the side features ("linear"/"mlp").
        id_dropout: probability of replacing the id by the unseen index in training.
        dropout: dropout after each hidden layer in training.

    Call returns:
        [batch, output_dim].
    """

    def __init__(self, side_spec, embedding_dim, output_dim, hidden=(), normalize=False, use_id=True, l2=0.0,
                 mode="mlp", use_features=True, id_dropout=0.0, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if mode not in TOWER_MODES:
            raise ValueError(f"Tower mode must be one of {', '.join(TOWER_MODES)}, got {mode!r}")
        self.side_spec = side_spec
        self.embedding_dim = int(embedding_dim)
        self.output_dim = int(output_dim)
        self.hidden = [int(h) for h in hidden]
        self.normalize = bool(normalize)
        self.use_id = bool(use_id) or mode == "id"
        self.use_features = bool(use_features) and mode != "id"
        self.l2 = float(l2)
        self.mode = mode
        self.id_dropout = float(id_dropout)
        self.dropout = float(dropout)
        common = dict(use_id=self.use_id, use_features=self.use_features, l2=l2, id_dropout=id_dropout)
        if mode == "linear":
            self.embed = LinearSide(side_spec, self.output_dim, name="features", **common)
        else:
            dim = self.output_dim if mode == "id" else self.embedding_dim
            self.embed = SideEmbedding(side_spec, dim, name="features", **common)
        self.mlp = MLP(self.hidden, self.output_dim, dropout=dropout, l2=l2, name="mlp") if mode == "mlp" else None

    def call(self, inputs, training=False, extra=None):
        """[batch, output_dim]; ``extra`` ([batch, e], mode "mlp") is appended to the MLP's input."""
        x = self.embed(inputs, training=training)
        if extra is not None:
            if self.mlp is None:
                raise ValueError(f"Tower {self.name}: an extra input needs mode 'mlp', not {self.mode!r}")
            x = ops.concatenate([x, extra], axis=-1)
        if self.mlp is not None:
            x = self.mlp(x, training=training)
        if self.normalize:
            x = x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)
        return x

    def input_names(self) -> list[str]:
        names = [self.side_spec["id"]["name"]] if self.use_id else []
        if self.use_features:
            names += [s["name"] for s in self.side_spec.get("categorical", [])]
            names += [s["name"] for s in self.side_spec.get("multi_categorical", [])]
            names += list(self.side_spec.get("continuous", []))
        return names

    def get_config(self):
        return {
            **super().get_config(),
            "side_spec": self.side_spec,
            "embedding_dim": self.embedding_dim,
            "output_dim": self.output_dim,
            "hidden": self.hidden,
            "normalize": self.normalize,
            "use_id": self.use_id,
            "l2": self.l2,
            "mode": self.mode,
            "use_features": self.use_features,
            "id_dropout": self.id_dropout,
            "dropout": self.dropout,
        }


@keras.saving.register_keras_serializable(package="nightrec")
class TwoTowerModel(UserHistoryLists, RecommenderModel):
    """Two towers and a head; the named kinds of the family are presets of these arguments.

    Args:
        spec: the model input spec ``{"user": side_spec, "item": side_spec}``.
        embedding_dim: width of the feature embeddings and of the tower outputs.
        hidden: hidden layer widths of both towers (mode "mlp").
        normalize: L2-normalise tower outputs.
        tower: "id", "linear" or "mlp" (see ``Tower``).
        biases: add a_u + b_i + mu (per-id biases and a global bias).
        head: "dot" (factorised) or "dense" (rho, an MLP over [psi, phi]).
        head_layers: ReLU widths of the dense head.
        kind: the preset name this model was built as (recorded for readers).
        history_max_len: length of each user's history list (0: no history input; see the module docstring).
        history_embedding: "shared" (the item tower's id embedding table) or "own" (a separate table).
        history_user_id: with a history, whether the user tower still embeds the user id (False: the
            user is represented by the history and the user features only, as in Mult-VAE / YouTube-DNN).
        history_dropout: in training, each history item is also left out with this probability (the
            input dropout of Mult-DAE/VAE, Liang et al. 2018), so the tower learns from partial histories.
    """

    family = "two_tower"

    def __init__(self, spec, embedding_dim=32, hidden=(64,), normalize=False, l2=0.0,
                 tower="mlp", use_id=True, use_features=True, biases=False, head="dot", head_layers=(64,),
                 id_dropout=0.0, dropout=0.0, output_bias=0.0, kind="two_tower", history_max_len=0,
                 history_embedding="shared", history_user_id=True, history_dropout=0.0, **kwargs):
        super().__init__(spec, kind=kind, embedding_dim=embedding_dim, use_id=use_id, use_features=use_features, l2=l2,
                         dropout=dropout, id_dropout=id_dropout, output_bias=output_bias, **kwargs)
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        if head == "dense" and not head_layers:
            raise ValueError("a dense head needs at least one layer in head_layers")
        self.hidden = [int(h) for h in hidden]
        self.normalize = bool(normalize)
        self.tower = tower
        self.biases = bool(biases)
        self.head = head
        self.head_layers = [int(h) for h in head_layers]
        common = dict(embedding_dim=embedding_dim, output_dim=embedding_dim, hidden=hidden, normalize=normalize, l2=l2,
                      mode=tower, use_id=use_id, use_features=use_features, id_dropout=id_dropout, dropout=dropout)
        self.history_max_len = int(history_max_len)
        self.history_embedding = history_embedding
        self.history_user_id = bool(history_user_id)
        self.history_dropout = float(history_dropout)
        if not 0.0 <= self.history_dropout < 1.0:
            raise ValueError(f"history_dropout must be in [0, 1), got {history_dropout!r}")
        if not self.history_user_id and not self.history_max_len:
            raise ValueError("history_user_id False drops the user id in favour of the history; it needs "
                             "history_max_len >= 1")
        user_common = {**common, "use_id": use_id and self.history_user_id}
        self.user_tower = Tower(spec["user"], name="user_tower", **user_common)
        self.item_tower = Tower(spec["item"], name="item_tower", **common)
        if self.history_max_len < 0:
            raise ValueError(f"history_max_len must be >= 0 (0: no history), got {history_max_len!r}")
        if self.history_max_len:
            self._init_history(spec)
        if self.biases:
            reg = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
            self.user_bias = keras.layers.Embedding(int(spec["user"]["id"]["vocab_size"]), 1,
                                                    embeddings_initializer="zeros", embeddings_regularizer=reg,
                                                    name="user_bias")
            self.item_bias = keras.layers.Embedding(int(spec["item"]["id"]["vocab_size"]), 1,
                                                    embeddings_initializer="zeros", embeddings_regularizer=reg,
                                                    name="item_bias")
            self.global_bias = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.output_bias),
                                               name="global_bias")
        if self.head == "dense":
            self.rho_first = SplitDense(self.head_layers[0], self.embedding_dim, self.embedding_dim, l2=l2,
                                        name="rho_first")
            self.rho_rest = MLP(self.head_layers[1:], 1, dropout=dropout, l2=l2, output_bias=output_bias,
                                name="rho_rest")

    def _init_history(self, spec):
        if self.tower != "mlp":
            raise ValueError(f"{self.kind}: a history input needs MLP towers (tower 'mlp'), not {self.tower!r}")
        if self.history_embedding not in HISTORY_EMBEDDINGS:
            raise ValueError(f"history_embedding must be one of {', '.join(HISTORY_EMBEDDINGS)}, "
                             f"got {self.history_embedding!r}")
        if self.history_embedding == "shared" and not self.use_id:
            raise ValueError("history_embedding 'shared' reuses the item id embedding, which use_id=False removes; "
                             "use history_embedding 'own' or use_id=True")
        self._add_history_lists(spec)
        if self.history_embedding == "own":
            reg = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
            self.history_table = keras.layers.Embedding(
                int(spec["item"]["id"]["vocab_size"]), self.embedding_dim,
                embeddings_initializer=ReservedZerosNormal(0.05), embeddings_regularizer=reg, name="history_items")
        self.history_pool = MaskedMeanPooling(name="history_pool")
        self.history_seed = keras.random.SeedGenerator(17) if self.history_dropout > 0 else None

    def history_vector(self, inputs, training=False):
        """Mean embedding of each user's history items: [n, d] (zeros for a user without history).

        In training the row's own item (``inputs[item id]``) is left out of the mean, and each
        other item with probability ``history_dropout``.
        """
        lists = self.history_lists(inputs)
        if training:
            own = ops.cast(inputs[self.spec["item"]["id"]["name"]], "int32")[:, None]
            drop = ops.equal(lists, own)
            if self.history_dropout > 0:
                noise = keras.random.uniform(ops.shape(lists), seed=self.history_seed)
                drop = ops.logical_or(drop, noise < self.history_dropout)
            lists = ops.where(drop, ops.full_like(lists, PAD), lists)
        if self.history_embedding == "own":
            table = self.history_table
        else:
            table = self.item_tower.embed.tables[self.spec["item"]["id"]["name"]]
        return self.history_pool(lists, table(ops.maximum(lists, 0)))

    @property
    def factorised(self) -> bool:
        return self.head == "dot"

    def user_parts(self, inputs, training=False):
        """{"vec": psi(u) [n, d]; "bias": a_u + mu [n] (biases); "rho": W_p psi(u) [n, h] (dense head)}."""
        history = self.history_vector(inputs, training=training) if self.history_max_len else None
        parts = {"vec": self.user_tower(inputs, training=training, extra=history)}
        if self.biases:
            idx = ops.cast(inputs[self.spec["user"]["id"]["name"]], "int32")
            parts["bias"] = self.user_bias(idx)[:, 0] + self.global_bias
        if self.head == "dense":
            parts["rho"] = self.rho_first.user_half(parts["vec"])
        return parts

    def item_parts(self, inputs, training=False):
        """{"vec": phi(i) [n, d]; "bias": b_i [n] (biases); "rho": W_q phi(i) + b [n, h] (dense head)}."""
        parts = {"vec": self.item_tower(inputs, training=training)}
        if self.biases:
            idx = ops.cast(inputs[self.spec["item"]["id"]["name"]], "int32")
            parts["bias"] = self.item_bias(idx)[:, 0]
        if self.head == "dense":
            parts["rho"] = self.rho_first.item_half(parts["vec"])
        return parts

    def pair_scores(self, user, item, cross=False, training=False):
        if self.head == "dense":
            hidden = self.rho_first.combine(user["rho"], item["rho"], cross=cross)
            return self.rho_rest(hidden, training=training)[..., 0]
        score = dot(user["vec"], item["vec"], cross=cross)
        if self.biases:
            score = score + add_sides(user["bias"], item["bias"], cross=cross)
        return score

    def pair_flops(self) -> int:
        """Dot head: 2d (+ 2 for the biases); dense head: ``split_mlp_flops`` of rho."""
        if self.head == "dense":
            return split_mlp_flops(self.rho_first, self.rho_rest)
        return 2 * self.user_tower.output_dim + (2 if self.biases else 0)

    def user_embedding(self, inputs):
        """[n, d] (or [n, d + 2] with biases: [psi(u), a_u + mu, 1])."""
        if not self.factorised:
            return super().user_embedding(inputs)
        parts = self.user_parts(inputs)
        if not self.biases:
            return parts["vec"]
        ones = ops.ones_like(parts["bias"])
        return ops.concatenate([parts["vec"], parts["bias"][:, None], ones[:, None]], axis=-1)

    def item_embedding(self, inputs):
        """[n, d] (or [n, d + 2] with biases: [phi(i), 1, b_i])."""
        if not self.factorised:
            return super().item_embedding(inputs)
        parts = self.item_parts(inputs)
        if not self.biases:
            return parts["vec"]
        ones = ops.ones_like(parts["bias"])
        return ops.concatenate([parts["vec"], ones[:, None], parts["bias"][:, None]], axis=-1)

    def input_names(self, side: str) -> list[str]:
        tower = self.user_tower if side == "user" else self.item_tower
        names = tower.input_names()
        id_name = self.spec[side]["id"]["name"]
        if (self.biases or (side == "user" and self.history_max_len)) and id_name not in names:
            names = [id_name] + names
        return names

    def get_config(self):
        return {
            **self.base_config(),
            "hidden": self.hidden,
            "normalize": self.normalize,
            "tower": self.tower,
            "biases": self.biases,
            "head": self.head,
            "head_layers": self.head_layers,
            "history_max_len": self.history_max_len,
            "history_embedding": self.history_embedding,
            "history_user_id": self.history_user_id,
            "history_dropout": self.history_dropout,
        }
