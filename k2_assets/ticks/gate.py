"""The quality gate of validated_ticks: the GE suites `ticks` (the rows of the staged batch) and `ticks_batch`
(the batch's accounting and quarantine rate), with the derived columns and parameters they need."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from k2_assets.ticks.ordering import grouped_time_order
from k2_assets.ticks.sessions import trading_dates
from k2_resources.exchanges import EXCHANGES, calendar

if TYPE_CHECKING:
    import pandas as pd

    from k2_assets.serving.dq_suites import ExpectationOutcome, SuiteOutcome

TICKS_SUITE = "ticks"
BATCH_SUITE = "ticks_batch"


@dataclass(frozen=True)
class GateConfig:
    quarantine_ceiling: float = 0.05
    session_grace_us: int = 15 * 60 * 1_000_000
    derivative_symbols: frozenset[str] = frozenset()
    docs_dir: Path | None = None
    # Return once the results are stored; the GE worker builds the Data Docs meanwhile (dq_worker.wait_docs).
    defer_docs: bool = False


@dataclass(frozen=True)
class BatchCounts:
    rows_in: int
    published: int  # rows validation passed (== rows staged when the branch holds exactly them)
    quarantined: int
    duplicates: int
    staged: int

    @property
    def quarantine_rate(self) -> float:
        return self.quarantined / self.rows_in if self.rows_in else 0.0


@dataclass(frozen=True)
class GateResult:
    suites: tuple[SuiteOutcome, ...]
    parameters: dict[str, object] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return all(s.success for s in self.suites)

    @property
    def expectations(self) -> tuple[ExpectationOutcome, ...]:
        return tuple(e for s in self.suites for e in s.expectations)

    @property
    def failed(self) -> tuple[ExpectationOutcome, ...]:
        return tuple(e for e in self.expectations if not e.success)

    @property
    def pass_rate(self) -> float:
        outcomes = self.expectations
        return sum(e.success for e in outcomes) / len(outcomes) if outcomes else 1.0

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.suites)

    @property
    def docs_index(self) -> Path | None:
        return next((s.docs_index for s in self.suites if s.docs_index is not None), None)


def session_window(days: Iterable[tuple[str, dt.date]], grace_us: int) -> tuple[int, int]:
    """From the earliest session open to the latest session close of these (exchange, trading date)s, widened by the
    grace (auctions), in UTC microseconds. A date that is no session of its exchange contributes nothing: ticks on
    it fall outside."""
    opens, closes = [], []
    for code, day in set(days):
        if code not in EXCHANGES:
            start = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp() * 1_000_000)
            opens.append(start - 14 * 3_600_000_000)
            closes.append(start + 38 * 3_600_000_000)
            continue
        cal = calendar(code)
        import pandas as pd

        session = pd.Timestamp(day)
        if not cal.is_session(session):
            continue
        opens.append(int(cal.session_open(session).value // 1000))
        closes.append(int(cal.session_close(session).value // 1000))
    if not opens:
        return 0, 0
    return min(opens) - grace_us, max(closes) + grace_us


def ticks_frame(rows: pl.DataFrame, derivative_symbols: frozenset[str]) -> pd.DataFrame:
    """The staged rows (integer space) as GE sees them: natural types (naive UTC datetimes, float prices for the
    range checks only) plus trading_date, is_derivative, sequence_step and exchange_ts_us. trade_id, ingest_ts and
    conditions are left out: the Iceberg schema types them, and GE pickles its input (list columns cost seconds)."""
    # Strings as categoricals: GE pickles its input, and a million Python strings cost it seconds. Their integer
    # codes also make the sort below ~10x cheaper than sorting the strings.
    frame = rows.select(
        pl.col("exchange").cast(pl.Categorical),
        pl.col("symbol").cast(pl.Categorical),
        "sequence",
        pl.from_epoch("exchange_ts", time_unit="us"),
        pl.col("exchange_ts").alias("exchange_ts_us"),
        (pl.col("price") / 1_000_000).alias("price"),
        "volume",
        pl.col("side").cast(pl.Categorical),
        trading_dates(rows),
        pl.col("symbol").is_in(list(derivative_symbols)).fill_null(False).alias("is_derivative"),
    )
    # The step is taken per (exchange, symbol, trading_date) in exchange-time order. Sorting by the codes puts each
    # (exchange, symbol) together (groups in no particular order, which the step does not need); the trading date
    # is a function of exchange_ts, so time order also orders the dates.
    codes = [pl.col("exchange").to_physical(), pl.col("symbol").to_physical()]
    group = pl.col("symbol").to_physical().cast(pl.Int64)
    if frame["exchange"].n_unique() > 1:
        group = pl.concat_str(["exchange", "symbol"], separator="\x1f").cast(pl.Categorical).to_physical()
    frame = frame[grouped_time_order(frame, group, "exchange_ts_us", "sequence")]
    same_group = pl.all_horizontal([c == c.shift(1) for c in [*codes, pl.col("trading_date")]])
    step = pl.when(same_group).then(pl.col("sequence") - pl.col("sequence").shift(1))
    frame = frame.with_columns(step.alias("sequence_step"))
    return frame.to_pandas()


def batch_frame(counts: BatchCounts) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(
        {
            "rows_in": [counts.rows_in],
            "rows_accounted": [counts.published + counts.quarantined + counts.duplicates],
            "rows_validated": [counts.published],
            "rows_staged": [counts.staged],
            "quarantine_rate": [counts.quarantine_rate],
        }
    )


def prewarm_gate(config: GateConfig) -> None:
    """Get both suites' GE checkpoints built in the background (see dq_suites.prewarm)."""
    from k2_assets.serving.dq_suites import prewarm

    prewarm((TICKS_SUITE, BATCH_SUITE), config.docs_dir)


def submit_batch_suite(counts: BatchCounts, config: GateConfig, *, run_name: str) -> Callable[[], SuiteOutcome]:
    """Start the `ticks_batch` suite (the batch's accounting): with the GE worker it runs while the caller reads the
    staged rows back for the `ticks` suite."""
    from k2_assets.serving.dq_suites import submit_suite

    return submit_suite(
        BATCH_SUITE,
        batch_frame(counts),
        {"quarantine_ceiling": config.quarantine_ceiling},
        run_name=run_name,
        docs_dir=config.docs_dir,
        defer_docs=config.defer_docs,
    )


def check_batch(
    staged: pl.DataFrame,
    counts: BatchCounts,
    config: GateConfig,
    *,
    run_name: str,
    batch_suite: Callable[[], SuiteOutcome] | None = None,
) -> GateResult:
    """Run both suites on the staged batch (`batch_suite`: the ticks_batch one, already submitted); build Data
    Docs when `config.docs_dir` is set."""
    from k2_assets.serving.dq_suites import run_suite

    days = staged.select("exchange", trading_dates(staged)).unique().drop_nulls()
    session_open, session_close = session_window(days.iter_rows(), config.session_grace_us)
    row_params = {"session_open_us": session_open, "session_close_us": session_close}
    batch_params = {"quarantine_ceiling": config.quarantine_ceiling}
    pending = batch_suite or submit_batch_suite(counts, config, run_name=run_name)
    rows = run_suite(
        TICKS_SUITE,
        ticks_frame(staged, config.derivative_symbols),
        row_params,
        run_name=run_name,
        docs_dir=config.docs_dir,
        defer_docs=config.defer_docs,
    )
    return GateResult((rows, pending()), {**row_params, **batch_params})
