from __future__ import annotations

from k2_resources.broker import _cluster_id


def test_kraft_cluster_ids_never_look_like_an_option() -> None:
    ids = [_cluster_id() for _ in range(2_000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
