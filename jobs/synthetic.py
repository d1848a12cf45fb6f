"""A MovieLens-like synthetic dataset, deterministic by seed.

The generative story (so that both collaborative signal and side information
matter, and a good model beats popularity by a clear margin):

* every user has latent factors ``p_u`` (dim ``latent_dim``) and a genre
  preference vector built from demographic effects (gender, age band,
  occupation) plus an individual part;
* every item has latent factors ``q_i``, one to three genres, a year and a
  skewed (Zipf-like) popularity;
* a user's candidate items are drawn from the popularity distribution and
  kept by taste ``t_ui = p_u.q_i / sqrt(d) + genre_affinity + year_affinity``
  (plus Gumbel noise), so *what* a user rates carries the signal that top-K
  models learn;
* the rating is ``clip(round(2.8 + b_u + b_i + 0.6 t_ui + noise), 1, 5)``;
* timestamps fall inside each user's active window within ``days`` days that
  end at the last second of ``end_date``.

The same per-chunk function makes the small in-process dataset (pandas) and
millions of ratings inside Spark (``synthetic_ratings_spark``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
    "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer",
    "entertainment", "executive", "healthcare", "homemaker", "lawyer",
    "librarian", "marketing", "none", "other", "programmer", "retired",
    "salesman", "scientist", "student", "technician", "writer",
)
_AGE_BANDS = np.array([18, 25, 35, 45, 50, 56])
_USERS_PER_CHUNK = 2048
# How strongly taste (vs popularity) decides what a user rates.
_CANDIDATES_PER_RATING = 20
_TASTE_WEIGHT = 2.0
_POP_EXPONENT = 0.8

RATINGS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("rating", pa.float64()),
        ("ts", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Size and shape of the synthetic dataset.

    Attributes:
        n_users: number of users (ids 1..n_users).
        n_items: number of items (ids 1..n_items).
        ratings_per_user: mean ratings per user (log-normal, at least 5).
        days: length of the event window in days.
        end_date: last day of the event window (inclusive).
        latent_dim: dimension of the hidden user/item factors.
        seed: seed of every random draw.
    """

    n_users: int = 3000
    n_items: int = 1500
    ratings_per_user: float = 40.0
    days: int = 120
    end_date: dt.date = dt.date(2024, 6, 30)
    latent_dim: int = 8
    seed: int = 7

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "days", "latent_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"SyntheticSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.ratings_per_user < 1:
            raise ValueError(f"SyntheticSpec.ratings_per_user must be >= 1, got {self.ratings_per_user}")

    @property
    def start_epoch_s(self) -> int:
        end = dt.datetime.combine(self.end_date, dt.time(), tzinfo=dt.timezone.utc)
        return int(end.timestamp()) - (self.days - 1) * 86400


@dataclasses.dataclass(frozen=True)
class SyntheticWorld:
    """Hidden parameters of the generator, shared by every chunk (small).

    Attributes (U users, I items, d latent dim, G genres):
        user_factors: [U, d]; item_factors: [I, d];
        user_genre_pref: [U, G]; item_genres: [I, G] 0/1;
        user_bias: [U]; item_bias: [I]; item_pop_cdf: [I];
        user_age_z: [U]; item_year_z: [I];
        user_start: [U], user_end: [U] active window in seconds from the start.
    """

    spec: SyntheticSpec
    user_factors: np.ndarray
    item_factors: np.ndarray
    user_genre_pref: np.ndarray
    item_genres: np.ndarray
    user_bias: np.ndarray
    item_bias: np.ndarray
    item_pop_cdf: np.ndarray
    user_age_z: np.ndarray
    item_year_z: np.ndarray
    user_start: np.ndarray
    user_end: np.ndarray
    users: pd.DataFrame
    items: pd.DataFrame


def make_world(spec: SyntheticSpec) -> SyntheticWorld:
    """Draw the users, the items and the hidden parameters."""
    rng = np.random.default_rng([spec.seed, 0])
    n_u, n_i, d, n_g = spec.n_users, spec.n_items, spec.latent_dim, len(GENRES)

    # Users: demographics drive genre tastes.
    gender = rng.choice(np.array(["M", "F"]), size=n_u, p=[0.6, 0.4])
    age_band = rng.choice(len(_AGE_BANDS), size=n_u, p=[0.08, 0.3, 0.28, 0.16, 0.1, 0.08])
    age = _AGE_BANDS[age_band] + rng.integers(0, 6, size=n_u)
    occ = rng.integers(0, len(OCCUPATIONS), size=n_u)
    region = rng.integers(0, 10, size=n_u)
    zips = np.char.add(region.astype(str), np.char.zfill(rng.integers(0, 10000, size=n_u).astype(str), 4))
    gender_eff = rng.normal(0, 0.6, size=(2, n_g))
    age_eff = rng.normal(0, 0.6, size=(len(_AGE_BANDS), n_g))
    occ_eff = rng.normal(0, 0.5, size=(len(OCCUPATIONS), n_g))
    user_genre_pref = (
        gender_eff[(gender == "F").astype(int)]
        + age_eff[age_band]
        + occ_eff[occ]
        + rng.normal(0, 0.4, size=(n_u, n_g))
    )
    age_z = (age - 35.0) / 12.0

    # Items: genres, year, skewed popularity.
    genre_weights = rng.dirichlet(np.full(n_g, 2.0))
    item_genres = np.zeros((n_i, n_g), dtype=np.float32)
    n_genres = rng.choice([1, 2, 3], size=n_i, p=[0.45, 0.4, 0.15])
    for i in range(n_i):
        item_genres[i, rng.choice(n_g, size=n_genres[i], replace=False, p=genre_weights)] = 1.0
    year = np.clip(np.round(2024 - rng.gamma(2.0, 9.0, size=n_i)), 1930, 2024).astype(int)
    year_z = (year - 2000.0) / 15.0
    pop_rank = rng.permutation(n_i) + 1
    pop_weight = pop_rank ** -_POP_EXPONENT
    item_pop_cdf = np.cumsum(pop_weight) / pop_weight.sum()
    item_bias = rng.normal(0, 0.35, size=n_i) + 0.15 * np.log(pop_weight / pop_weight.mean())

    span = spec.days * 86400
    user_start = rng.uniform(0, 0.8, size=n_u) * span
    user_end = np.minimum(span, user_start + rng.uniform(0.2, 1.0, size=n_u) * span)

    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_u + 1, dtype=np.int64),
            "age": age.astype(np.int64),
            "gender": gender,
            "occupation": np.array(OCCUPATIONS)[occ],
            "zip": zips,
        }
    )
    genre_names = np.array(GENRES)
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, n_i + 1, dtype=np.int64),
            "title": [f"Synthetic Movie {i + 1} ({year[i]})" for i in range(n_i)],
            "year": year.astype(np.int64),
            "genres": ["|".join(genre_names[item_genres[i] > 0]) for i in range(n_i)],
        }
    )
    return SyntheticWorld(
        spec=spec,
        user_factors=rng.normal(0, 1, size=(n_u, d)),
        item_factors=rng.normal(0, 1, size=(n_i, d)),
        user_genre_pref=user_genre_pref,
        item_genres=item_genres,
        user_bias=rng.normal(0, 0.3, size=n_u),
        item_bias=item_bias,
        item_pop_cdf=item_pop_cdf,
        user_age_z=age_z,
        item_year_z=year_z,
        user_start=user_start,
        user_end=user_end,
        users=users,
        items=items,
    )


def ratings_for_chunk(world: SyntheticWorld, chunk: int) -> pa.RecordBatch:
    """Ratings of the users in chunk ``chunk`` (users ``chunk*2048 ..``).

    Returns:
        A record batch with columns user_id (int64), item_id (int64),
        rating (float64, 1..5) and ts (timestamp[us, UTC]).
    """
    spec = world.spec
    rng = np.random.default_rng([spec.seed, 1, chunk])
    u0 = chunk * _USERS_PER_CHUNK
    u1 = min(spec.n_users, u0 + _USERS_PER_CHUNK)
    sigma = 0.8
    counts = np.exp(rng.normal(np.log(spec.ratings_per_user) - sigma**2 / 2, sigma, size=max(0, u1 - u0)))
    counts = np.clip(np.round(counts), 5, max(5, spec.n_items // 2)).astype(int)
    counts = np.minimum(counts, spec.n_items)
    scale = 1.0 / np.sqrt(spec.latent_dim)
    users, items, ratings, times = [], [], [], []
    for offset, n in enumerate(counts):
        u = u0 + offset
        cand = np.unique(np.searchsorted(world.item_pop_cdf, rng.random(_CANDIDATES_PER_RATING * n + 50)))
        cand = np.minimum(cand, spec.n_items - 1)
        genre_aff = (world.item_genres[cand] @ world.user_genre_pref[u]) / world.item_genres[cand].sum(axis=1)
        taste = (
            world.item_factors[cand] @ world.user_factors[u] * scale
            + genre_aff
            - 0.4 * world.user_age_z[u] * world.item_year_z[cand]
        )
        key = _TASTE_WEIGHT * taste + rng.gumbel(size=cand.size)
        chosen = np.argsort(-key, kind="stable")[:n]
        picked = cand[chosen]
        raw = 2.8 + world.user_bias[u] + world.item_bias[picked] + 0.6 * taste[chosen]
        raw = raw + rng.normal(0, 0.6, size=picked.size)
        users.append(np.full(picked.size, u + 1, dtype=np.int64))
        items.append(picked.astype(np.int64) + 1)
        ratings.append(np.clip(np.round(raw), 1, 5))
        times.append(rng.uniform(world.user_start[u], world.user_end[u], size=picked.size))
    if users:
        user_col, item_col = np.concatenate(users), np.concatenate(items)
        rating_col = np.concatenate(ratings).astype(np.float64)
        seconds = np.concatenate(times).astype(np.int64) + spec.start_epoch_s
    else:
        user_col = item_col = seconds = np.zeros(0, dtype=np.int64)
        rating_col = np.zeros(0, dtype=np.float64)
    ts = pa.array(seconds * 1_000_000, type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    return pa.RecordBatch.from_arrays(
        [pa.array(user_col), pa.array(item_col), pa.array(rating_col), ts], schema=RATINGS_SCHEMA
    )


def n_chunks(spec: SyntheticSpec) -> int:
    """Number of user chunks the ratings are generated in."""
    return -(-spec.n_users // _USERS_PER_CHUNK)


def synthetic_ratings(world: SyntheticWorld) -> pd.DataFrame:
    """All ratings in process, as pandas (user_id, item_id, rating, ts)."""
    batches = [ratings_for_chunk(world, c) for c in range(n_chunks(world.spec))]
    return pa.Table.from_batches(batches, schema=RATINGS_SCHEMA).to_pandas()


def synthetic_ratings_spark(spark, world: SyntheticWorld, num_partitions: int | None = None):
    """All ratings generated inside Spark, one task per group of user chunks.

    Args:
        spark: the SparkSession.
        world: the generator's hidden parameters (broadcast to the tasks).
        num_partitions: Spark partitions of the chunk index (default: one
            per chunk, at most 4 x the default parallelism).

    Returns:
        DataFrame[user_id: bigint, item_id: bigint, rating: double, ts: timestamp].
    """
    chunks = n_chunks(world.spec)
    parts = num_partitions or min(chunks, 4 * spark.sparkContext.defaultParallelism)
    world_bc = spark.sparkContext.broadcast(world)

    def generate(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        w = world_bc.value
        for batch in batches:
            for chunk in batch.column(0).to_pylist():
                yield ratings_for_chunk(w, int(chunk))

    ids = spark.range(0, chunks, numPartitions=max(1, parts))
    return ids.mapInArrow(generate, "user_id long, item_id long, rating double, ts timestamp")
