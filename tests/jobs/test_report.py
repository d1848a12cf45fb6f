"""The numbers the report states, against pandas references worked out by hand on tiny frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jobs.report import exposure

# Three users' lists over a catalogue of items 1..5 (item 6 is recommended but not in the catalogue).
RECS = pd.DataFrame({"user_id": [1, 1, 2, 2, 3, 3], "item_id": [1, 2, 1, 3, 1, 6],
                     "rank": [1, 2, 1, 2, 1, 2]})
CATALOGUE = pd.Series([1, 2, 3, 4, 5])
# Training events: item 1 x4, item 2 x2, item 3 x1, items 4, 5, 6: none.
TRAIN_ITEMS = pd.Series([1, 1, 1, 1, 2, 2, 3])


def test_exposure_counts_coverage_gini_and_popularity_bias_match_a_hand_worked_example():
    e = exposure(RECS, catalogue=CATALOGUE, train_items=TRAIN_ITEMS)
    # C = {1..6} (6 added): M = 6; lists per item c = 1:3, 2:1, 3:1, 6:1, 4:0, 5:0
    assert e.counts.to_dict() == {1: 3, 2: 1, 3: 1, 6: 1, 4: 0, 5: 0}
    assert list(e.counts.index[:1]) == [1]
    assert e.coverage == pytest.approx(4 / 6)
    # ascending c = 0,0,1,1,1,3; sum r*c = 3+4+5+18 = 30; gini = 2*30/(6*6) - 7/6 = 60/36 - 42/36 = 0.5
    assert e.gini == pytest.approx(0.5)
    # n = 1:4, 2:2, 3:1, 4..6:0 -> #{j: n_j < n_i} / 5: item1 5/5, item2 4/5, item3 3/5, item6 0
    # slots: 1,2,1,3,1,6 -> (1 + .8 + 1 + .6 + 1 + 0) / 6
    assert e.popularity_bias == pytest.approx((1 + 0.8 + 1 + 0.6 + 1 + 0) / 6)
    assert e.slots == 6


def test_the_exposure_curve_is_the_cumulative_share_of_slots_most_exposed_items_first():
    items, slots = exposure(RECS, catalogue=CATALOGUE, train_items=TRAIN_ITEMS).curve()
    np.testing.assert_allclose(items, np.arange(7) / 6 * 100)
    np.testing.assert_allclose(slots, np.array([0, 3, 4, 5, 6, 6, 6]) / 6 * 100)


def test_equal_exposure_has_gini_zero_and_one_item_everywhere_the_maximum():
    even = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [1, 2, 3]})
    assert exposure(even, catalogue=pd.Series([1, 2, 3]), train_items=pd.Series([1])).gini == pytest.approx(0.0)
    one = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [1, 1, 1]})
    e = exposure(one, catalogue=pd.Series([1, 2, 3]), train_items=pd.Series([1]))
    assert e.gini == pytest.approx(2 / 3) and e.coverage == pytest.approx(1 / 3)


def test_quarantine_counts_by_night_and_reason_and_their_figure(tmp_path):
    import base64

    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.report import quarantine_counts, quarantine_figure
    from jobs.storage import Location

    parts = {}
    for ds, rows in (("2024-03-31", [("interactions", "null_user_id"), ("interactions", "null_user_id"),
                                     ("items", "duplicate")]),
                     ("2024-04-01", [("interactions", "future_ts")])):
        folder = tmp_path / f"quarantine/ds={ds}"
        folder.mkdir(parents=True)
        table, reason = zip(*rows)
        pq.write_table(pa.table({"table": list(table), "reason": list(reason), "raw": ["x"] * len(rows)}),
                       folder / "part-0.parquet")
        parts[ds] = {"quarantine": Location(str(folder))}
    parts["2024-04-02"] = {}  # a night without the table
    counts = quarantine_counts(parts)
    expected = pd.DataFrame({"ds": ["2024-03-31", "2024-03-31", "2024-04-01"],
                             "reason": ["interactions: null_user_id", "items: duplicate", "interactions: future_ts"],
                             "rows": [2, 1, 1]})
    pd.testing.assert_frame_equal(counts.sort_values(["ds", "reason"]).reset_index(drop=True),
                                  expected.sort_values(["ds", "reason"]).reset_index(drop=True))
    assert base64.b64decode(quarantine_figure(counts)).startswith(b"\x89PNG\r\n\x1a\n")
    assert quarantine_counts({"2024-04-02": {}}) is None
