"""Metrics of several processes as one exposition (`meshd serve --workers N`): the per-stream families
each worker counts (pushes, bytes, rejects, push and convergence times, connected proxies) are added to the
main process's own, sample by sample (same name and labels: summed; otherwise appended), and so are the
connections of their secure ports and the CSRs they refused on the plaintext port. Families that describe
the one source of truth (config errors, the CA's signing, informers) are the main process's alone."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

# The families a worker's streams count; everything else a worker registers is not exposed.
STREAM_FAMILIES = frozenset(
    {
        "pilot_xds",
        "pilot_xds_pushes",
        "pilot_total_xds_rejects",
        "pilot_xds_push_time",
        "pilot_proxy_convergence_time",
        "pilot_xds_send_bytes",
        "meshd_xds_secret_refusals",
        "meshd_xds_streams_refused",
        # the secure port's connections (served by the workers when meshd runs its CA)
        "meshd_connections_open",
        "meshd_connections_refused",
        "meshd_accept_descriptors_exhausted",
        "meshd_tls_handshake_failures",
        "meshd_connections_closed_idle",
        # CSRs a worker refused itself (on the plaintext port); those on the secure port the main process counts
        "citadel_server_csr_count",
        "citadel_server_authentication_failure_count",
    }
)

Sample = tuple[str, tuple[tuple[str, str], ...], float]
Family = tuple[str, Sequence[Sample]]  # family name, its samples


def samples_of(registry: CollectorRegistry) -> list[Family]:
    """The stream families of `registry`, as plain picklable data."""
    return [
        (family.name, [(s.name, tuple(sorted(s.labels.items())), s.value) for s in family.samples])
        for family in registry.collect()
        if family.name in STREAM_FAMILIES
    ]


class MergedRegistry:
    """What `generate_latest` renders: `own`'s families with the workers' samples added in."""

    def __init__(self, own: CollectorRegistry, others: Iterable[Sequence[Family]]) -> None:
        self._own = own
        self._others = list(others)

    def collect(self) -> Iterator[Metric]:
        extra: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for families in self._others:
            for name, samples in families:
                into = extra.setdefault(name, {})
                for sample_name, labels, value in samples:
                    into[(sample_name, labels)] = into.get((sample_name, labels), 0.0) + value
        for family in self._own.collect():
            added = extra.get(family.name)
            if not added:
                yield family
                continue
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            own = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
            for key, value in added.items():
                own[key] = own.get(key, 0.0) + value
            for (sample_name, labels), value in own.items():
                merged.add_sample(sample_name, dict(labels), value)
            yield merged
