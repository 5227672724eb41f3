"""Kubernetes mode: the API client, reflectors (list + watch) per kind, and the source that feeds the
ConfigStore from them."""
