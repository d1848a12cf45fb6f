"""Per-user and per-item rating statistics in NumPy, run inside Spark tasks.

One implementation serves both uses, so training and scoring can never
compute a statistic differently:

* ``prefix_sufficient``: for every event, the sufficient statistics of the
  same entity's events strictly BEFORE the event's timestamp (leakage-safe
  training examples: an example never sees its own rating, nor any event at
  the same instant);
* ``total_sufficient``: for every entity, the sufficient statistics of all its
  events (the scoring-time features at the end of the window), or of a block
  of them: ``combine_sufficient`` adds blocks up (partial totals computed
  before the shuffle, so that one row per entity and block crosses it);
* ``leave_one_out_sufficient``: for every event, the sufficient statistics of
  all the same entity's events except that one (training examples whose
  statistics match the scoring-time ones but never contain their own label).

``statistics`` turns sufficient statistics into the raw features, and
``Finalizer`` imputes and standardises them with the values fitted on the
training window.

Quantiles are read from a histogram over ``grid`` (the sorted distinct
training ratings, or approximate quantiles of them when there are more than
the configured grid size): the p-quantile is the smallest grid value whose
cumulative count reaches p * n (the inverse of the empirical CDF).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

DAY_US = 86_400 * 1_000_000
# Chunks of about this many events (whole entities) bound the memory of a pass.
CHUNK_ROWS = 65_536
# p * n is compared with a tolerance so that 0.7 * 10 reaches 7, not 8.
_EPS = 1e-9


def quantile_name(q: float) -> str:
    """0.1 -> 'p10', 0.975 -> 'p97_5'."""
    text = f"{q * 100:.4f}".rstrip("0").rstrip(".")
    return "p" + text.replace(".", "_")


def slug(value) -> str:
    """A column-name-safe form of a category value: 'Sci-Fi' -> 'sci_fi'."""
    return re.sub(r"[^0-9a-z]+", "_", str(value).lower()).strip("_") or "value"


def affinity_slugs(values: Sequence) -> list[str]:
    """Unique slugs of the affinity values (a clash gets the value's position appended)."""
    out, seen = [], set()
    for i, value in enumerate(values):
        name = slug(value)
        if name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        out.append(name)
    return out


@dataclasses.dataclass(frozen=True)
class StatLayout:
    """Which statistics one side has.

    Attributes:
        side: "user" or "item".
        quantiles: probabilities of the rating quantiles.
        grid: sorted rating values of the histogram (K values).
        affinity: slugs of the genre-affinity values (G; empty: no affinity).
    """

    side: str
    quantiles: tuple[float, ...]
    grid: tuple[float, ...]
    affinity: tuple[str, ...] = ()

    def names(self) -> list[str]:
        """Raw statistic columns, e.g. user_rating_count, user_rating_p10, user_genre_share_drama."""
        s = self.side
        names = [f"{s}_rating_count", f"{s}_rating_mean", f"{s}_rating_std"]
        names += [f"{s}_rating_{quantile_name(q)}" for q in self.quantiles]
        names += [f"{s}_days_since_first", f"{s}_days_since_last"]
        names += [f"{s}_genre_share_{g}" for g in self.affinity]
        names += [f"{s}_genre_mean_{g}" for g in self.affinity]
        return names


@dataclasses.dataclass
class Sufficient:
    """Sufficient statistics of a set of events per row ([n] or [n, K] / [n, G]).

    first_ts/last_ts are in microseconds (float, NaN without events).
    """

    n_events: np.ndarray
    n_rated: np.ndarray
    rating_sum: np.ndarray
    rating_sumsq: np.ndarray
    first_ts: np.ndarray
    last_ts: np.ndarray
    hist: np.ndarray
    genre_events: np.ndarray
    genre_rated: np.ndarray
    genre_sum: np.ndarray


def chunks(codes: np.ndarray, size: int) -> list[tuple[int, int]]:
    """[lo, hi) slices of about ``size`` rows of sorted ``codes`` that never split an entity."""
    n = len(codes)
    if n == 0:
        return []
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    cuts = starts[np.minimum(np.searchsorted(starts, np.arange(size, n, size)), len(starts) - 1)]
    bounds = sorted({0, n, *(int(c) for c in cuts if 0 < c < n)})
    return list(zip(bounds[:-1], bounds[1:]))


def rating_bins(rating: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Grid bin of each rating: the largest grid value <= rating (first bin below it; -1 for NaN)."""
    bins = np.searchsorted(grid, rating, side="right") - 1
    bins = np.clip(bins, 0, len(grid) - 1)
    return np.where(np.isnan(rating), -1, bins)


def genre_matrix(mask: np.ndarray, n_genres: int) -> np.ndarray:
    """[n] bit masks -> [n, G] 0/1 float64 (bit g set: the item has affinity value g)."""
    if n_genres == 0:
        return np.zeros((len(mask), 0))
    return ((mask[:, None] >> np.arange(n_genres, dtype=np.int64)) & 1).astype(np.float64)


def _event_matrix(rating: np.ndarray, grid: np.ndarray, mask: np.ndarray, n_genres: int) -> tuple[np.ndarray, bool]:
    """Per event, the summands of every sufficient statistic side by side.

    Returns:
        ([n, 3 + K + 3G] float64, all_rated). Columns: rated (0/1), rating (0
        when missing), rating^2, the one-hot grid bin (K), the one-hot
        affinity values (G), those times rated (G; left out when every event
        is rated: then it equals the previous G), those times the rating (G).
        Counts stay exact in float64 (below 2^53).
    """
    n, k = len(rating), len(grid)
    rated = ~np.isnan(rating)
    all_rated = bool(rated.all())
    value = np.where(rated, rating, 0.0)
    x = np.zeros((n, 3 + k + (2 if all_rated else 3) * n_genres))
    x[:, 0] = rated
    x[:, 1] = value
    x[:, 2] = value * value
    x[np.flatnonzero(rated), 3 + rating_bins(rating, grid)[rated]] = 1.0
    if n_genres:
        genres = genre_matrix(mask, n_genres)
        g0 = 3 + k
        x[:, g0:g0 + n_genres] = genres
        if not all_rated:
            x[:, g0 + n_genres:g0 + 2 * n_genres] = genres * rated[:, None]
        x[:, -n_genres:] = genres * value[:, None]
    return x, all_rated


def _sufficient(sums: np.ndarray, all_rated: bool, n_events, first, last, k: int, g: int) -> "Sufficient":
    g0 = 3 + k
    genre_events = sums[:, g0:g0 + g]
    return Sufficient(
        n_events=n_events,
        n_rated=sums[:, 0],
        rating_sum=sums[:, 1],
        rating_sumsq=sums[:, 2],
        first_ts=first,
        last_ts=last,
        hist=sums[:, 3:g0],
        genre_events=genre_events,
        genre_rated=genre_events if all_rated else sums[:, g0 + g:g0 + 2 * g],
        genre_sum=sums[:, sums.shape[1] - g:],
    )


def prefix_sufficient(
    codes: np.ndarray, ts: np.ndarray, rating: np.ndarray, grid: np.ndarray, mask: np.ndarray, n_genres: int
) -> Sufficient:
    """Per event: sufficient statistics of the same entity's events with a smaller timestamp.

    Args:
        codes: [n] entity codes, sorted ascending (the events of an entity are contiguous).
        ts: [n] int64 microseconds, ascending within each entity.
        rating: [n] float64, NaN for an event without a rating.
        grid: [K] sorted rating values of the histogram.
        mask: [n] int64 affinity bit mask of the event's item (zeros without affinity).
        n_genres: G, the number of affinity values.
    """
    n = len(codes)
    index = np.arange(n)
    new_entity = np.ones(n, dtype=bool)
    new_entity[1:] = codes[1:] != codes[:-1]
    new_instant = new_entity.copy()
    new_instant[1:] |= ts[1:] != ts[:-1]
    entity_start = np.maximum.accumulate(np.where(new_entity, index, 0))
    instant_start = np.maximum.accumulate(np.where(new_instant, index, 0))
    x, all_rated = _event_matrix(rating, grid, mask, n_genres)
    cum = np.zeros((n + 1, x.shape[1]))
    np.cumsum(x, axis=0, out=cum[1:])
    before = cum[instant_start] - cum[entity_start]
    has_prior = instant_start > entity_start
    ts_f = ts.astype(np.float64)
    return _sufficient(
        before,
        all_rated,
        n_events=instant_start - entity_start,
        first=np.where(has_prior, ts_f[entity_start], np.nan),
        last=np.where(has_prior, ts_f[np.maximum(instant_start - 1, 0)], np.nan),
        k=len(grid),
        g=n_genres,
    )


def leave_one_out_sufficient(
    codes: np.ndarray, ts: np.ndarray, rating: np.ndarray, grid: np.ndarray, mask: np.ndarray, n_genres: int
) -> Sufficient:
    """Per event: sufficient statistics of all the same entity's events except the event itself.

    Args: as ``prefix_sufficient`` (events of an entity contiguous, ``ts``
    ascending within each entity).
    """
    n = len(codes)
    index = np.arange(n)
    new_entity = np.ones(n, dtype=bool)
    new_entity[1:] = codes[1:] != codes[:-1]
    starts = np.flatnonzero(new_entity)
    sizes = np.diff(np.append(starts, n))
    start = np.repeat(starts, sizes)
    end = start + np.repeat(sizes, sizes)             # one past the entity's last event
    x, all_rated = _event_matrix(rating, grid, mask, n_genres)
    others = (np.repeat(np.add.reduceat(x, starts, axis=0), sizes, axis=0) - x) if n else x
    ts_f = ts.astype(np.float64)
    alone = end - start == 1
    first = np.where(index == start, ts_f[np.minimum(start + 1, n - 1)], ts_f[start]) if n else ts_f
    last = np.where(index == end - 1, ts_f[np.maximum(end - 2, 0)], ts_f[end - 1]) if n else ts_f
    return _sufficient(
        others,
        all_rated,
        n_events=end - start - 1,
        first=np.where(alone, np.nan, first),
        last=np.where(alone, np.nan, last),
        k=len(grid),
        g=n_genres,
    )


def total_sufficient(
    codes: np.ndarray, ts: np.ndarray, rating: np.ndarray, grid: np.ndarray, mask: np.ndarray, n_genres: int
) -> tuple[np.ndarray, Sufficient]:
    """Per entity: sufficient statistics of all its events.

    Args: as ``prefix_sufficient`` (``ts`` need not be sorted).

    Returns:
        (starts, stats): the index of each entity's first event and its statistics.
    """
    n = len(codes)
    new_entity = np.ones(n, dtype=bool)
    new_entity[1:] = codes[1:] != codes[:-1]
    starts = np.flatnonzero(new_entity)
    x, all_rated = _event_matrix(rating, grid, mask, n_genres)
    ts_f = ts.astype(np.float64)
    if not n:
        return starts, _sufficient(x, all_rated, np.zeros(0, dtype=np.int64), ts_f, ts_f, len(grid), n_genres)
    return starts, _sufficient(
        np.add.reduceat(x, starts, axis=0),
        all_rated,
        n_events=np.diff(np.append(starts, n)),
        first=np.minimum.reduceat(ts_f, starts),
        last=np.maximum.reduceat(ts_f, starts),
        k=len(grid),
        g=n_genres,
    )


def sufficient_record(k: int, g: int) -> np.dtype:
    """One entity's sufficient statistics as a packed record (K grid bins, G affinity values), all float64."""
    scalars = ("n_events", "n_rated", "rating_sum", "rating_sumsq", "first_ts", "last_ts")
    return np.dtype([(name, "<f8") for name in scalars] + [("hist", "<f8", (k,))]
                    + [(name, "<f8", (g,)) for name in ("genre_events", "genre_rated", "genre_sum")])


def pack_sufficient(suff: Sufficient, record: np.dtype) -> np.ndarray:
    """Per-row sufficient statistics -> [n] structured array of ``record`` (``sufficient_record``)."""
    out = np.empty(len(suff.n_events), dtype=record)
    for name in record.names:
        out[name] = getattr(suff, name)
    return out


def combine_sufficient(codes: np.ndarray, parts: np.ndarray) -> tuple[np.ndarray, Sufficient]:
    """Per entity: the sufficient statistics of the union of its parts (disjoint sets of its events).

    Args:
        codes: [n] entity codes, sorted ascending.
        parts: [n] structured array of ``sufficient_record`` (each part has >= 1 event).

    Returns:
        (starts, stats) as ``total_sufficient``: the index of each entity's first part and its statistics.
    """
    n = len(codes)
    new_entity = np.ones(n, dtype=bool)
    new_entity[1:] = codes[1:] != codes[:-1]
    starts = np.flatnonzero(new_entity)
    if not n:
        return starts, Sufficient(**{name: parts[name] for name in parts.dtype.names})
    total = {name: np.add.reduceat(parts[name], starts, axis=0) for name in parts.dtype.names}
    total["first_ts"] = np.minimum.reduceat(parts["first_ts"], starts)
    total["last_ts"] = np.maximum.reduceat(parts["last_ts"], starts)
    return starts, Sufficient(**total)


def statistics(suff: Sufficient, ref_ts: np.ndarray | float, layout: StatLayout) -> dict[str, np.ndarray]:
    """Raw statistics (float64, NaN where undefined) from sufficient statistics.

    Args:
        suff: per-row sufficient statistics.
        ref_ts: [n] or scalar microseconds the "days since" count from.
        layout: which statistics.

    Returns:
        {name: [n] float64} for every name of ``layout.names()``: count of
        events; mean, population std and quantiles of the ratings; days since
        the first and the last event; per affinity value the share of events
        and the mean rating.
    """
    s = layout.side
    n_rated = suff.n_rated.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_rated > 0, suff.rating_sum / n_rated, np.nan)
        var = np.where(n_rated > 0, suff.rating_sumsq / n_rated - mean * mean, np.nan)
        out = {
            f"{s}_rating_count": suff.n_events.astype(np.float64),
            f"{s}_rating_mean": mean,
            f"{s}_rating_std": np.sqrt(np.maximum(var, 0.0)),
        }
        grid = np.asarray(layout.grid, dtype=np.float64)
        cum = np.cumsum(suff.hist, axis=1)
        for q in layout.quantiles:
            reached = cum >= (q * n_rated - _EPS)[:, None]
            first = np.argmax(reached, axis=1)
            out[f"{s}_rating_{quantile_name(q)}"] = np.where(n_rated > 0, grid[first], np.nan)
        out[f"{s}_days_since_first"] = (ref_ts - suff.first_ts) / DAY_US
        out[f"{s}_days_since_last"] = (ref_ts - suff.last_ts) / DAY_US
        events = suff.n_events.astype(np.float64)[:, None]
        shares = np.where(events > 0, suff.genre_events / events, np.nan)
        means = np.where(suff.genre_rated > 0, suff.genre_sum / suff.genre_rated, np.nan)
    for g, name in enumerate(layout.affinity):
        out[f"{s}_genre_share_{name}"] = shares[:, g]
        out[f"{s}_genre_mean_{name}"] = means[:, g]
    return out


def transform(name: str, values: np.ndarray) -> np.ndarray:
    """The fixed transform before imputation and scaling: log1p for counts, identity otherwise."""
    return np.log1p(values) if name.endswith("_rating_count") else values


def is_log_column(name: str) -> bool:
    return name.endswith("_rating_count")


def moments(values: np.ndarray) -> tuple[float, float, float]:
    """(n, mean, M2 = sum of squared deviations) of the non-NaN values."""
    x = values[~np.isnan(values)]
    if not len(x):
        return 0.0, 0.0, 0.0
    mean = float(x.mean())
    return float(len(x)), mean, float(((x - mean) ** 2).sum())


def combine_moments(a: tuple[float, float, float], b: tuple[float, float, float]) -> tuple[float, float, float]:
    """Moments of the union of two sets (Chan et al.'s parallel update)."""
    n = a[0] + b[0]
    if n == 0:
        return 0.0, 0.0, 0.0
    delta = b[1] - a[1]
    return n, a[1] + delta * b[0] / n, a[2] + b[2] + delta * delta * a[0] * b[0] / n


# -- iterative imputation ---------------------------------------------------------------------
def iterative_params(imputer) -> dict:
    """The fitted state of a scikit-learn IterativeImputer as plain lists (JSON-able).

    Only the linear estimators (BayesianRidge, the default) are supported;
    ``sample_posterior`` must be False and ``keep_empty_features`` True.
    """
    steps = []
    for triplet in imputer.imputation_sequence_:
        est = triplet.estimator
        steps.append(
            {
                "feature": int(triplet.feat_idx),
                "neighbors": [int(i) for i in triplet.neighbor_feat_idx],
                "coef": [float(c) for c in est.coef_],
                "intercept": float(est.intercept_),
            }
        )
    low = np.broadcast_to(imputer._min_value, (len(imputer.initial_imputer_.statistics_),))
    high = np.broadcast_to(imputer._max_value, (len(imputer.initial_imputer_.statistics_),))
    return {
        "initial": [float(v) for v in imputer.initial_imputer_.statistics_],
        "empty": [bool(v) for v in imputer._is_empty_feature],
        "min": [float(v) for v in low],
        "max": [float(v) for v in high],
        "steps": steps,
    }


def iterative_transform(x: np.ndarray, params: Mapping) -> np.ndarray:
    """Apply fitted IterativeImputer parameters to [n, d] (NaN = missing); the same result as its transform."""
    x = np.array(x, dtype=np.float64, copy=True)
    missing = np.isnan(x)
    initial = np.asarray(params["initial"], dtype=np.float64)
    x[missing] = np.broadcast_to(initial, x.shape)[missing]
    missing[:, np.asarray(params["empty"], dtype=bool)] = False
    low, high = np.asarray(params["min"]), np.asarray(params["max"])
    for step in params["steps"]:
        f = step["feature"]
        rows = missing[:, f]
        if not rows.any():
            continue
        pred = x[np.ix_(rows, step["neighbors"])] @ np.asarray(step["coef"]) + step["intercept"]
        x[rows, f] = np.clip(pred, low[f], high[f])
    return x


@dataclasses.dataclass
class Finalizer:
    """Imputes and standardises the continuous columns of one side (fitted on training entities).

    Attributes:
        names: the side's continuous columns in model-spec order.
        impute: [d] imputation values (in transformed space).
        mean, std: [d] standardisation statistics (in transformed space).
        iterative: fitted IterativeImputer parameters over ``names``, or None
            (univariate imputation with ``impute``).
    """

    names: list[str]
    impute: list[float]
    mean: list[float]
    std: list[float]
    iterative: dict | None = None

    def __call__(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{name: [n] raw values (NaN missing)} -> {name: [n] float32 imputed and standardised}."""
        if not self.names:
            return {}
        columns = [transform(n, np.asarray(raw[n], dtype=np.float64)) for n in self.names]
        if self.iterative is not None:
            x = iterative_transform(np.column_stack(columns), self.iterative)
            columns = [x[:, j] for j in range(len(self.names))]
        else:
            columns = [np.where(np.isnan(c), v, c) for c, v in zip(columns, self.impute)]
        return {
            name: ((c - mean) / std).astype(np.float32)
            for name, c, mean, std in zip(self.names, columns, self.mean, self.std)
        }


def safe_std(value: float | None) -> float:
    """A usable divisor: the std, or 1.0 when it is missing, NaN or ~0."""
    return float(value) if value is not None and not math.isnan(value) and value > 1e-12 else 1.0
