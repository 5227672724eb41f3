"""Observability shared by every edge: Prometheus metric definitions on an injected registry
(`metrics.py`). Low level: imports nothing of meshd, so any package may import it."""
