"""Pydantic models of what meshd reads: Kubernetes objects and Istio CRDs, with validation errors
that name the resource and the field."""
