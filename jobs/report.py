"""The report of committed nights: one self-contained HTML file a person opens in a browser.

``write_report(warehouse, nights, out)`` reads the committed partitions of the
nights (through each night's commit record, ``jobs.commit``) with pyarrow and
pandas, draws the figures with matplotlib (no display needed) and writes one
HTML file whose images are embedded as base64 PNG, so it opens anywhere with
no other file beside it. Sections:

* metrics by model against the baselines (the ``scorer`` column of ``metrics``), latest night;
* the metrics over the nights (trend lines);
* the slices of the latest night (every ``slice`` value in the table);
* the distribution of the recommendation scores, per model, latest night;
* item exposure (``exposure``): how often each item is recommended, the
  exposure curve, catalogue coverage, exposure Gini and popularity bias;
* quarantined rows by reason over the nights.

Data a section needs and the warehouse lacks (no quarantine table, one night
only) gives a note in that section instead of a figure.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import io
from collections.abc import Sequence

import numpy as np
import pandas as pd

from jobs import commit
from jobs.evaluate.table import METRICS_TABLE_SCHEMA
from jobs.storage import Location

#: The ranking metrics drawn in the trend and baseline figures, in this order (when the table has them).
HEADLINE_METRICS = ("ndcg", "precision", "recall", "map", "mrr", "hit_rate")
#: The columns of the metrics table (``jobs.evaluate.table``).
METRIC_COLUMNS = tuple(part.split()[0] for part in METRICS_TABLE_SCHEMA.split(","))


class ReportError(ValueError):
    """The report cannot be made from the warehouse as it is (the message says what to pass instead)."""


# -- which nights --------------------------------------------------------------------------------------
def select_nights(warehouse: Location, *, ds: dt.date | None = None, start: dt.date | None = None,
                  end: dt.date | None = None) -> list[str]:
    """The committed nights to report: ``ds`` alone, those from ``start`` to ``end``, or every one.

    Raises:
        ReportError: the night (or every night of the range) is not committed; the message lists what is.
    """
    committed = commit.committed_nights(warehouse)
    known = ", ".join(committed) if committed else "none"
    where = warehouse.display()
    if not committed:
        raise ReportError(f"no committed night in {where}: run `nightrec nightly` or `nightrec backfill` first, "
                          "or pass the warehouse that holds the nights (--warehouse or the config's warehouse)")
    if ds is not None:
        if ds.isoformat() not in committed:
            raise ReportError(f"--ds {ds}: no committed night for that date in {where} (committed: {known})")
        return [ds.isoformat()]
    low = start.isoformat() if start else committed[0]
    high = end.isoformat() if end else committed[-1]
    if low > high:
        raise ReportError(f"--end {high} is before --start {low}")
    chosen = [day for day in committed if low <= day <= high]
    if not chosen:
        raise ReportError(f"--start {low} --end {high}: no committed night in that range in {where} "
                          f"(committed: {known})")
    return chosen


def night_partitions(warehouse: Location, ds: str) -> dict[str, Location]:
    """The committed partitions of night ``ds`` that are in place, by name (``metrics``,
    ``recommendations/two_tower``, ...); a partition removed since (a table dropped) is left out."""
    record = commit.commit_record(warehouse, ds)
    if record is None:
        raise ReportError(f"ds={ds}: no commit record in {warehouse.display()}")
    found = {"/".join([p["table"], *p["keys"].values()]): warehouse / p["path"] for p in record["partitions"]}
    return {name: loc for name, loc in found.items() if loc.exists()}


def _frame(location: Location, columns: Sequence[str]) -> pd.DataFrame:
    """The ``columns`` of a partition's Parquet files (none there, e.g. an empty quarantine: no rows)."""
    if not location.files(".parquet"):
        return pd.DataFrame(columns=list(columns))
    dataset = location.parquet_dataset()
    return dataset.to_table(columns=[c for c in columns if c in dataset.schema.names]).to_pandas()


# -- the figures' numbers ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Exposure:
    """How often each item is recommended (the definitions of ``jobs.evaluate.beyond``).

    With C the catalogue (M items, recommended items outside it added), c_i the
    number of lists that hold item i and n_i its training events:

    Attributes:
        counts: c_i for every item of C, most exposed first (pandas Series indexed by item_id).
        coverage: #{i : c_i > 0} / M.
        gini: exposure Gini, (2 sum_r r c_(r)) / (M sum c) - (M + 1) / M over the ascending c_(r).
        popularity_bias: mean over recommended slots of #{j in C : n_j < n_i} / (M - 1) (0 when M = 1).
        slots: recommended (user, item) slots counted.
    """

    counts: pd.Series
    coverage: float
    gini: float
    popularity_bias: float
    slots: int

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """The exposure curve: (share of items, most exposed first; cumulative share of slots), both in %."""
        c = self.counts.to_numpy(np.float64)
        items = np.arange(0, c.size + 1) / max(c.size, 1) * 100.0
        slots = np.concatenate([[0.0], np.cumsum(c)]) / max(c.sum(), 1.0) * 100.0
        return items, slots


def exposure(recs: pd.DataFrame, *, catalogue: pd.Series, train_items: pd.Series) -> Exposure:
    """The exposure of the items in recommendation lists.

    Args:
        recs: the lists, DataFrame[user_id, item_id, ...] (already cut at K).
        catalogue: the catalogue's item ids.
        train_items: the item id of every training event (the popularity counts n_i).
    """
    items = pd.Index(pd.unique(pd.concat([pd.Series(catalogue), recs["item_id"]], ignore_index=True)))
    lists = recs.drop_duplicates(["user_id", "item_id"])["item_id"].value_counts()
    counts = lists.reindex(items, fill_value=0).astype(np.int64)
    m = len(items)
    total = int(counts.sum())
    ascending = np.sort(counts.to_numpy(np.float64))
    gini = float(2.0 * np.sum(np.arange(1, m + 1) * ascending) / (m * total) - (m + 1) / m) if total else 0.0
    n = pd.Series(train_items).value_counts().reindex(items, fill_value=0).to_numpy()
    below = np.searchsorted(np.sort(n), n, side="left")  # #{j : n_j < n_i}
    pct = pd.Series(below / (m - 1) if m > 1 else np.zeros(m), index=items)
    bias = float(pct.loc[recs["item_id"]].mean()) if len(recs) else 0.0
    ordered = counts.sort_values(ascending=False, kind="stable")
    return Exposure(ordered, float((counts > 0).sum() / m) if m else 0.0, gini, bias, int(len(recs)))


# -- drawing -------------------------------------------------------------------------------------------
def _png(fig) -> str:
    """The figure as a base64 PNG (a ``matplotlib.figure.Figure``: no pyplot, no display)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float = 8.0, height: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _label(frame: pd.DataFrame) -> pd.Series:
    """``model / scorer`` ("two_tower / model", "two_tower / popularity")."""
    return frame["model"] + " / " + frame["scorer"]


def _ranking(metrics: pd.DataFrame) -> pd.DataFrame:
    ranked = metrics[metrics["k"].notna() & metrics["metric"].isin(HEADLINE_METRICS)]
    return ranked[ranked["k"] == ranked["k"].max()] if len(ranked) else ranked


def _ordered_metrics(frame: pd.DataFrame) -> list[str]:
    return [m for m in HEADLINE_METRICS if m in set(frame["metric"])]


def baseline_figure(latest: pd.DataFrame) -> str:
    """Grouped bars: each ranking metric at K of each model and scorer, slice ``all``."""
    frame = _ranking(latest[latest["slice"] == "all"])
    metrics, labels = _ordered_metrics(frame), sorted(set(_label(frame)))
    fig = _figure()
    ax = fig.subplots()
    width = 0.8 / max(len(labels), 1)
    for j, label in enumerate(labels):
        rows = frame[_label(frame) == label].set_index("metric")["value"]
        ax.bar(np.arange(len(metrics)) + j * width, [rows.get(m, np.nan) for m in metrics], width, label=label)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(labels) - 1) / 2, [f"{m}@{int(frame['k'].max())}"
                                                                            for m in metrics])
    ax.set_xlabel("metric (at the cut-off K)")
    ax.set_ylabel("value (fraction, 0-1)")
    ax.set_title("Holdout metrics by model and scorer (slice all)")
    ax.legend(fontsize="small")
    return _png(fig)


def trend_figure(metrics: pd.DataFrame) -> str:
    """One panel per ranking metric: its value over the nights, a line per model and scorer (slice ``all``)."""
    frame = _ranking(metrics[metrics["slice"] == "all"])
    names = _ordered_metrics(frame)[:4]
    fig = _figure(10.0, 3.2 * ((len(names) + 1) // 2))
    axes = np.atleast_1d(fig.subplots((len(names) + 1) // 2, 2, squeeze=False)).ravel()
    nights = sorted(set(frame["ds"]))
    position = {ds: i for i, ds in enumerate(nights)}
    step = max(1, len(nights) // 12)  # at most about a dozen date labels
    for ax, name in zip(axes, names):
        rows = frame[frame["metric"] == name]
        for label, line in rows.groupby(_label(rows)):
            line = line.sort_values("ds")
            ax.plot(line["ds"].map(position), line["value"], marker="o", label=label)
        ax.set_xticks(range(0, len(nights), step), nights[::step])
        ax.set_title(f"{name}@{int(frame['k'].max())}")
        ax.set_xlabel("night (ds)")
        ax.set_ylabel("value (fraction, 0-1)")
        ax.tick_params(axis="x", labelrotation=30)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return _png(fig)


def slice_figure(latest: pd.DataFrame, metric: str) -> str:
    """Horizontal bars: ``metric`` at K by slice, one bar per model and scorer, latest night."""
    frame = _ranking(latest)
    frame = frame[frame["metric"] == metric]
    slices, labels = sorted(set(frame["slice"])), sorted(set(_label(frame)))
    fig = _figure(8.0, 1.0 + 0.4 * len(slices) * max(len(labels), 1))
    ax = fig.subplots()
    height = 0.8 / max(len(labels), 1)
    for j, label in enumerate(labels):
        rows = frame[_label(frame) == label].set_index("slice")["value"]
        ax.barh(np.arange(len(slices)) + j * height, [rows.get(s, np.nan) for s in slices], height, label=label)
    ax.set_yticks(np.arange(len(slices)) + height * (len(labels) - 1) / 2, slices)
    ax.set_xlabel(f"{metric}@{int(frame['k'].max())} (fraction, 0-1)")
    ax.set_ylabel("slice")
    ax.set_title(f"{metric} by slice")
    ax.legend(fontsize="small")
    return _png(fig)


def score_figure(recs: dict[str, pd.DataFrame]) -> str:
    """Histograms of the published scores, one per model (their scales differ: one panel each)."""
    fig = _figure(5.0 * min(len(recs), 3), 3.5 * ((len(recs) + 2) // 3))
    axes = np.atleast_1d(fig.subplots((len(recs) + 2) // 3, min(len(recs), 3), squeeze=False)).ravel()
    for ax, (name, frame) in zip(axes, sorted(recs.items())):
        ax.hist(frame["score"].astype(np.float64), bins=40)
        ax.set_title(name)
        ax.set_xlabel("score (the model's own units)")
        ax.set_ylabel("recommendations (count)")
    for ax in axes[len(recs):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _png(fig)


def exposure_figure(exposures: dict[str, Exposure]) -> str:
    """Left: the exposure curve of each model; right: lists per item by exposure rank (log scale)."""
    fig = _figure(11.0, 4.0)
    left, right = fig.subplots(1, 2)
    for name, e in sorted(exposures.items()):
        items, slots = e.curve()
        left.plot(items, slots, label=name)
        right.plot(np.arange(1, len(e.counts) + 1), e.counts.to_numpy(), label=name)
    left.plot([0, 100], [0, 100], linestyle="--", color="grey", label="equal exposure")
    left.set_xlabel("items, most recommended first (% of catalogue)")
    left.set_ylabel("recommendation slots (cumulative %)")
    left.set_title("Exposure curve")
    left.legend(fontsize="small")
    right.set_yscale("symlog")
    right.set_xlabel("item rank by exposure (1 = most recommended)")
    right.set_ylabel("lists holding the item (count)")
    right.set_title("Lists per item")
    fig.tight_layout()
    return _png(fig)


def quarantine_figure(counts: pd.DataFrame) -> str:
    """Stacked bars: quarantined rows per night by ``table: reason``."""
    wide = counts.pivot_table(index="ds", columns="reason", values="rows", aggfunc="sum", fill_value=0)
    fig = _figure()
    ax = fig.subplots()
    bottom = np.zeros(len(wide))
    for reason in wide.columns:
        ax.bar(wide.index, wide[reason], bottom=bottom, label=reason)
        bottom += wide[reason].to_numpy()
    ax.set_xlabel("night (ds)")
    ax.set_ylabel("rows quarantined (count)")
    ax.set_title("Quarantined rows by reason")
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize="small")
    return _png(fig)


# -- the page -------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Page:
    parts: list[str] = dataclasses.field(default_factory=list)

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def image(self, png: str, alt: str) -> None:
        self.parts.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png}">')

    def table(self, frame: pd.DataFrame) -> None:
        self.parts.append(frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0))


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 8px;border-bottom:1px solid #ddd;"
          "text-align:right}img{max-width:100%;display:block;margin:.5em 0}.note{color:#8a5a00}")


def render_report(warehouse: Location, nights: Sequence[str]) -> str:
    """The report of ``nights`` (committed, oldest first) as one self-contained HTML document."""
    if not nights:
        raise ReportError("no night to report: pass --ds or a --start/--end range with committed nights")
    parts = {ds: night_partitions(warehouse, ds) for ds in nights}
    latest = nights[-1]
    page = _Page()
    page.text(f"Warehouse {warehouse.display()}; nights {nights[0]} to {latest} ({len(nights)} committed); "
              f"the figures of one night are of the latest, {latest}.")
    metrics = pd.concat([_frame(p["metrics"], METRIC_COLUMNS).assign(ds=ds) for ds, p in parts.items() if "metrics" in p],
                        ignore_index=True) if any("metrics" in p for p in parts.values()) else None
    _metrics_sections(page, metrics, latest)
    recs = {name.split("/", 1)[1]: _frame(loc, ["user_id", "rank", "item_id", "score"])
            for name, loc in parts[latest].items() if name.startswith("recommendations/")}
    _recommendation_sections(page, parts[latest], recs)
    _quarantine_section(page, parts)
    body = "\n".join(page.parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>nightrec report {latest}'
            f"</title><style>{_STYLE}</style></head><body><h1>nightrec report: {html.escape(nights[0])} to "
            f"{html.escape(latest)}</h1>\n{body}\n</body></html>\n")


def _metrics_sections(page: _Page, metrics: pd.DataFrame | None, latest: str) -> None:
    page.heading("Metrics by model against the baselines")
    if metrics is None or metrics.empty:
        page.note("No metrics table in these nights: nothing to compare.")
        return
    night = metrics[metrics["ds"] == latest]
    ranked = _ranking(night[night["slice"] == "all"])
    if ranked.empty:
        page.note(f"ds={latest}: the metrics table has no ranking metrics in slice all.")
    else:
        page.text("scorer 'model' is the model itself; the other scorers are baselines evaluated on the same "
                  "holdout. Users: the holdout users each figure is over.")
        page.image(baseline_figure(night), "holdout metrics by model and scorer")
        table = ranked.pivot_table(index=["model", "scorer", "users"], columns="metric", values="value")
        page.table(table[_ordered_metrics(ranked)].rename_axis(columns=None).reset_index())
    other = night[night["k"].isna()]
    if len(other):
        page.text("Metrics without a cut-off (rating and click metrics; users = held-out rows):")
        page.table(other[["model", "scorer", "slice", "metric", "value", "users"]])

    page.heading("Metrics over the nights")
    if metrics["ds"].nunique() < 2:
        page.note(f"One night only ({latest}): a trend needs two nights or more (pass a --start/--end range).")
    else:
        page.image(trend_figure(metrics), "metrics over the nights")

    page.heading("Slices")
    slices = sorted(set(night["slice"]))
    if slices == ["all"]:
        page.note("The metrics table has only the slice 'all' (every holdout user) for this night.")
    ranked = _ranking(night)
    if ranked.empty:
        return
    metric = "ndcg" if "ndcg" in set(ranked["metric"]) else _ordered_metrics(ranked)[0]
    page.image(slice_figure(night, metric), f"{metric} by slice")
    page.table(ranked[ranked["metric"] == metric][["model", "scorer", "slice", "k", "value", "users"]])


def _recommendation_sections(page: _Page, latest: dict[str, Location], recs: dict[str, pd.DataFrame]) -> None:
    page.heading("Score distributions")
    if not recs:
        page.note("No recommendations table in the latest night.")
        return
    page.image(score_figure(recs), "score distributions")

    page.heading("Item exposure")
    if "item_features" not in latest or "training_examples" not in latest:
        page.note("The night has no item_features or training_examples table: the catalogue and the popularity "
                  "counts exposure is measured against are missing.")
        return
    catalogue = _frame(latest["item_features"], ["item_id"])["item_id"]
    train_items = _frame(latest["training_examples"], ["item_id"])["item_id"]
    exposures = {name: exposure(frame, catalogue=catalogue, train_items=train_items) for name, frame in recs.items()}
    page.text("Coverage: share of the catalogue recommended to anyone. Exposure Gini: 0 when every item is in "
              "as many lists, near 1 when a few items fill them. Popularity bias: mean popularity percentile "
              "(by training events) of the recommended items, 0 the least and 1 the most popular.")
    page.image(exposure_figure(exposures), "item exposure")
    page.table(pd.DataFrame([{"model": name, "recommendations": e.slots, "catalogue items": len(e.counts),
                              "items recommended": int((e.counts > 0).sum()), "coverage": e.coverage,
                              "exposure gini": e.gini, "popularity bias": e.popularity_bias}
                             for name, e in sorted(exposures.items())]))


def quarantine_counts(parts: dict[str, dict[str, Location]]) -> pd.DataFrame | None:
    """Quarantined rows per night and ``table: reason``: DataFrame[ds, reason, rows]; None without any table."""
    frames = [_frame(p["quarantine"], ["table", "reason"]).assign(ds=ds) for ds, p in parts.items()
              if "quarantine" in p]
    if not frames:
        return None
    rows = pd.concat(frames, ignore_index=True)
    rows["reason"] = rows["table"].astype(str) + ": " + rows["reason"].astype(str)
    return rows.groupby(["ds", "reason"]).size().rename("rows").reset_index()


def _quarantine_section(page: _Page, parts: dict[str, dict[str, Location]]) -> None:
    page.heading("Quarantine")
    counts = quarantine_counts(parts)
    if counts is None:
        page.note("No quarantine table in these nights.")
        return
    if counts.empty:
        page.note(f"No row was quarantined in the {len(parts)} night(s).")
        return
    page.image(quarantine_figure(counts), "quarantined rows by reason")
    page.table(counts)


def write_report(warehouse: Location, nights: Sequence[str], out: Location) -> Location:
    """Render the report of ``nights`` (``select_nights``) and write it to ``out`` (any file system)."""
    out.write_text(render_report(warehouse, nights))
    return out
