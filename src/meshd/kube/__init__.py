"""Kubernetes mode: reflectors (list + watch) per kind, the source that feeds the ConfigStore from them."""
