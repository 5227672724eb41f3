"""Observability: Prometheus metrics on an injected registry, debug HTTP endpoints."""
