"""The effective DestinationRule traffic policy of one outbound cluster, as Istio merges it, and the
route hash policy a consistent-hash load balancer needs.

For `outbound|<port>|<subset>|<host>` Istio starts from the rule's top-level trafficPolicy; a
portLevelSettings entry for the port replaces loadBalancer, connectionPool, outlierDetection and tls
as a whole (a field it omits falls back to the default, it is not inherited); then each of those
fields the subset's trafficPolicy sets replaces the merged one, and the subset's own portLevelSettings
entry for the port replaces all four again.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2

from meshd.api.destinationrule import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    ConsistentHashLB,
    DestinationRule,
    LoadBalancerSettings,
    LocalityLbSetting,
    OutlierDetection,
    PortTrafficPolicy,
    ProxyProtocol,
    TrafficPolicy,
    TunnelSettings,
)
from meshd.translate.proto import duration

# Istio's mesh default (meshConfig.localityLbSetting): locality load balancing on, which becomes
# locality failover wherever outlier detection is configured.
MESH_LOCALITY_DEFAULT = LocalityLbSetting(enabled=True)


@dataclass(frozen=True)
class EffectivePolicy:
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    # not port-level settings in Istio: a port-level entry does not reset them
    tunnel: TunnelSettings | None = None
    proxy_protocol: ProxyProtocol | None = None

    @property
    def passthrough(self) -> bool:
        return self.load_balancer is not None and self.load_balancer.simple == "PASSTHROUGH"

    @property
    def consistent_hash(self) -> ConsistentHashLB | None:
        return self.load_balancer.consistent_hash if self.load_balancer is not None else None

    def locality_setting(self) -> LocalityLbSetting | None:
        """The locality setting in effect (the rule's, else the mesh default), None when disabled."""
        own = self.load_balancer.locality_lb_setting if self.load_balancer is not None else None
        setting = own if own is not None else MESH_LOCALITY_DEFAULT
        return None if setting.enabled is False else setting

    @property
    def locality_failover(self) -> bool:
        """Istio fails over between localities only with outlier detection (else nothing is ever
        ejected, so traffic would never move), and never with a distribute setting."""
        setting = self.locality_setting()
        return setting is not None and not setting.distribute and self.outlier_detection is not None


NO_POLICY = EffectivePolicy()


def _port_level(settings: list[PortTrafficPolicy], port: int) -> PortTrafficPolicy | None:
    return next((s for s in settings if s.port.number == port), None)


def _replace_all(level: PortTrafficPolicy, above: EffectivePolicy) -> EffectivePolicy:
    # A port-level entry does not inherit: what it omits goes back to the default (tunnel and proxyProtocol,
    # which have no port level, stay).
    return EffectivePolicy(
        level.load_balancer,
        level.connection_pool,
        level.outlier_detection,
        level.tls,
        above.tunnel,
        above.proxy_protocol,
    )


def _top_level(policy: TrafficPolicy | None, port: int) -> EffectivePolicy:
    if policy is None:
        return NO_POLICY
    merged = EffectivePolicy(
        policy.load_balancer,
        policy.connection_pool,
        policy.outlier_detection,
        policy.tls,
        policy.tunnel,
        policy.proxy_protocol,
    )
    level = _port_level(policy.port_level_settings, port)
    return _replace_all(level, merged) if level is not None else merged


def merge(top: TrafficPolicy | None, subset: TrafficPolicy | None, *, port: int) -> EffectivePolicy:
    """Istio's merge of a rule's top-level policy and a subset's policy for one port."""
    merged = _top_level(top, port)
    if subset is None:
        return merged
    merged = EffectivePolicy(
        subset.load_balancer if subset.load_balancer is not None else merged.load_balancer,
        subset.connection_pool if subset.connection_pool is not None else merged.connection_pool,
        subset.outlier_detection if subset.outlier_detection is not None else merged.outlier_detection,
        subset.tls if subset.tls is not None else merged.tls,
        subset.tunnel if subset.tunnel is not None else merged.tunnel,
        subset.proxy_protocol if subset.proxy_protocol is not None else merged.proxy_protocol,
    )
    level = _port_level(subset.port_level_settings, port)
    return _replace_all(level, merged) if level is not None else merged


def effective_policy(rule: DestinationRule | None, *, port: int, subset: str = "") -> EffectivePolicy:
    """The policy of `outbound|port|subset|host` under `rule` (NO_POLICY without a rule)."""
    if rule is None:
        return NO_POLICY
    spec = rule.spec
    chosen = spec.subset(subset) if subset else None
    return merge(spec.traffic_policy, chosen.traffic_policy if chosen is not None else None, port=port)


def hash_policies(policy: EffectivePolicy) -> list[route_components_pb2.RouteAction.HashPolicy]:
    """The route hash policy that feeds a RING_HASH / MAGLEV cluster (empty for other balancers)."""
    chash = policy.consistent_hash
    if chash is None or policy.passthrough:
        return []
    hp = route_components_pb2.RouteAction.HashPolicy
    if chash.http_header_name:
        return [hp(header=hp.Header(header_name=chash.http_header_name))]
    if chash.http_cookie is not None:
        cookie = hp.Cookie(name=chash.http_cookie.name, path=chash.http_cookie.path)
        if chash.http_cookie.ttl is not None:
            # With a ttl Envoy generates the cookie when the request has none.
            cookie.ttl.CopyFrom(duration(chash.http_cookie.ttl))
        return [hp(cookie=cookie)]
    if chash.use_source_ip:
        return [hp(connection_properties=hp.ConnectionProperties(source_ip=True))]
    if chash.http_query_parameter_name:
        return [hp(query_parameter=hp.QueryParameter(name=chash.http_query_parameter_name))]
    return []


def route_hash_policies(
    rule: DestinationRule | None, *, port: int, subset: str = ""
) -> list[route_components_pb2.RouteAction.HashPolicy]:
    return hash_policies(effective_policy(rule, port=port, subset=subset))


def failover_priority_labels(rule: DestinationRule) -> set[str]:
    """The labels a rule's failoverPriority settings (at any level) compare with the proxy's."""
    policies = [rule.spec.traffic_policy, *(s.traffic_policy for s in rule.spec.subsets)]
    found: set[str] = set()
    for policy in policies:
        if policy is None:
            continue
        balancers = [policy.load_balancer, *(p.load_balancer for p in policy.port_level_settings)]
        for lb in balancers:
            setting = lb.locality_lb_setting if lb is not None else None
            if setting is not None:
                found.update(item.partition("=")[0] for item in setting.failover_priority)
    return found
