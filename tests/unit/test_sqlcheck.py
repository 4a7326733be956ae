"""What raw SQL may do, decided from DuckDB's parse tree before anything runs."""

from __future__ import annotations

import pytest

from k2.query.sqlcheck import analyse
from k2_resources.errors import QueryError


def test_tables_are_found_through_joins_subqueries_and_ctes() -> None:
    shape = analyse(
        "WITH b AS (SELECT * FROM market_data.bars_1m) "
        "SELECT * FROM ticks t JOIN b USING (symbol) WHERE t.symbol IN (SELECT symbol FROM quarantine)",
        "market_data",
    )
    assert shape.tables == {"ticks", "bars_1m", "quarantine"}
    assert not shape.aggregate and not shape.table_functions


def test_a_cte_cannot_hide_a_qualified_table() -> None:
    shape = analyse("WITH audit_log AS (SELECT 1) SELECT * FROM audit_log, market_data.audit_log", "market_data")
    assert shape.tables == {"audit_log"}
    assert analyse("WITH audit_log AS (SELECT 1) SELECT * FROM audit_log", "market_data").tables == set()


def test_aggregations_and_table_functions_are_recognised() -> None:
    assert analyse("SELECT symbol, max(price) FROM ticks GROUP BY symbol", "market_data").aggregate
    assert analyse("SELECT count(*) FROM ticks", "market_data").aggregate
    assert analyse("SELECT * FROM read_parquet('/etc/x')", "market_data").table_functions == {"read_parquet"}


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM audit_log",
        "INSERT INTO ticks VALUES (1)",
        "COPY ticks TO '/tmp/x.csv'",
        "ATTACH '/tmp/x.db'",
        "SET memory_limit = '100GB'",
        "SELECT 1; SELECT 2",
        "SELECT * FROM information_schema.tables",
        "SELEC 1",
    ],
)
def test_anything_but_one_select_over_the_namespace_is_refused(sql: str) -> None:
    with pytest.raises(QueryError):
        analyse(sql, "market_data")
