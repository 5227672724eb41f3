"""Prometheus metrics of the Kubernetes reflectors, on the registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class KubeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.relists = Counter(
            "meshd_kube_relists",
            "Full lists after the first one (410 Expired, CRD appearing).",
            ["kind"],
            registry=registry,
        )
        self.watch_errors = Counter(
            "meshd_kube_watch_errors",
            "Failed list/watch calls (each one is followed by a backoff).",
            ["kind"],
            registry=registry,
        )
        self.events = Counter(
            "meshd_kube_events", "Object changes seen, by kind and type.", ["kind", "type"], registry=registry
        )
        self.objects = Gauge("meshd_kube_objects", "Objects held per kind.", ["kind"], registry=registry)
        self.synced = Gauge("meshd_kube_synced", "1 once the kind has been listed.", ["kind"], registry=registry)
