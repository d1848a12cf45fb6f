"""The statistics passes: Python workers over Arrow batches of events, broadcast once per side.

``SidePass`` holds what a worker needs for one side (the side's static table,
the items' static table, the statistics layout and, once fitted, the
imputation and scaling); its methods are the ``mapInArrow`` functions:

* ``partial_totals`` then ``totals``: every entity's statistics over all the
  events (the feature tables), added up per block before the shuffle;
* ``item_examples`` then ``user_examples``: the leakage-safe training
  examples, one per event (``jobs.features.examples``).

The NumPy kernels are in ``jobs.features.stats``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from jobs.features import stats
from jobs.features.encoding import MASK_COL
from jobs.features.state import FeatureState
from jobs.schema import EVENT_COLUMNS

# The totals' map side adds up blocks of about this many events per entity before the shuffle.
PARTIAL_BLOCK_ROWS = 4_000_000
#: The binary column the passes pack numbers into between shuffles.
PACKED_COL = "_packed"


def _ts_us(column: pa.ChunkedArray) -> np.ndarray:
    return pc.cast(column, pa.int64()).to_numpy()


def to_float64(column: pa.ChunkedArray) -> np.ndarray:
    return pc.cast(column, pa.float64()).to_numpy()


def _positions(values: pa.ChunkedArray, keys: pa.Array, what: str) -> np.ndarray:
    """Position of every value in ``keys`` (every value must be there)."""
    found = pc.index_in(values, value_set=keys)
    if found.null_count:
        raise ValueError(f"{what}: {found.null_count} events name an id missing from the side table")
    return found.to_numpy().astype(np.int64)


def _table(batches: Iterator[pa.RecordBatch]) -> pa.Table | None:
    batches = [b for b in batches if b.num_rows]
    return pa.Table.from_batches(batches) if batches else None


def _blocks(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """The batches regrouped into tables of at least ``rows`` rows (the last may be smaller; none empty)."""
    pending, n = [], 0
    for batch in batches:
        if batch.num_rows:
            pending.append(batch)
            n += batch.num_rows
        if n >= rows:
            yield pa.Table.from_batches(pending)
            pending, n = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def _binary(records: np.ndarray) -> pa.Array:
    """[n] structured array -> binary array of n values of ``records.dtype.itemsize`` bytes each."""
    size = records.dtype.itemsize
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(size), len(records), [None, pa.py_buffer(np.ascontiguousarray(records).tobytes())]
    ).cast(pa.binary())


def _nullable(values: np.ndarray) -> pa.Array:
    """float64 with NaN as null."""
    return pa.array(values, type=pa.float64(), from_pandas=True)


@dataclasses.dataclass(frozen=True)
class SidePass:
    """What a Python worker needs to compute one side's statistics (broadcast once).

    Attributes:
        side: "user" or "item".
        layout: the side's statistics.
        finalizer: imputation and scaling of the side's continuous columns (None while fitting).
        static: the side's static table (``side_static`` as Arrow).
        items: the items' static table (``side_static`` as Arrow, with the affinity masks).
        as_of_us: end of the window in microseconds.
        example_statistics: "leave_one_out" or "point_in_time" (the examples' statistics).
    """

    side: str
    layout: stats.StatLayout
    finalizer: stats.Finalizer | None
    static: pa.Table
    items: pa.Table
    as_of_us: int
    example_statistics: str = "leave_one_out"

    @property
    def key(self) -> str:
        return f"{self.side}_id"

    def static_columns(self, side: str | None = None) -> list[str]:
        """Static output columns of a side: the idx and the encoded categoricals (not the raw continuous)."""
        table = self.items if side == "item" else self.static
        key = f"{side or self.side}_id"
        return [c for c in table.column_names if c not in (key, MASK_COL) and table.schema.field(c).type != pa.float64()]

    def _sorted_events(self, table: pa.Table):
        """Events sorted by entity and time: (order, entity codes, ts us, rating, item positions)."""
        codes = _positions(table[self.key], self.static[self.key].combine_chunks(), self.side)
        ts = _ts_us(table["ts"])
        order = np.lexsort((ts, codes))
        items = _positions(table["item_id"], self.items["item_id"].combine_chunks(), "item")[order]
        return order, codes[order], ts[order], to_float64(table["rating"])[order], items

    def _masks(self, item_positions: np.ndarray) -> np.ndarray:
        if not self.layout.affinity:
            return np.zeros(len(item_positions), dtype=np.int64)
        return self.items[MASK_COL].to_numpy()[item_positions]

    def sufficient_record(self) -> np.dtype:
        return stats.sufficient_record(len(self.layout.grid), len(self.layout.affinity))

    def partial_totals(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Map side of the totals, on events in any order: ({side}_id, _packed) per entity of each block.

        _packed is the entity's sufficient statistics over the block's events
        (``sufficient_record``); blocks of ``PARTIAL_BLOCK_ROWS`` events bound the memory.
        """
        keys = self.static[self.key].combine_chunks()
        grid = np.asarray(self.layout.grid)
        record = self.sufficient_record()
        for table in _blocks(batches, PARTIAL_BLOCK_ROWS):
            codes = _positions(table[self.key], keys, self.side)
            order = np.argsort(codes, kind="stable")
            codes, ts, rating = codes[order], _ts_us(table["ts"])[order], to_float64(table["rating"])[order]
            mask = self._masks(_positions(table["item_id"], self.items["item_id"].combine_chunks(), "item")[order])
            for lo, hi in stats.chunks(codes, stats.CHUNK_ROWS):
                starts, suff = stats.total_sufficient(
                    codes[lo:hi], ts[lo:hi], rating[lo:hi], grid, mask[lo:hi], len(self.layout.affinity)
                )
                ids = keys.take(pa.array(codes[lo:hi][starts]))
                yield pa.RecordBatch.from_arrays([ids, _binary(stats.pack_sufficient(suff, record))],
                                                 names=[self.key, PACKED_COL])

    def totals(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Reduce side of the totals: per entity of the partition, {side}_id and its raw statistics.

        Input: ``partial_totals`` rows, partitioned by entity.
        """
        table = _table(batches)
        if table is None:
            return
        keys = self.static[self.key].combine_chunks()
        codes = _positions(table[self.key], keys, self.side)
        order = np.argsort(codes, kind="stable")
        codes, parts = codes[order], _unpack(table[PACKED_COL], self.sufficient_record())[order]
        names = self.layout.names()
        for lo, hi in stats.chunks(codes, stats.CHUNK_ROWS):
            starts, suff = stats.combine_sufficient(codes[lo:hi], parts[lo:hi])
            values = stats.statistics(suff, float(self.as_of_us), self.layout)
            ids = keys.take(pa.array(codes[lo:hi][starts]))
            yield pa.RecordBatch.from_arrays([ids] + [_nullable(values[n]) for n in names], names=[self.key] + names)

    def _continuous(self, codes: np.ndarray, ts: np.ndarray, rating: np.ndarray, items: np.ndarray, lo: int, hi: int):
        """Imputed, scaled continuous columns of events [lo, hi) (whole entities, sorted by time).

        Statistics of the entity's other events ("leave_one_out", counted to
        the end of the window) or of its strictly earlier ones ("point_in_time",
        counted to the event).
        """
        point_in_time = self.example_statistics == "point_in_time"
        sufficient = stats.prefix_sufficient if point_in_time else stats.leave_one_out_sufficient
        suff = sufficient(
            codes[lo:hi], ts[lo:hi], rating[lo:hi], np.asarray(self.layout.grid), self._masks(items[lo:hi]),
            len(self.layout.affinity),
        )
        raw = stats.statistics(suff, ts[lo:hi].astype(np.float64) if point_in_time else float(self.as_of_us), self.layout)
        declared = [n for n in self.finalizer.names if n in self.static.column_names]
        static = self.static.select(declared).take(pa.array(codes[lo:hi]))
        raw.update({n: to_float64(static[n]) for n in declared})
        return self.finalizer(raw)

    def packed_type(self) -> np.dtype:
        """The record the item pass packs per event: ts, rating and the item statistics."""
        return np.dtype([("ts", "<i8"), ("rating", "<f8"), ("stats", "<f4", (len(self.finalizer.names),))])

    def item_examples(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Item pass: (user_id, item_id, _packed) per event, _packed = ts, rating and the item statistics.

        Packing the numbers into one binary column makes the following
        shuffle by user several times cheaper than one column per statistic.
        """
        table = _table(batches)
        if table is None:
            return
        order, codes, ts, rating, items = self._sorted_events(table)
        table = table.select(["user_id", "item_id"]).take(pa.array(order))
        record = self.packed_type()
        for lo, hi in stats.chunks(codes, stats.CHUNK_ROWS):
            cont = self._continuous(codes, ts, rating, items, lo, hi)
            packed = np.empty(hi - lo, dtype=record)
            packed["ts"], packed["rating"] = ts[lo:hi], rating[lo:hi]
            for j, name in enumerate(self.finalizer.names):
                packed["stats"][:, j] = cont[name]
            yield pa.RecordBatch.from_arrays(
                [table["user_id"].slice(lo, hi - lo).combine_chunks(), table["item_id"].slice(lo, hi - lo).combine_chunks(),
                 _binary(packed)],
                names=["user_id", "item_id", PACKED_COL],
            )

    def user_examples(
        self, batches: Iterator[pa.RecordBatch], columns: Sequence[str], item_record: np.dtype, item_names: Sequence[str]
    ) -> Iterator[pa.RecordBatch]:
        """User pass over the item pass's output: the finished examples, sorted by user and time.

        Yields:
            Record batches of ``columns``: user_id, item_id, rating (float),
            ts, the user's static and continuous columns (from the user's other events)
            and the item's (looked up, and unpacked).
        """
        table = _table(batches)
        if table is None:
            return
        packed = _unpack(table[PACKED_COL], item_record)
        codes = _positions(table["user_id"], self.static["user_id"].combine_chunks(), "user")
        order = np.lexsort((packed["ts"], codes))
        codes, packed = codes[order], packed[order]
        ts, rating = packed["ts"], packed["rating"]
        items = _positions(table["item_id"], self.items["item_id"].combine_chunks(), "item")[order]
        table = table.select(["user_id", "item_id"]).take(pa.array(order))
        user_static = [c for c in self.static_columns() if c in columns]
        item_static = [c for c in self.static_columns("item") if c in columns]
        for lo, hi in stats.chunks(codes, stats.CHUNK_ROWS):
            out = {
                "user_id": table["user_id"].slice(lo, hi - lo),
                "item_id": table["item_id"].slice(lo, hi - lo),
                "rating": pa.array(rating[lo:hi].astype(np.float32), from_pandas=True),
                "ts": pa.array(ts[lo:hi], type=pa.timestamp("us", tz="UTC")),
            }
            static = self.static.select(user_static).take(pa.array(codes[lo:hi]))
            out.update({c: static[c] for c in user_static})
            out.update({n: pa.array(v) for n, v in self._continuous(codes, ts, rating, items, lo, hi).items()})
            looked_up = self.items.select(item_static).take(pa.array(items[lo:hi]))
            out.update({c: looked_up[c] for c in item_static})
            out.update({n: pa.array(np.ascontiguousarray(packed["stats"][lo:hi, j])) for j, n in enumerate(item_names)})
            yield pa.Table.from_pydict({n: out[n] for n in columns}).combine_chunks().to_batches()[0]


def _unpack(column: pa.ChunkedArray, record: np.dtype) -> np.ndarray:
    """Binary values of ``record.itemsize`` bytes each -> a structured array of ``record``."""
    array = column.combine_chunks()
    offsets_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    offsets = np.frombuffer(array.buffers()[1], dtype=offsets_type)[array.offset:array.offset + len(array) + 1]
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    if len(data) != len(array) * record.itemsize:
        raise ValueError(f"packed item statistics: expected {record.itemsize} bytes per row")
    return data.view(record)


def struct_type(fields: Sequence[T.StructField]) -> T.StructType:
    return T.StructType(list(fields))


def n_partitions(spark: SparkSession, rows: int, rows_per_partition: int) -> int:
    """Partitions of a pass over ``rows`` events: the default parallelism, or more to keep each under the limit."""
    return max(spark.sparkContext.defaultParallelism, math.ceil(rows / max(1, rows_per_partition)))


def static_arrow(user_static: DataFrame | None, item_static: DataFrame) -> dict[str, pa.Table]:
    """The static tables collected to the driver (Arrow): "item" and, with ``user_static``, "user"."""
    items = item_static.toArrow()
    return {"item": items} if user_static is None else {"user": user_static.toArrow(), "item": items}


def side_passes(
    spark: SparkSession, state: FeatureState, statics: Mapping[str, pa.Table], fitted: bool
) -> dict[str, tuple[Any, SidePass]]:
    """The broadcast ``SidePass`` of each side of ``statics``: "user"/"item" -> (broadcast, the pass)."""
    out = {}
    for side, static in statics.items():
        side_pass = SidePass(
            side=side,
            layout=state.layout(side),
            finalizer=state.finalizer(side) if fitted else None,
            static=static,
            items=statics["item"],
            as_of_us=state.as_of_us(),
            example_statistics=state.example_statistics,
        )
        out[side] = (spark.sparkContext.broadcast(side_pass), side_pass)
    return out


def entity_totals(
    events: DataFrame, bc, side_pass: SidePass, static: DataFrame, partitions: int, n_events: int,
    pre_aggregate: bool | None = None,
) -> DataFrame:
    """DataFrame[{side}_id, raw statistics (double, null where undefined)] over ``events``.

    Each block of events is first added up per entity
    (``SidePass.partial_totals``), then the partial sums of an entity are
    combined (``SidePass.totals``). With ``pre_aggregate`` (default: when
    the partial sums are expected to be fewer than half the events) the
    blocks are the input partitions' and only the partial sums are shuffled
    by entity; without it the events are shuffled.
    """
    key_field = static.schema[side_pass.key]
    partial = struct_type([key_field, T.StructField(PACKED_COL, T.BinaryType())])
    schema = struct_type([key_field] + [T.StructField(n, T.DoubleType()) for n in side_pass.layout.names()])
    events = events.select(*EVENT_COLUMNS)
    if pre_aggregate is None:
        blocks = events.rdd.getNumPartitions() + n_events // PARTIAL_BLOCK_ROWS
        pre_aggregate = side_pass.static.num_rows * blocks <= n_events // 2
    to_partial = lambda batches: bc.value.partial_totals(batches)  # noqa: E731
    if pre_aggregate:
        parts = events.mapInArrow(to_partial, partial).repartition(partitions, side_pass.key)
    else:
        parts = events.repartition(partitions, side_pass.key).mapInArrow(to_partial, partial)
    return parts.mapInArrow(lambda batches: bc.value.totals(batches), schema)


def with_totals(static: DataFrame, totals: DataFrame, side: str) -> DataFrame:
    """Every entity of ``static`` with its statistics; an entity without events has count 0."""
    return static.join(totals, on=f"{side}_id", how="left").fillna(0.0, subset=[f"{side}_rating_count"])


def finalize_entities(frame: DataFrame, state: FeatureState, side: str, static: DataFrame) -> DataFrame:
    """Impute and scale the continuous columns of entity rows; drop the raw ones.

    Returns:
        DataFrame[{side}_id, {side}_idx, categoricals, continuous float].
    """
    finalizer = state.finalizer(side)
    keep = [c for c in static.columns if c not in set(finalizer.names) | {MASK_COL}]
    fields = [static.schema[c] for c in keep] + [T.StructField(n, T.FloatType()) for n in finalizer.names]

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            raw = {n: to_float64(pa.chunked_array([batch.column(n)])) for n in finalizer.names}
            cont = finalizer(raw)
            arrays = [batch.column(c) for c in keep] + [pa.array(cont[n]) for n in finalizer.names]
            yield pa.RecordBatch.from_arrays(arrays, names=keep + finalizer.names)

    return frame.select(*keep, *finalizer.names).mapInArrow(run, struct_type(fields))

