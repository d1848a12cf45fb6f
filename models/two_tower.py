"""The two-tower model: score(u, i) = <psi(user features), phi(item features)>.

The user tower psi and the item tower phi are separately callable, so the
whole catalogue can be embedded without the users and scored exhaustively
with one matrix product. With ``normalize=True`` both outputs are L2-
normalised and the score is a cosine (the content-based example in the seeds).
"""

from __future__ import annotations

import keras
from keras import ops

from models.layers import SideEmbedding
from models.tasks import in_batch_softmax_loss


@keras.saving.register_keras_serializable(package="nightrec")
class Tower(keras.layers.Layer):
    """One tower: embed the side's features, then an MLP, then a linear output.

    Args:
        side_spec: the side's feature spec (see ``models.layers``).
        embedding_dim: width of the feature embeddings.
        output_dim: width of the tower output.
        hidden: widths of the hidden ReLU layers (empty: a linear tower).
        normalize: L2-normalise the output.
        use_id: include the id embedding.

    Call returns:
        [batch, output_dim].
    """

    def __init__(
        self, side_spec, embedding_dim, output_dim, hidden=(), normalize=False, use_id=True, l2=0.0, **kwargs
    ):
        super().__init__(**kwargs)
        self.side_spec = side_spec
        self.embedding_dim = int(embedding_dim)
        self.output_dim = int(output_dim)
        self.hidden = [int(h) for h in hidden]
        self.normalize = bool(normalize)
        self.use_id = bool(use_id)
        self.l2 = float(l2)
        self.embed = SideEmbedding(side_spec, embedding_dim, use_id=use_id, l2=l2, name="features")
        self.mlp = [keras.layers.Dense(h, activation="relu", name=f"hidden_{n}") for n, h in enumerate(self.hidden)]
        self.out = keras.layers.Dense(output_dim, name="output")

    def call(self, inputs):
        x = self.embed(inputs)
        for layer in self.mlp:
            x = layer(x)
        x = self.out(x)
        if self.normalize:
            x = x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)
        return x

    def input_names(self) -> list[str]:
        names = [self.side_spec["id"]["name"]] if self.use_id else []
        names += [s["name"] for s in self.side_spec.get("categorical", [])]
        names += [s["name"] for s in self.side_spec.get("multi_categorical", [])]
        return names + list(self.side_spec.get("continuous", []))

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
        }


@keras.saving.register_keras_serializable(package="nightrec")
class TwoTowerModel(keras.Model):
    """Two towers and a dot-product score, trained with in-batch softmax.

    Args:
        spec: the model input spec ``{"user": side_spec, "item": side_spec}``.
        embedding_dim: width of the feature embeddings and of the tower outputs.
        hidden: hidden layer widths of both towers.
        temperature: softmax temperature of the retrieval loss.
        normalize: L2-normalise tower outputs.
    """

    def __init__(self, spec, embedding_dim=32, hidden=(64,), temperature=0.1, normalize=False, l2=0.0, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self.embedding_dim = int(embedding_dim)
        self.hidden = [int(h) for h in hidden]
        self.temperature = float(temperature)
        self.normalize = bool(normalize)
        self.l2 = float(l2)
        common = dict(embedding_dim=embedding_dim, output_dim=embedding_dim, hidden=hidden, normalize=normalize, l2=l2)
        self.user_tower = Tower(spec["user"], name="user_tower", **common)
        self.item_tower = Tower(spec["item"], name="item_tower", **common)

    def call(self, inputs):
        """Score aligned (user, item) rows: [batch]."""
        return ops.sum(self.user_tower(inputs) * self.item_tower(inputs), axis=-1)

    def loss_on_batch(self, batch, item_log_q=None):
        """In-batch softmax loss of a batch of positive (user, item) rows."""
        item_ids = batch[self.spec["item"]["id"]["name"]]
        return in_batch_softmax_loss(
            self.user_tower(batch),
            self.item_tower(batch),
            item_ids,
            item_log_q=item_log_q,
            temperature=self.temperature,
        )

    def get_config(self):
        return {
            "spec": self.spec,
            "embedding_dim": self.embedding_dim,
            "hidden": self.hidden,
            "temperature": self.temperature,
            "normalize": self.normalize,
            "l2": self.l2,
            "name": self.name,
        }
