"""Kubernetes mode: meshd reads the cluster through the API server (kubernetes-asyncio)."""
