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


class CommitConflictError(K2Error):
    """Another writer kept winning the race for the table; the batch was not committed."""


class TableNotFoundError(K2Error):
    """A K2 table does not exist yet: run the pipeline (`k2 run`) first."""


class SnapshotNotFoundError(K2Error):
    """A time-travel read names a snapshot, tag or timestamp the table does not have."""


class QueryError(K2Error):
    """A query could not be run."""
