"""Data-quality knobs of validated_ticks as a Dagster resource (definitions.py builds it from Settings)."""

from pathlib import Path

import dagster as dg

from k2_assets.ticks.gate import GateConfig
from k2_assets.ticks.publish import QualityConfig
from k2_assets.ticks.validate import Rules
from k2_resources.env import Settings


class QualityResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Rules, the sequence-reset heuristic and the quality gate. Every field can be overridden per deployment."""

    derivative_symbols: list[str] = []  # may trade at or below zero (spreads, some derivatives)
    anomaly_bps: int = 1_000  # |price / last valid price - 1| above 10% is an anomaly (flagged for review)
    future_tolerance_seconds: float = 5.0  # exchange_ts may lead our clock by this much before it is quarantined
    reset_drop: float = 0.5  # a sequence dropping by more than this fraction is a reset, not a gap
    quarantine_ceiling: float = 0.10  # the gate blocks a batch quarantining more than this share of its rows
    session_grace_minutes: float = 15.0  # ticks this long before the open / after the close are in session
    docs_dir: str = ""  # Great Expectations Data Docs (and their results store); empty: none
    dlq_topic: str = "market.ticks.dlq"
    gate_enabled: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> "QualityResource":
        return cls(docs_dir=str(settings.home / "data_docs"), dlq_topic=settings.dlq_topic)

    def config(self, extra_derivatives: frozenset[str] = frozenset()) -> QualityConfig:
        derivatives = frozenset(self.derivative_symbols) | extra_derivatives
        return QualityConfig(
            rules=Rules(
                derivative_symbols=derivatives,
                anomaly_bps=self.anomaly_bps,
                future_tolerance_us=int(self.future_tolerance_seconds * 1_000_000),
            ),
            gate=GateConfig(
                quarantine_ceiling=self.quarantine_ceiling,
                session_grace_us=int(self.session_grace_minutes * 60 * 1_000_000),
                derivative_symbols=derivatives,
                docs_dir=Path(self.docs_dir) if self.docs_dir else None,
            ),
            reset_drop=self.reset_drop,
            gate_enabled=self.gate_enabled,
        )
