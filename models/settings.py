"""How to train a model and on how many workers, and what training returns (no TensorFlow import).

``TrainSettings`` (per model) and ``LaunchSettings`` (per run: workers,
launcher, checkpoints, timeouts) are built by the config
(``flows.config.ModelConfig.train_settings``, ``flows.config.TrainingConfig.settings``),
which takes its defaults from them; ``models.launch.train`` and
``models.train.train_model`` read them. ``TrainResult`` is what a training
returns, in-process or from the chief worker of a multi-worker job.
"""

from __future__ import annotations

import dataclasses

from jobs.storage import Location
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




#: The ways ``models.launch.train`` can start training workers.
LAUNCHERS = ("local", "spark")


@dataclasses.dataclass(frozen=True)
class LaunchSettings:
    """Where and on how many workers a model trains (the ``training:`` section of the config).

    The global batch size and the learning rate of ``TrainSettings`` do not
    depend on ``workers``: each of the N workers takes ``batch_size / N`` rows
    of every step from its own shard of the examples.

    Attributes:
        workers: training processes of one synchronous data-parallel job
            (``tf.distribute.MultiWorkerMirroredStrategy``). 1 with launcher
            "local": in this process, as before there were launchers.
        launcher: "local" (worker processes on this machine, on free
            localhost ports) or "spark" (one worker per task of a barrier-mode
            Spark stage on the configured cluster).
        checkpoint_every_steps: write a training checkpoint every N steps (and
            at the end of every epoch) when a checkpoint folder is given; 0:
            only at the end of every epoch.
        worker_timeout_s: every worker must have started within this time, and a worker finds a
            dead or hung peer within about this time (TensorFlow's peer health checks) and fails,
            so a job whose worker dies fails within about this time; the local launcher also stops
            the other workers at once, or when they have not finished this long after one did.
    """

    workers: int = 1
    launcher: str = "local"
    checkpoint_every_steps: int = 500
    worker_timeout_s: float = 300.0

    def __post_init__(self):
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers!r}")
        if self.checkpoint_every_steps < 0:
            raise ValueError(f"checkpoint_every_steps must be >= 0 (0: at epoch ends only), "
                             f"got {self.checkpoint_every_steps!r}")
        if not self.worker_timeout_s > 0:
            raise ValueError(f"worker_timeout_s must be > 0 seconds, got {self.worker_timeout_s!r}")

    @property
    def in_process(self) -> bool:
        """Whether training runs in the calling process (one local worker)."""
        return self.workers == 1 and self.launcher == "local"


@dataclasses.dataclass
class TrainResult:
    """What a training run produced (in a multi-worker job: the chief's, with every worker's fingerprint).

    Attributes:
        model_file: the saved ``.keras`` file (``out_dir / MODEL_FILE``).
        history: one dict per epoch (epoch, loss, holdout metrics, examples_per_s, seconds).
        examples: training rows seen per epoch.
        best_epoch: the epoch whose weights were kept (the last one without a holdout).
        metric: name of the holdout metric ("rmse", "ndcg" or None).
        best_metric: its value at ``best_epoch`` (None without a holdout).
        factorised: whether the model scores as a dot product of exported embeddings.
        resumed_from_step: the step of the checkpoint training resumed from (0: it started afresh).
        steps_run: training steps this run took (after the resumed step).
        workers: training workers of the job.
        weight_fingerprints: per worker (by task index), a SHA-256 of its final weights; all equal in a
            synchronous job (the launcher checks it).
    """

    model_file: Location
    history: list[dict]
    examples: int
    best_epoch: int
    metric: str | None
    best_metric: float | None
    factorised: bool
    resumed_from_step: int = 0
    steps_run: int = 0
    workers: int = 1
    weight_fingerprints: tuple[str, ...] = ()

    def to_json(self) -> dict:
        """A JSON-ready dict (``model_file`` as its URI); ``from_json`` reads it back."""
        return {**dataclasses.asdict(self), "model_file": self.model_file.uri,
                "weight_fingerprints": list(self.weight_fingerprints)}

    @classmethod
    def from_json(cls, data: dict) -> "TrainResult":
        return cls(**{**data, "model_file": Location(data["model_file"]),
                      "weight_fingerprints": tuple(data.get("weight_fingerprints", ()))})
