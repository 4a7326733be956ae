"""Typed errors. Each one says what went wrong and what to do about it."""

from __future__ import annotations


class K2Error(Exception):
    """Base class for every error K2 raises on purpose."""


class ConfigurationError(K2Error):
    """A setting is missing or malformed."""


class ToolchainMissingError(K2Error):
    """A program K2 needs (java, mvn) is not on PATH."""


class BrokerError(K2Error):
    """The local Kafka broker could not be started, stopped or reached."""


class PortInUseError(BrokerError):
    """Something other than K2's broker listens on the configured port."""


class BrokerUnavailableError(BrokerError):
    """No broker answered a metadata request at the configured bootstrap servers."""


class SchemaError(K2Error):
    """A schema could not be found, parsed or evolved compatibly."""


class UnknownSchemaIdError(SchemaError):
    """A Kafka value names a schema id the registry does not know."""


class DecodeError(K2Error):
    """A Kafka value is not a valid Confluent-framed Avro tick."""


class OffsetRangeError(K2Error):
    """A planned Kafka range does not line up with what the table has committed."""


class OffsetGapError(OffsetRangeError):
    """A range starts past the committed watermark: committing it would leave a hole."""


class BatchFailedError(K2Error):
    """A run of the ingest job failed; nothing past the committed watermarks was published, so a re-run retries."""


class CommitConflictError(K2Error):
    """Another writer kept winning the race for the table; the batch was not committed."""


class TableNotFoundError(K2Error):
    """A K2 table does not exist yet: run the pipeline (`k2 run`) first."""


class SnapshotNotFoundError(K2Error):
    """A time-travel read names a snapshot, tag or timestamp the table does not have."""


class QueryError(K2Error):
    """A query could not be run."""


class ServiceError(K2Error):
    """A production service K2 runs against (PostgreSQL, object store, schema registry) failed or is unreachable."""


class PostgresError(ServiceError):
    """The PostgreSQL server could not be started, stopped or reached."""


class ObjectStoreError(ServiceError):
    """The S3-compatible object store could not be started or reached."""


class RegistryError(SchemaError):
    """The schema registry refused a request or could not be reached."""


class IncompatibleSchemaError(SchemaError):
    """A new schema version is not BACKWARD compatible with the registered one."""


class CatalogUnavailableError(ServiceError):
    """The Iceberg catalog did not answer; ingest pauses (Kafka buffers) until it does."""


class WarehouseWriteError(ServiceError):
    """Data or metadata files could not be written to the warehouse (disk full, permissions, object store down);
    nothing was committed: free the space or fix access, then re-run."""


class RecoveryError(K2Error):
    """A disaster-recovery step (backup, catalog rebuild) could not complete."""


class MaintenanceError(K2Error):
    """A maintenance job (compaction, snapshot expiry, orphan removal) refused to touch a table in this state."""


class TagExistsError(K2Error):
    """A tag of that name already exists: pick another name (`k2 tag list` shows the existing ones)."""


# Serving reads: authentication, authorization, audit and query limits.


class AuthenticationError(K2Error):
    """The caller could not be identified: the token or API key is missing, forged, malformed or revoked."""


class TokenExpiredError(AuthenticationError):
    """The token's signature is valid but it has expired: ask an admin for a new one (`k2 auth token`)."""


class PermissionDeniedError(K2Error):
    """The caller's role may not perform this action on this resource; the refusal is in the audit log."""


class AuditWriteError(K2Error):
    """The audit log could not be appended, so the read was not served (K2 serves no unaudited reads)."""


class QueryLimitError(QueryError):
    """A query hit a resource limit (queue wait, run time, memory, Kafka tail size): narrow it or raise the limit."""


class QueryQueueTimeoutError(QueryLimitError):
    """Every query slot stayed busy for longer than the queue timeout (K2_QUERY_QUEUE_TIMEOUT_S)."""


class QueryTimeoutError(QueryLimitError):
    """The query ran past K2_QUERY_TIMEOUT_S and was interrupted."""


class QueryMemoryError(QueryLimitError):
    """The query needed more than K2_QUERY_MEMORY_LIMIT of memory and was stopped."""


class TailTooLargeError(QueryLimitError):
    """More records wait in Kafka past the ingest watermark than one query may read (K2_QUERY_TAIL_MAX_RECORDS)."""


# Data quality (validated_ticks): state, quality gate, dead letters, releases.


class StateSnapshotExpiredError(K2Error):
    """The table snapshot holding the validation state at a batch's first offsets has been expired."""


class QualityGateError(K2Error):
    """A Great Expectations suite could not be loaded or run (not a failed expectation: that blocks the batch)."""


class DeadLetterError(K2Error):
    """Undecodable records could not be written to the dead-letter topic; the batch was not committed."""


class ReleaseError(K2Error):
    """A quarantine release was refused (unknown or non-releasable reason, nothing matching)."""


class BarInputError(K2Error):
    """Ticks given to the bar kernel are not validated ticks (null key field, negative volume) or the interval is
    unknown: build bars from market_data.ticks."""


class BarCommitConflictError(K2Error):
    """Another writer kept committing the bar tables meanwhile; nothing half-done was kept: re-run the step."""
