"""Locality-aware ClusterLoadAssignments, as Istio builds them for a proxy in a given locality.

Endpoints are grouped by locality (`region/zone/subzone`); each group is weighted by its endpoints'
weights. Then, for a proxy that has a locality:
- `distribute`: the first entry whose `from` matches the proxy sets each group's share of traffic
  (groups matching no `to` are left out);
- failover (only with outlier detection, Istio's rule): priority 0 for the proxy's own
  region/zone/subzone, 1 same zone, 2 same region, 3 other regions, 4 regions other than a
  `failover` entry's `to`; `failoverPriority` labels order endpoints first (all labels equal to the
  proxy's: best), `failover` then refines within. Priorities are renumbered 0..N without gaps.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import NamedTuple, TypeAlias

from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2

from meshd.model.services import REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL, Endpoint, split_locality
from meshd.translate.policy import EffectivePolicy

_Group: TypeAlias = endpoint_components_pb2.LocalityLbEndpoints


class LocalityPlan(NamedTuple):
    """What a proxy's locality changes in one cluster's assignment (hashable: part of a spec key)."""

    proxy_locality: str
    distribute: tuple[tuple[str, int], ...] = ()  # the matching entry's (to, weight), in order
    failover: tuple[tuple[str, str], ...] | None = None  # (from, to) regions; None: no failover
    failover_priority: tuple[str, ...] = ()
    proxy_labels: tuple[tuple[str, str], ...] = ()  # the proxy's values of the failoverPriority labels


def locality_matches(locality: str, pattern: str) -> bool:
    """Istio's match of a locality against `region[/zone[/subzone]]` with `*` wildcards."""
    want = split_locality(pattern)
    have = split_locality(locality)
    if want[0] != "*" and want[0] != have[0]:
        return False
    return all(w in ("", "*") or w == h for w, h in zip(want[1:], have[1:], strict=True))


def topology_labels(locality: str) -> dict[str, str]:
    region, zone, subzone = split_locality(locality)
    found = {REGION_LABEL: region, ZONE_LABEL: zone, SUBZONE_LABEL: subzone}
    return {k: v for k, v in found.items() if v}


def plan_for(policy: EffectivePolicy, *, proxy_locality: str, proxy_labels: Mapping[str, str]) -> LocalityPlan | None:
    """The locality plan of one cluster for a proxy, or None when its locality changes nothing."""
    setting = policy.locality_setting()
    if not proxy_locality or setting is None or policy.passthrough:
        return None
    if setting.distribute:
        for entry in setting.distribute:
            if locality_matches(proxy_locality, entry.from_):
                return LocalityPlan(proxy_locality, distribute=tuple(entry.to.items()))
        return None
    if not policy.locality_failover:
        return None
    labels = {**proxy_labels, **topology_labels(proxy_locality)}
    wanted = tuple(setting.failover_priority)
    values = tuple((k, labels[k]) for k in dict.fromkeys(p.partition("=")[0] for p in wanted) if k in labels)
    return LocalityPlan(
        proxy_locality,
        failover=tuple((f.from_, f.to) for f in setting.failover),
        failover_priority=wanted,
        proxy_labels=values,
    )


def _locality_proto(locality: str) -> base_pb2.Locality:
    region, zone, subzone = split_locality(locality)
    return base_pb2.Locality(region=region, zone=zone, sub_zone=subzone)


def _weighted_group(
    locality: str, endpoints: Sequence[tuple[Endpoint, endpoint_components_pb2.LbEndpoint]], *, priority: int = 0
) -> _Group:
    group = _Group(lb_endpoints=[lb for _, lb in endpoints], priority=priority)
    # Always present, if empty (as Istio sends it): gRPC's xDS client refuses a group without a locality.
    group.locality.CopyFrom(_locality_proto(locality) if locality else base_pb2.Locality())
    group.load_balancing_weight.value = sum(ep.weight or 1 for ep, _ in endpoints)
    return group


def _locality_priority(proxy: str, endpoint: str, failover: tuple[tuple[str, str], ...]) -> int:
    p, e = split_locality(proxy), split_locality(endpoint)
    if p[0] == e[0]:
        return 0 if p[1:] == e[1:] else 1 if p[1] == e[1] else 2
    for source, target in failover:
        if source == p[0]:
            return 3 if e[0] == target else 4
    return 3


def _label_priority(endpoint: Endpoint, plan: LocalityPlan) -> int:
    """How many failoverPriority labels, from the first, the endpoint shares with the proxy (fewer:
    lower priority)."""
    mine = {**dict(endpoint.labels), **topology_labels(endpoint.locality)}
    proxy = dict(plan.proxy_labels)
    matched = 0
    for item in plan.failover_priority:
        key, eq, forced = item.partition("=")
        wanted = forced if eq else proxy.get(key)
        if wanted is None or mine.get(key) != wanted:
            break
        matched += 1
    return len(plan.failover_priority) - matched


def locality_groups(
    pairs: Sequence[tuple[Endpoint, endpoint_components_pb2.LbEndpoint]], plan: LocalityPlan | None
) -> list[_Group]:
    """The LocalityLbEndpoints of one assignment, grouped by locality and shaped by `plan`."""
    by_locality: dict[str, list[tuple[Endpoint, endpoint_components_pb2.LbEndpoint]]] = defaultdict(list)
    for ep, lb in pairs:
        by_locality[ep.locality].append((ep, lb))
    localities = sorted(by_locality)
    if plan is None:
        return [_weighted_group(loc, by_locality[loc]) for loc in localities]
    if plan.distribute:
        return _distribute(by_locality, localities, plan)
    raw: dict[tuple[int, str], list[tuple[Endpoint, endpoint_components_pb2.LbEndpoint]]] = defaultdict(list)
    for loc in localities:
        for ep, lb in by_locality[loc]:
            rank = _label_priority(ep, plan) if plan.failover_priority else 0
            if not plan.failover_priority or plan.failover:
                rank = rank * 5 + _locality_priority(plan.proxy_locality, loc, plan.failover or ())
            raw[(rank, loc)].append((ep, lb))
    renumber = {rank: i for i, rank in enumerate(sorted({rank for rank, _ in raw}))}
    return [_weighted_group(loc, raw[(rank, loc)], priority=renumber[rank]) for rank, loc in sorted(raw)]


def _distribute(
    by_locality: Mapping[str, list[tuple[Endpoint, endpoint_components_pb2.LbEndpoint]]],
    localities: list[str],
    plan: LocalityPlan,
) -> list[_Group]:
    """Each `to` entry's weight split over the groups it matches (in proportion to their own
    weight, rounded up); a group that no entry matches gets no traffic."""
    groups = {loc: _weighted_group(loc, by_locality[loc]) for loc in localities}
    unmatched = list(localities)
    kept: list[str] = []
    for pattern, weight in plan.distribute:
        matched = [loc for loc in unmatched if locality_matches(loc, pattern)]
        total = sum(groups[loc].load_balancing_weight.value for loc in matched)
        for loc in matched:
            unmatched.remove(loc)
            share = groups[loc].load_balancing_weight.value * weight / total
            if share > 0:
                groups[loc].load_balancing_weight.value = math.ceil(share)
                kept.append(loc)
    return [groups[loc] for loc in localities if loc in kept]
