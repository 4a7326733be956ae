from __future__ import annotations

import threading
from pathlib import Path

from k2_resources.iceberg import open_catalog


def test_many_writers_opening_a_new_catalog_at_once_all_get_it(tmp_path: Path) -> None:
    uri, warehouse = f"sqlite:///{tmp_path / 'catalog.db'}", (tmp_path / "wh").as_uri()
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def open_it() -> None:
        start.wait()
        try:
            open_catalog(uri, warehouse).list_namespaces()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
