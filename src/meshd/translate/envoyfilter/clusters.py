"""The mesh clusters an EnvoyFilter's patches name.

A gateway is sent the clusters of its routes' destinations only, where Istio's gateways get every cluster of
the mesh; patches may call a service by its cluster name, as Istio's global rate-limit task does
(`envoy_grpc: {cluster_name: outbound|8081||ratelimit.default.svc.cluster.local}` on the ingress gateway) or a
Lua filter's `httpCall`. Every `outbound|<port>|<subset>|<host>` a patch value holds, in any string (so also
inside a script), is one: the gateway gets those clusters too. A name no service has adds nothing (Envoy then
refuses the patch, and the NACK is reported on the EnvoyFilter)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from meshd.api.envoyfilter import EnvoyFilter

_CLUSTER = re.compile(r"outbound\|\d+\|[A-Za-z0-9_.\-]*\|[A-Za-z0-9*.\-]*[A-Za-z0-9]")


def named_clusters(filters: Iterable[EnvoyFilter]) -> frozenset[str]:
    return frozenset(
        match.group(0)
        for found in filters
        for patch in found.spec.config_patches
        for text in _strings(patch.patch.value)
        for match in _CLUSTER.finditer(text)
    )


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
