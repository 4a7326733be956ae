from __future__ import annotations

import polars as pl

from k2_assets.ticks.validate import NEGATIVE_VOLUME, NON_POSITIVE_PRICE, UNDECODABLE, validate


def raw(**overrides: list[object]) -> pl.DataFrame:
    n = len(next(iter(overrides.values()))) if overrides else 4
    base: dict[str, list[object]] = {
        "kafka_topic": ["t"] * n,
        "kafka_partition": [0] * n,
        "kafka_offset": list(range(n)),
        "exchange": ["ASX"] * n,
        "symbol": ["BHP"] * n,
        "sequence": list(range(1, n + 1)),
        "exchange_ts": [1_000_000 * i for i in range(n)],
        "ingest_ts": [1_000_000 * i + 5 for i in range(n)],
        "price": [45_000_000] * n,
        "volume": [100] * n,
        "trade_id": [f"BHP-{i}" for i in range(n)],
        "side": ["BUY"] * n,
        "conditions": [[] for _ in range(n)],
        "decode_error": [None] * n,
        "raw_value": [None] * n,
    }
    base.update(overrides)
    return pl.DataFrame(
        base, schema_overrides={"conditions": pl.List(pl.String), "raw_value": pl.Binary, "decode_error": pl.String}
    )


def test_every_raw_row_lands_in_exactly_one_outcome() -> None:
    frame = raw(
        sequence=[1, 2, 2, 3, 4, 5],
        price=[45_000_000, 45_000_000, 45_000_000, 0, -5, 45_000_000],
        volume=[100, 100, 100, 100, -1, 100],
    )
    result = validate(frame)
    assert result.ticks["sequence"].to_list() == [1, 2, 5]
    assert result.duplicates["kafka_offset"].to_list() == [2]
    assert result.quarantine["kafka_offset"].to_list() == [3, 4]
    assert result.quarantine["reasons"].to_list() == [[NON_POSITIVE_PRICE], [NON_POSITIVE_PRICE, NEGATIVE_VOLUME]]
    offsets = (
        result.ticks["kafka_offset"].to_list()
        + result.duplicates["kafka_offset"].to_list()
        + result.quarantine["kafka_offset"].to_list()
    )
    assert sorted(offsets) == frame["kafka_offset"].to_list()


def test_derivative_symbols_may_trade_at_non_positive_prices() -> None:
    result = validate(raw(price=[0, -1_000_000, 5_000_000, 5_010_000]), derivative_symbols=frozenset({"BHP"}))
    assert result.quarantine.is_empty()


def test_undecodable_rows_keep_their_bytes_and_reason() -> None:
    frame = raw(
        exchange=["ASX", None],
        decode_error=[None, "bad_frame: magic byte is 7"],
        raw_value=[None, b"\x07junk"],
    )
    result = validate(frame)
    row = result.quarantine.row(0, named=True)
    assert row["reasons"] == [UNDECODABLE]
    assert row["raw_value"] == b"\x07junk"
    assert row["detail"].startswith("bad_frame")


def test_duplicates_are_found_whether_or_not_the_key_packs_into_64_bits() -> None:
    # Sequence numbers spanning more than 2**62 cannot share an int64 with the symbol code and date: the struct-hash
    # path must give the same answer as the packed one. Arrival order (offsets) decides which copy is kept.
    for sequences in ([5, 9, 5, 7, 9], [5, 2**62, 5, 7, 2**62]):
        frame = raw(
            kafka_offset=[4, 3, 2, 1, 0],  # arrival order is the reverse of the frame's row order
            sequence=sequences,
            exchange_ts=[1_000_000] * 5,
            price=[45_000_000] * 5,
        )
        result = validate(frame)
        assert sorted(result.duplicates["kafka_offset"].to_list()) == [3, 4], sequences
        assert sorted(result.ticks["kafka_offset"].to_list()) == [0, 1, 2]
