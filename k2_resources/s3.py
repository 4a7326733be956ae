"""The S3 warehouse of the prod profile: pyiceberg FileIO properties, an fsspec filesystem for listing, and DuckDB
secrets, all built from the same Settings."""

from __future__ import annotations

from typing import Any

from k2_resources.env import Settings


def is_s3(warehouse: str) -> bool:
    return warehouse.startswith(("s3://", "s3a://"))


def catalog_properties(settings: Settings) -> dict[str, str]:
    """pyiceberg FileIO properties for the warehouse (empty for a local file:// warehouse)."""
    if not is_s3(settings.warehouse):
        return {}
    props = {"s3.region": settings.s3_region}
    if settings.s3_endpoint:
        props["s3.endpoint"] = settings.s3_endpoint
        # Self-hosted S3 servers address buckets by path, not by virtual host name.
        props["s3.force-virtual-addressing"] = "false"
    if settings.s3_access_key_id:
        props["s3.access-key-id"] = settings.s3_access_key_id
    if settings.s3_secret_access_key:
        props["s3.secret-access-key"] = settings.s3_secret_access_key
    return props


def warehouse_filesystem(settings: Settings) -> tuple[Any, str]:
    """(fsspec filesystem, root path without scheme) of the warehouse, for listing metadata files."""
    import fsspec

    if is_s3(settings.warehouse):
        import s3fs

        fs = s3fs.S3FileSystem(
            key=settings.s3_access_key_id,
            secret=settings.s3_secret_access_key,
            endpoint_url=settings.s3_endpoint,
            client_kwargs={"region_name": settings.s3_region},
            use_listings_cache=False,
        )
        return fs, settings.warehouse.split("://", 1)[1].rstrip("/")
    return fsspec.filesystem("file"), settings.warehouse.removeprefix("file://").rstrip("/")
