"""The kernels behind validate() and track_sequences(), each against a plain definition: dedup by record keys vs.
"first arrival of each key", published keys vs. set membership, group codes vs. numbering keys by first appearance,
the counting sort vs. numpy's stable sort, session bounds by day table vs. the bars' session calendar, first-seen
medians vs. polars' quantile, and the tracker on validate()'s arrays vs. the same rows as a frame in any order."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from k2_assets.bars.session import outside_session
from k2_assets.ticks.anomaly import FIRST_SEEN, first_seen_medians
from k2_assets.ticks.dedup import Keys
from k2_assets.ticks.kernels import dense_ids
from k2_assets.ticks.ordering import Grouped, dense_codes, group_codes, stable_group_order
from k2_assets.ticks.received import Received
from k2_assets.ticks.sequences import track_sequences
from k2_assets.ticks.sessions import outside_session_mask, trading_dates
from k2_assets.ticks.validate import validate
from k2_assets.ticks.warm import raw_rows

OPEN_US = 1_795_561_200_000_000  # 2026-11-24 23:00 UTC: the ASX open of trading date 2026-11-25
DAY_US = 86_400_000_000


def grouped_keys(rng: np.random.Generator, n: int, spread: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys grouped per symbol, sequences mostly ascending with repeats and late arrivals (arrival order)."""
    group = np.sort(rng.integers(0, 5, n))
    seq = np.cumsum(rng.integers(0, 3, n)) + rng.integers(-spread, spread + 1, n) * (rng.random(n) < 0.2)
    day = rng.integers(20_000, 20_002, n).astype(np.int32)
    return group, day, seq


def first_by_definition(group: np.ndarray, day: np.ndarray, seq: np.ndarray) -> list[bool]:
    seen: set[tuple[int, int, int]] = set()
    out = []
    for key in zip(group.tolist(), day.tolist(), seq.tolist(), strict=True):
        out.append(key not in seen)
        seen.add(key)
    return out


def test_first_occurrences_equal_the_first_arrival_of_each_key() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        group, day, seq = grouped_keys(rng, int(rng.integers(1, 200)), int(rng.integers(0, 20)))
        if rng.random() < 0.3:
            seq = seq + rng.choice([0, 2**62], len(seq))  # keys far apart
        keys = Keys(group, day, seq)
        assert keys.first_occurrences().tolist() == first_by_definition(group, day, seq)


def test_published_before_is_membership_in_the_seen_keys() -> None:
    rng = np.random.default_rng(8)
    for _ in range(200):
        group, day, seq = grouped_keys(rng, int(rng.integers(1, 150)), 5)
        if rng.random() < 0.3:
            seq = seq + rng.choice([0, 2**62], len(seq))
        pick = rng.random(len(seq)) < 0.3
        # Seen keys: some of the batch's, plus keys outside its bounds (another group, day, far sequences).
        seen = (
            np.concatenate([group[pick], [7, 0]]),
            np.concatenate([day[pick], [20_000, 19_000]]).astype(np.int32),
            np.concatenate([seq[pick], [seq[0], -(2**40)]]),
        )
        known = set(zip(*(a.tolist() for a in seen), strict=True))
        at = np.flatnonzero(rng.random(len(seq)) < 0.7)
        expected = [(int(group[i]), int(day[i]), int(seq[i])) in known for i in at]
        assert Keys(group, day, seq).published_before(at, seen).tolist() == expected


def test_dense_codes_renumber_in_id_order_with_nulls_last() -> None:
    codes, count = dense_codes(pl.Series([900, None, 5, 900, 70_000], dtype=pl.UInt32))
    assert (codes.tolist(), count) == ([1, 3, 0, 1, 2], 3)
    rows = Grouped.of(codes)
    assert rows.order.tolist() == [2, 0, 3, 4, 1]  # equal codes keep their input order
    assert rows.starts().tolist() == [True, True, False, True, True]


def test_first_seen_medians_equal_polars_nearest_quantile() -> None:
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 25, 40)
    group = np.repeat(np.arange(len(sizes)), sizes)
    price = rng.integers(1, 1_000, len(group))
    starts = np.ones(len(group), dtype=bool)
    starts[1:] = group[1:] != group[:-1]
    expected = (
        pl.DataFrame({"g": group, "p": price})
        .group_by("g", maintain_order=True)
        .agg(pl.col("p").head(FIRST_SEEN).quantile(0.5, interpolation="nearest").cast(pl.Int64))["p"]
    )
    assert first_seen_medians(price, starts).tolist() == expected.to_list()


def test_outside_session_by_day_table_equals_the_bar_calendar_over_many_days() -> None:
    # Ten days around a weekend, every hour of each: before the open, in the session, after the close, Saturday.
    rng = np.random.default_rng(2)
    ts = OPEN_US - 3 * DAY_US + rng.integers(0, 10 * DAY_US, 5_000)
    frame = pl.DataFrame({"exchange": ["ASX"] * len(ts), "exchange_ts": ts})
    frame = frame.with_columns(pl.Series([None] * 10 + [*ts[10:]], dtype=pl.Int64).alias("exchange_ts"))
    frame = frame.with_columns(trading_dates(frame))
    assert outside_session_mask(frame).to_list() == outside_session(frame).to_list()
    one_day = frame.filter(pl.col("trading_date") == dt.date(2026, 11, 25))
    assert outside_session_mask(one_day).to_list() == outside_session(one_day).to_list()


def received_rows(rng: np.random.Generator, n: int) -> pl.DataFrame:
    symbols = rng.choice(["BHP", "CBA", "CSL", "WES"], n)
    seq = np.zeros(n, dtype=np.int64)
    for name in ("BHP", "CBA", "CSL", "WES"):
        mine = symbols == name
        steps = rng.choice([1, 1, 1, 3, -2, -40], int(mine.sum()))  # gaps, late ticks, resets
        seq[mine] = np.maximum(np.cumsum(steps) + 50, 1)
    return pl.DataFrame(
        {
            "exchange": ["ASX"] * n,
            "symbol": symbols,
            "sequence": seq,
            "exchange_ts": OPEN_US + np.arange(n) * 1_000,
            "trading_date": [dt.date(2026, 11, 25)] * n,
            "price": rng.integers(1, 100, n) * 1_000_000,
            "valid": rng.random(n) > 0.1,
            "arrival": np.arange(n),
        }
    )


def test_sequence_tracking_does_not_depend_on_how_the_rows_are_ordered() -> None:
    # validate() hands the tracker rows grouped per symbol; any other caller's order must give the same answer.
    rng = np.random.default_rng(12)
    for _ in range(40):
        rows = received_rows(rng, int(rng.integers(1, 120)))
        grouped = rows.sort("symbol", "arrival", maintain_order=True)
        shuffled = rows.sample(fraction=1.0, shuffle=True, seed=int(rng.integers(1_000)))
        results = [track_sequences(r, now_us=1, batch_id="b") for r in (rows, grouped, shuffled)]
        for result in results[1:]:
            assert result.opened.equals(results[0].opened)
            assert result.state.equals(results[0].state)
            assert result.late_arrivals == results[0].late_arrivals


def test_the_tracker_gives_the_same_answer_on_validates_arrays_as_on_the_same_rows_as_a_frame() -> None:
    rng = np.random.default_rng(21)
    for _ in range(20):
        rows = received_rows(rng, int(rng.integers(1, 150)))
        handed = Received.of_frame(rows)  # what validate() hands over: arrays grouped per symbol
        results = [track_sequences(r, now_us=1, batch_id="b") for r in (handed, handed.frame(), rows)]
        for result in results[1:]:
            assert result.opened.equals(results[0].opened)
            assert result.filled.equals(results[0].filled)
            assert result.state.equals(results[0].state)
            assert result.late_arrivals == results[0].late_arrivals


def test_validate_hands_the_tracker_rows_grouped_in_arrival_order() -> None:
    n = 12
    raw = raw_rows(
        ["CBA", "BHP"] * 6,
        [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6],
        [45_000_000, -1] * 6,  # every BHP row fails a rule: tracked, not valid
        [OPEN_US + i for i in range(n)],
    )
    received = validate(raw).received.frame()
    symbols = received["symbol"].to_list()
    assert symbols in (["BHP"] * 6 + ["CBA"] * 6, ["CBA"] * 6 + ["BHP"] * 6)  # grouped (in group-id order)
    by_symbol = {s: received.filter(pl.col("symbol") == s) for s in ("BHP", "CBA")}
    assert by_symbol["BHP"]["arrival"].to_list() == [1, 3, 5, 7, 9, 11]
    assert by_symbol["CBA"]["arrival"].to_list() == [0, 2, 4, 6, 8, 10]
    assert by_symbol["BHP"]["valid"].to_list() == [False] * 6
    assert by_symbol["CBA"]["valid"].to_list() == [True] * 6


def test_group_codes_number_keys_by_first_appearance_with_rows_without_a_key_last() -> None:
    rng = np.random.default_rng(31)
    for n, distinct in ((1, 1), (50, 3), (5_000, 700), (20_000, 9_000)):  # 9,000 keys: the table grows twice
        keys = pl.Series("k", rng.integers(0, distinct, n).astype(str)).scatter(rng.integers(0, n, n // 20), None)
        codes = group_codes(pl.DataFrame(keys), pl.col("k"))
        firsts = keys.drop_nulls().unique(maintain_order=True)
        expected = keys.replace_strict(firsts, pl.int_range(len(firsts), eager=True), default=len(firsts))
        assert codes.tolist() == expected.to_list()


def test_dense_ids_report_two_values_sharing_a_hash() -> None:
    hashes = np.array([7, 7, 9], dtype=np.int64)
    present = np.ones(3, dtype=bool)
    assert dense_ids(hashes, np.array([1, 1, 2], dtype=np.int64), present)[2]  # the same value twice: exact
    assert not dense_ids(hashes, np.array([1, 2, 3], dtype=np.int64), present)[2]  # two values, one hash


def test_group_order_is_a_stable_sort_of_the_codes() -> None:
    rng = np.random.default_rng(32)
    for n in (0, 1, 1_000):
        codes = rng.integers(0, 40, n)
        assert stable_group_order(codes).tolist() == np.argsort(codes, kind="stable").tolist()
