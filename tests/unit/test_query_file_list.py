"""The point-query fast path (k2/query/scanplan.py): a read that names its symbols and time range reads an explicit
list of Parquet files with read_parquet instead of iceberg_scan. It must return exactly the rows iceberg_scan
returns, for the current snapshot, an older one and a tagged one, see a new commit at once, and fall back to
iceberg_scan when the snapshot has delete files or the schema changed."""

from __future__ import annotations

import datetime as dt
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.manifest import (
    DataFile,
    DataFileContent,
    FileFormat,
    ManifestContent,
    ManifestEntry,
    ManifestEntryStatus,
    ManifestWriterV2,
)
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import LongType, NestedField, StringType

from k2.query import Client, reads
from k2.query.engine import Execution, QueryEngine, QueryLimits
from k2.query.scanplan import ScanFilter
from k2.tags import create
from k2_assets.maintenance.compaction import CompactionPolicy, compact_table
from k2_resources.arrow_util import conform
from k2_resources.env import Settings
from k2_resources.iceberg import IcebergResource
from k2_resources.tables import TICKS
from tests.unit.query_seed import DAY, SYMBOLS, tick_rows

BATCHES = 6
PER_BATCH = 40  # ticks per symbol per batch, one second apart


def build(settings: Settings) -> tuple[IcebergResource, Table]:
    """ticks in BATCHES appends (3 files each: one per symbol partition)."""
    iceberg = IcebergResource.from_settings(settings)
    table = iceberg.ensure_table(TICKS)
    for b in range(BATCHES):
        first = 1 + b * PER_BATCH
        table.append(conform(tick_rows(PER_BATCH, first_sequence=first), table.schema().as_arrow()))
    return iceberg, table


def read(
    engine: QueryEngine,
    symbols: list[str],
    start: dt.datetime | None,
    end: dt.datetime | None,
    *,
    fast: bool,
    pinned: int | None = None,
) -> Execution:
    predicate, params = reads.where(symbols, "exchange_ts", start, end)
    sql, _ = reads.ticks_sql(predicate, with_tail=False)
    scan = {"ticks": ScanFilter(tuple(symbols), "exchange_ts", start, end)} if fast else None
    return engine.execute(sql, params, reads=["ticks"], pinned={"ticks": pinned} if pinned else None, scan=scan)


def filters(seed: int, n: int) -> list[tuple[list[str], dt.datetime | None, dt.datetime | None]]:
    """Random symbol sets (some absent, some empty = all) and ranges, with bounds on exact tick times."""
    rng = random.Random(seed)
    span = BATCHES * PER_BATCH
    out = []
    for _ in range(n):
        symbols = rng.sample([*SYMBOLS, "ZZZ"], rng.randrange(0, 4))
        lo = rng.randrange(-5, span + 5)
        hi = lo + rng.randrange(1, span)
        # tick k of symbol i is at DAY + k s + i ms: a bound on a whole second sits exactly on symbol 0's ticks
        start = DAY + dt.timedelta(seconds=lo) if rng.random() < 0.9 else None
        end = DAY + dt.timedelta(seconds=hi) if rng.random() < 0.9 else None
        out.append((symbols, start, end))
    return out


def assert_same(engine: QueryEngine, seed: int, pinned: int | None = None, n: int = 25) -> int:
    """Fast path == iceberg_scan on random filters; returns how many of them the fast path pruned files for."""
    total = len(read(engine, [], None, None, fast=True, pinned=pinned).table)
    assert total > 0
    pruned = 0
    for symbols, start, end in filters(seed, n):
        slow = read(engine, symbols, start, end, fast=False, pinned=pinned)
        fast = read(engine, symbols, start, end, fast=True, pinned=pinned)
        assert slow.sources == {}
        assert fast.sources["ticks"].startswith("files:"), fast.sources
        assert fast.table.schema == slow.table.schema
        assert fast.table.equals(slow.table), (symbols, start, end)
        pruned += fast.sources != read(engine, [], None, None, fast=True, pinned=pinned).sources
    return pruned


def test_file_list_reads_equal_iceberg_scan_for_current_older_and_compacted_snapshots(
    offline_lakehouse: Settings,
) -> None:
    iceberg, table = build(offline_lakehouse)
    engine = QueryEngine(iceberg, QueryLimits())
    files_before = int(read(engine, [], None, None, fast=True).sources["ticks"].split(":")[1])
    assert files_before == BATCHES * len(SYMBOLS)
    assert assert_same(engine, seed=1) > 10  # bounds do prune: most filters read fewer files than the table has
    one = read(engine, ["CBA"], DAY + dt.timedelta(seconds=45), DAY + dt.timedelta(seconds=70), fast=True)
    assert one.sources == {"ticks": "files:1"} and len(one.table) == 25

    before = table.current_snapshot()
    assert before is not None
    result = compact_table(table, CompactionPolicy(max_files_per_partition=2, min_avg_file_bytes=1 << 30))
    assert result.partitions_compacted == len(SYMBOLS)
    assert read(engine, [], None, None, fast=True).sources == {"ticks": f"files:{len(SYMBOLS)}"}
    assert_same(engine, seed=2)
    assert_same(engine, seed=3, pinned=before.snapshot_id)  # time travel to the pre-compaction snapshot
    assert read(engine, [], None, None, fast=True, pinned=before.snapshot_id).sources == {
        "ticks": f"files:{files_before}"
    }


def record_executions(client: Client) -> list[Execution]:
    """Every Execution the client's engine returns from now on (to see which source each read took)."""
    seen: list[Execution] = []
    original = client.engine.execute

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        done = original(*args, **kwargs)
        seen.append(done)
        return done

    client.engine.execute = spy  # type: ignore[method-assign]
    return seen


def test_typed_reads_use_the_file_list_for_now_as_of_and_tags_and_see_a_new_commit_at_once(
    offline_lakehouse: Settings,
) -> None:
    _, table = build(offline_lakehouse)
    c = Client(offline_lakehouse)
    seen = record_executions(c)
    start, end = DAY + dt.timedelta(seconds=30), DAY + dt.timedelta(seconds=130)
    first = table.current_snapshot()
    assert first is not None
    create(offline_lakehouse, "bt-files")
    now = c.ticks(["BHP", "CSL"], start, end, route="iceberg")
    assert seen[-1].sources == {"ticks": "files:8"}  # seconds 30-129: batches 0-3, one file per symbol each
    assert now.num_rows == 200

    # A new commit is read by the very next query (the file list is per snapshot; the pointer is checked per query).
    table.append(conform(tick_rows(10, first_sequence=31), table.schema().as_arrow()))  # same times, new rows
    after = c.ticks(["BHP", "CSL"], start, end, route="iceberg")
    assert after.num_rows == 220 and seen[-1].sources == {"ticks": "files:10"}

    for as_of in (first.snapshot_id, "bt-files"):
        pinned = c.ticks(["BHP", "CSL"], start, end, as_of=as_of)
        assert seen[-1].sources == {"ticks": "files:8"}
        assert pinned.arrow.equals(now.arrow)
    latest = c.latest(["CBA"], route="iceberg")
    assert seen[-1].sources == {"ticks": f"files:{BATCHES + 1}"}  # no time bound: every CBA file
    expected = table.scan(row_filter="symbol == 'CBA'").to_arrow().sort_by([("exchange_ts", "descending")])
    assert latest.arrow["sequence"].to_pylist() == [expected["sequence"][0].as_py()]


def _position_delete(table: Table, victim: DataFile, positions: list[int]) -> None:
    """Commit a positional delete file for `victim` (pyiceberg cannot write one itself): a Parquet file of
    (file_path, pos) and a delete manifest, added to a snapshot by a fast append."""
    schema = Schema(
        NestedField(2147483546, "file_path", StringType(), required=True),
        NestedField(2147483545, "pos", LongType(), required=True),
    )
    path = victim.file_path.rsplit("/", 1)[0] + "/test-position-delete.parquet"
    rows = pa.table({"file_path": [victim.file_path] * len(positions), "pos": positions})
    with table.io.new_output(path).create() as stream:
        pq.write_table(rows.cast(schema_to_pyarrow(schema)), stream)
    deletes = DataFile.from_args(
        content=DataFileContent.POSITION_DELETES,
        file_path=path,
        file_format=FileFormat.PARQUET,
        partition=victim.partition,
        record_count=len(positions),
        file_size_in_bytes=len(table.io.new_input(path)),
        spec_id=victim.spec_id,
    )

    class DeleteManifestWriter(ManifestWriterV2):
        def content(self) -> ManifestContent:
            return ManifestContent.DELETES

        @property
        def _meta(self) -> dict[str, str]:
            return {**super()._meta, "content": "deletes"}

    with table.transaction() as tx:
        producer = tx.update_snapshot().fast_append()
        with DeleteManifestWriter(
            tx.table_metadata.spec(),
            tx.table_metadata.schema(),
            table.io.new_output(path.replace(".parquet", "-manifest.avro")),
            producer._snapshot_id,
            "deflate",
        ) as writer:
            writer.add(
                ManifestEntry.from_args(
                    status=ManifestEntryStatus.ADDED,
                    snapshot_id=producer._snapshot_id,
                    sequence_number=None,
                    file_sequence_number=None,
                    data_file=deletes,
                )
            )
        manifest = writer.to_manifest_file()
        existing = producer._manifests
        producer._manifests = lambda: [*existing(), manifest]  # type: ignore[method-assign]
        producer.commit()


def test_a_snapshot_with_delete_files_falls_back_to_iceberg_scan(offline_lakehouse: Settings) -> None:
    iceberg, table = build(offline_lakehouse)
    engine = QueryEngine(iceberg, QueryLimits())
    clean = table.current_snapshot()
    assert clean is not None
    victim = next(
        t.file for t in table.scan(row_filter="symbol == 'BHP'").plan_files() if t.file.record_count == PER_BATCH
    )
    _position_delete(table, victim, [0, 1, 2])
    table.refresh()
    expected = table.scan(row_filter="symbol == 'BHP'").to_arrow()  # pyiceberg applies the deletes
    assert expected.num_rows == BATCHES * PER_BATCH - 3
    done = read(engine, ["BHP"], None, None, fast=True)
    assert done.sources == {"ticks": "iceberg_scan"}
    assert done.table.sort_by("sequence").equals(expected.sort_by("sequence").cast(done.table.schema))
    # The snapshot before the delete has none: time travel to it still takes the file list, and sees every row.
    old = read(engine, ["BHP"], None, None, fast=True, pinned=clean.snapshot_id)
    assert old.sources == {"ticks": f"files:{BATCHES}"} and len(old.table) == BATCHES * PER_BATCH


def test_a_table_whose_schema_changed_falls_back_to_iceberg_scan(offline_lakehouse: Settings) -> None:
    iceberg, table = build(offline_lakehouse)
    engine = QueryEngine(iceberg, QueryLimits())
    assert read(engine, ["BHP"], None, None, fast=True).sources["ticks"].startswith("files:")
    with table.update_schema() as update:
        update.add_column("venue", StringType())
    done = read(engine, ["BHP"], None, None, fast=True)
    assert done.sources == {"ticks": "iceberg_scan"}
    assert len(done.table) == BATCHES * PER_BATCH and done.table["venue"].null_count == len(done.table)


@pytest.mark.parametrize("empty", ["no snapshot", "no matching file"])
def test_an_empty_file_list_reads_an_empty_table_of_the_right_schema(offline_lakehouse: Settings, empty: str) -> None:
    iceberg = IcebergResource.from_settings(offline_lakehouse)
    table = iceberg.ensure_table(TICKS)
    if empty == "no matching file":
        table.append(conform(tick_rows(5), table.schema().as_arrow()))
    engine = QueryEngine(iceberg, QueryLimits())
    done = read(engine, ["BHP"], DAY - dt.timedelta(days=3), DAY - dt.timedelta(days=2), fast=True)
    assert len(done.table) == 0
    assert done.table.schema == read(engine, ["BHP"], None, None, fast=False).table.schema


def _sql_cases() -> list[str]:
    t = DAY.strftime("%Y-%m-%d %H:%M:%S")
    later = (DAY + dt.timedelta(seconds=95)).strftime("%Y-%m-%d %H:%M:%S")
    return [
        f"SELECT count(*) AS n, sum(volume) AS v FROM ticks WHERE symbol = 'BHP' AND exchange_ts >= '{later}'",
        f"SELECT * FROM market_data.ticks t WHERE t.symbol IN ('CBA', 'CSL') AND exchange_ts < TIMESTAMPTZ '{later}+00'",
        f"SELECT sequence FROM ticks WHERE exchange_ts BETWEEN '{t}' AND '{later}' AND 'CSL' = symbol",
        f"SELECT sequence FROM ticks WHERE exchange_ts > '{later}' AND exchange_ts <= TIMESTAMP '{later}' + INTERVAL 1 HOUR",
        f"SELECT sequence FROM ticks WHERE exchange_ts = '{later}'",  # exactly one BHP tick
        "SELECT count(*) AS n FROM ticks WHERE symbol = 'BHP' OR symbol = 'CBA'",  # OR: no pruning, still exact
        "SELECT count(*) AS n FROM ticks WHERE symbol = 'BHP' AND symbol = 'CBA'",
        f"SELECT max(sequence) AS m FROM ticks WHERE exchange_ts >= DATE '{DAY.date()}' AND symbol = 'ZZZ'",
    ]


@pytest.mark.parametrize("case", range(len(_sql_cases())))
def test_raw_sql_reads_only_the_files_its_where_clause_can_match_and_returns_iceberg_scan_s_rows(
    offline_lakehouse: Settings, case: int
) -> None:
    iceberg, _ = build(offline_lakehouse)
    sql = _sql_cases()[case]
    c = Client(offline_lakehouse)
    seen = record_executions(c)
    fast = c.sql(sql)
    reference = QueryEngine(iceberg, QueryLimits()).execute(sql, reads=["ticks"])
    assert reference.sources == {}
    order = [(name, "ascending") for name in fast.arrow.column_names if name != "conditions"]
    assert fast.arrow.sort_by(order).equals(reference.table.sort_by(order))
    used = seen[-1].sources.get("ticks", "iceberg_scan")
    if "OR" in sql or "symbol = 'BHP' AND symbol = 'CBA'" in sql:
        assert used == "iceberg_scan"  # nothing to prune on
    else:
        assert used.startswith("files:") and int(used.split(":")[1]) < BATCHES * len(SYMBOLS)


def test_where_bounds_only_trusts_plain_and_terms_of_a_single_table_select() -> None:
    from k2.query.sqlcheck import where_bounds

    ns = "market_data"
    assert where_bounds("SELECT * FROM ticks WHERE symbol = 'A'", ns)["ticks"].symbols == {"A"}
    assert where_bounds("SELECT * FROM ticks WHERE symbol = 'A' OR price > 1", ns)["ticks"].symbols is None
    assert where_bounds("SELECT * FROM ticks WHERE NOT (symbol = 'A')", ns)["ticks"].symbols is None
    for unsafe in (
        "WITH ticks AS (SELECT * FROM bars_1m) SELECT * FROM ticks WHERE symbol = 'A'",
        "SELECT * FROM ticks a JOIN ticks b USING (sequence) WHERE a.symbol = 'A'",
        "SELECT * FROM (SELECT * FROM ticks) WHERE symbol = 'A'",
        "SELECT *, (SELECT count(*) FROM ticks) FROM ticks WHERE symbol = 'A'",
        "SELECT * FROM ticks WHERE symbol = 'A' UNION ALL SELECT * FROM ticks",
        "SELECT * FROM other.ticks WHERE symbol = 'A'",
    ):
        assert where_bounds(unsafe, ns) == {}, unsafe
    bounds = where_bounds("SELECT 1 FROM ticks WHERE exchange_ts < '2026-01-02' AND exchange_ts >= now()", ns)
    assert bounds["ticks"].times == {"exchange_ts": (None, 1767312000000000)}  # now() is not a literal: ignored


def test_the_qualified_view_is_never_left_on_another_query_s_files(offline_lakehouse: Settings) -> None:
    iceberg, _ = build(offline_lakehouse)
    engine = QueryEngine(iceberg, QueryLimits(max_concurrent=1))  # one slot: every query reuses its views
    total = BATCHES * PER_BATCH * len(SYMBOLS)
    count = "SELECT count(*) AS n FROM market_data.ticks"
    narrow = {"ticks": ScanFilter(("BHP",), "exchange_ts", DAY, DAY + dt.timedelta(seconds=10))}
    assert engine.execute(count, reads=["ticks"]).table["n"][0].as_py() == total
    # A typed read (unqualified SQL) plans one file; the qualified view must not keep pointing at it...
    one = engine.execute("SELECT count(*) AS n FROM ticks", reads=["ticks"], scan=narrow, qualified=())
    assert one.sources == {"ticks": "files:1"} and one.table["n"][0].as_py() == PER_BATCH
    # ... so a later read of market_data.ticks sees the whole table again, whichever path it takes.
    assert engine.execute(count, reads=["ticks"]).table["n"][0].as_py() == total
    engine.execute("SELECT count(*) AS n FROM ticks", reads=["ticks"], scan=narrow, qualified=())
    where = " WHERE symbol = 'BHP' AND exchange_ts < ?"
    both = engine.execute(
        count + where, [DAY + dt.timedelta(seconds=10)], reads=["ticks"], scan=narrow, qualified=["ticks"]
    )
    assert both.sources == {"ticks": "files:1"} and both.table["n"][0].as_py() == 10
