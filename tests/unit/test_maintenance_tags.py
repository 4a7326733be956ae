"""Backtest tags on a real SQLite Iceberg catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

from k2_assets.maintenance.tags import create_tag, list_tags
from k2_resources.errors import ConfigurationError, SnapshotNotFoundError, TableNotFoundError, TagExistsError
from k2_resources.tables import QUARANTINE, TICKS
from tests.unit.test_maintenance_support import append_batches, catalog_in, tick_rows


def test_a_tag_pins_the_current_snapshot_of_every_table_that_has_one(tmp_path: Path) -> None:
    iceberg = catalog_in(tmp_path)
    ticks = iceberg.ensure_table(TICKS)
    iceberg.ensure_table(QUARANTINE)  # no snapshot yet: nothing to pin
    append_batches(ticks, tick_rows(ticks, 2_000), 2)
    pinned = ticks.current_snapshot().snapshot_id

    created = create_tag(iceberg, "backtest-1")
    append_batches(ticks, tick_rows(ticks, 500, seed=5), 1, first_offset=2_000)

    assert [(c.table, c.tag, c.snapshot_id) for c in created] == [("ticks", "backtest-1", pinned)]
    assert [(t.table, t.tag, t.snapshot_id) for t in list_tags(iceberg)] == [("ticks", "backtest-1", pinned)]
    assert iceberg.load("ticks").snapshot_by_name("backtest-1").snapshot_id == pinned


def test_an_existing_tag_name_is_refused_before_anything_is_tagged(tmp_path: Path) -> None:
    iceberg = catalog_in(tmp_path)
    ticks = iceberg.ensure_table(TICKS)
    append_batches(ticks, tick_rows(ticks, 1_000), 1)
    create_tag(iceberg, "eod")

    with pytest.raises(TagExistsError, match="eod"):
        create_tag(iceberg, "eod")
    with pytest.raises(ConfigurationError):
        create_tag(iceberg, "main")


def test_tagging_a_named_table_needs_it_to_exist_and_have_a_snapshot(tmp_path: Path) -> None:
    iceberg = catalog_in(tmp_path)
    iceberg.ensure_table(QUARANTINE)

    with pytest.raises(TableNotFoundError):
        create_tag(iceberg, "t1", ["ticks"])
    with pytest.raises(SnapshotNotFoundError):
        create_tag(iceberg, "t1", ["quarantine"])
