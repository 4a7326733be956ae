"""Serving-side processes: the Prometheus endpoint (`k2 metrics serve`)."""
