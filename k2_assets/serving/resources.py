"""Resources of the serving stage."""

from pathlib import Path

import dagster as dg

from k2_resources.env import Settings
from k2_resources.metrics import FigureStore, figure_store


class MetricsResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Where Dagster runs record their figures (k2_assets.serving.hooks); `k2 metrics serve` reads them."""

    metrics_dir: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "MetricsResource":
        directory = settings.serving.metrics_dir or settings.home / "metrics"
        return cls(metrics_dir=str(directory))

    def store(self) -> FigureStore:
        return figure_store(Path(self.metrics_dir))
