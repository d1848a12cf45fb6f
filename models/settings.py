"""How to train a model: ``TrainSettings``, checked against the kind (no TensorFlow import).

The config (``flows.config.ModelConfig.train_settings``) builds these
settings and takes its defaults from them; ``models.train.train_model``
reads them.
"""

from __future__ import annotations

import dataclasses

from models.kinds import KINDS, LOSSES, NEGATIVE_SAMPLERS, OBJECTIVES, keras_problem, loss_problem

#: The saved Keras model inside a model folder (beside ``train.json`` and ``feature_state.json``).
MODEL_FILE = "model.keras"

#: The implicit losses that are a softmax over candidates (their examples can be weighed per user).
SOFTMAX_LOSSES = ("in_batch_softmax", "full_softmax")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How to train (the model's own hyper-parameters go to ``models.registry.build_model``).

    Attributes:
        objective: "implicit" (top-K from interactions) or "rating" (regression).
        loss: implicit loss, "in_batch_softmax", "sampled_bce", "full_softmax" or "reconstruction"
            (``item_item`` only) (None: the kind's default).
        epochs: maximum epochs.
        batch_size: global batch size (split across replicas).
        learning_rate: Adam learning rate.
        patience: stop after this many epochs without a better holdout metric (0: never stop early).
        temperature: in-batch or full softmax temperature (scores are divided by it).
        log_q: subtract log item frequency from in-batch logits.
        extra_negatives: in-batch softmax: items sampled uniformly from the
            catalogue per batch, added to the batch's own items as negatives
            (mixed negative sampling); the log-Q correction then uses the
            mixture's expected count of each item.
        mask_history: in-batch or full softmax, models with a history input: a negative that is in
            the row user's history (another positive of the user) is masked out like an accidental hit.
        user_weight_power: in-batch or full softmax: each example weighs n_u ** -user_weight_power
            (n_u: its user's training rows), so users with many rows dominate the loss less; 0: every
            example weighs the same, 1: every user weighs the same.
        negatives: "uniform" or "popularity" (sampled_bce).
        negative_ratio: sampled negatives per positive (sampled_bce).
        seed: seed of initialisation, shuffling and sampling.
        eval_k: cut-off of the ranking holdout metric.
        eval_max_users: holdout users evaluated per epoch (a seeded sample).
    """

    objective: str = "implicit"
    loss: str | None = None
    epochs: int = 8
    batch_size: int = 1024
    learning_rate: float = 0.005
    patience: int = 2
    temperature: float = 0.1
    log_q: bool = True
    extra_negatives: int = 0
    mask_history: bool = False
    user_weight_power: float = 0.0
    negatives: str = "uniform"
    negative_ratio: int = 4
    seed: int = 42
    eval_k: int = 10
    eval_max_users: int = 2000

    def resolved_loss(self, kind: str) -> str:
        """The loss actually used: "mse" for ratings, else the implicit loss."""
        if self.objective == "rating":
            return "mse"
        return self.loss or KINDS[kind].default_loss

    def check(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(sorted(KINDS))}")
        problem = keras_problem(kind)
        if problem:
            raise ValueError(problem)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.loss is not None and self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        problem = loss_problem(kind, self.objective, self.loss)
        if problem:
            raise ValueError(problem)
        if not 0.0 <= self.user_weight_power <= 1.0:
            raise ValueError(f"user_weight_power must be in [0, 1], got {self.user_weight_power!r}")
        if self.user_weight_power and self.resolved_loss(kind) not in SOFTMAX_LOSSES:
            raise ValueError(f"user_weight_power weighs the examples of a softmax loss ({', '.join(SOFTMAX_LOSSES)}),"
                             f" not {self.resolved_loss(kind)}")
        if self.negatives not in NEGATIVE_SAMPLERS:
            raise ValueError(f"negatives must be one of {', '.join(NEGATIVE_SAMPLERS)}, got {self.negatives!r}")


