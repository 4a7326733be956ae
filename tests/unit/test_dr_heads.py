"""Which metadata file `k2 dr rebuild-catalog` takes as a table's head, from files alone."""

from __future__ import annotations

import json
from pathlib import Path

from k2.dr import choose_head, find_metadata_files
from tests.conftest import make_settings


def _write(root: Path, table: str, name: str, updated_ms: int) -> None:
    folder = root / "market_data" / table / "metadata"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"last-updated-ms": updated_ms}))


def test_highest_version_wins_and_orphan_creates_lose_to_the_first_create(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    root = Path(settings.warehouse.removeprefix("file://"))
    # ticks: committed twice, plus an orphan version 0 from a later create_table_if_not_exists.
    _write(root, "ticks", "00000-aaaa.metadata.json", 1)
    _write(root, "ticks", "00000-bbbb.metadata.json", 5)
    _write(root, "ticks", "00001-cccc.metadata.json", 2)
    _write(root, "ticks", "00002-dddd.metadata.json", 3)
    # bars: never written to; the first create is the table, later creates left orphans.
    _write(root, "bars", "00000-late.metadata.json", 9)
    _write(root, "bars", "00000-first.metadata.json", 1)
    (root / "market_data" / "ticks" / "metadata" / "snap-1.avro").write_text("not metadata")

    found = find_metadata_files(settings)
    heads = {loc.rsplit("/", 1)[-1]: choose_head(settings, files, None) for loc, files in found.items()}
    assert heads["ticks"][:2] == (2, f"{settings.warehouse}/market_data/ticks/metadata/00002-dddd.metadata.json")
    assert heads["bars"][1].endswith("00000-first.metadata.json") and not heads["bars"][3]


def test_a_tie_above_version_zero_is_ambiguous_unless_the_backup_names_one(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    root = Path(settings.warehouse.removeprefix("file://"))
    _write(root, "raw", "00000-a.metadata.json", 1)
    _write(root, "raw", "00001-winner.metadata.json", 2)
    _write(root, "raw", "00001-loser.metadata.json", 3)  # lost the race and never retried
    (files,) = find_metadata_files(settings).values()
    version, _, candidates, ambiguous = choose_head(settings, files, None)
    assert (version, candidates, ambiguous) == (1, 2, True)
    winner = f"{settings.warehouse}/market_data/raw/metadata/00001-winner.metadata.json"
    assert choose_head(settings, files, winner) == (1, winner, 2, False)
