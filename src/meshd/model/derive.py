"""How each kind of resource becomes part of the World: pure functions shared by the full build
(`build_world`) and the incremental one (`WorldState`), so both give the same answer."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from meshd.api.authorization import AuthorizationPolicy
from meshd.api.destinationrule import DestinationRule
from meshd.api.envoyfilter import EnvoyFilter
from meshd.api.gateway import Gateway
from meshd.api.kube import EndpointConditions, EndpointSlice, Pod, Service
from meshd.api.mesh import annotation_trusted_proxies
from meshd.api.meta import InvalidResource, Resource
from meshd.api.networking import ServiceEntry, Sidecar, WorkloadEntry
from meshd.api.security import PeerAuthentication
from meshd.api.values import valid_port
from meshd.api.virtualservice import VirtualService
from meshd.api.wasmplugin import WasmPlugin
from meshd.model.services import (
    DNS_RESOLUTIONS,
    Endpoint,
    MeshService,
    ServicePort,
    Workload,
    is_captured,
    locality_from_labels,
    protocol_of,
)

EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"
EndpointChunks = dict[tuple[str, int], list[tuple[Endpoint, ...]]]

MESH = "mesh"  # the reserved gateway name of every sidecar


def resolve_host(host: str, *, namespace: str, domain_suffix: str) -> str:
    """Istio's short-name rule: a host without dots is `<host>.<namespace>.svc.<suffix>`."""
    if "." in host or host == "*" or host.startswith("*"):
        return host
    return f"{host}.{namespace}.svc.{domain_suffix}"


def fqdn(name: str, namespace: str, suffix: str) -> str:
    return f"{name}.{namespace}.svc.{suffix}"


def age_key(resource: Resource) -> tuple[str, str, str]:
    return (resource.metadata.creation_timestamp or "~", resource.metadata.namespace, resource.metadata.name)


def endpoint_order(
    endpoint: Endpoint,
) -> tuple[str, int, tuple[tuple[str, str], ...], str, str, int, str, bool, str]:
    """A total order, so endpoints merged from several slices sort the same whatever their order."""
    e = endpoint
    return (e.address, e.port, e.labels, e.service_account, e.workload, e.weight, e.locality, e.captured, e.hostname)


def pod_workload(pod: Pod) -> Workload:
    trusted, problem = annotation_trusted_proxies(pod.metadata.annotations)
    return Workload(
        gateway_trusted_proxies=trusted,
        proxy_config_problem=problem,
        name=pod.metadata.name,
        namespace=pod.metadata.namespace,
        address=pod.status.pod_ip or "",
        labels=tuple(sorted(pod.metadata.labels.items())),
        service_account=pod.spec.service_account_name,
        locality=locality_from_labels(pod.metadata.labels),
        captured=is_captured(pod.metadata.annotations),
    )


def entry_workload(entry: WorkloadEntry) -> Workload:
    return Workload(
        name=entry.metadata.name,
        namespace=entry.metadata.namespace,
        address=entry.spec.address,
        labels=tuple(sorted(entry.spec.labels.items())),
        service_account=entry.spec.service_account or "default",
        locality=entry_locality(entry.spec.locality, entry.spec.labels),
    )


def entry_locality(locality: str, labels: dict[str, str]) -> str:
    """A WorkloadEntry's (or ServiceEntry endpoint's) locality: its `locality` field, else its labels."""
    return locality.strip("/") or locality_from_labels(labels)


def mesh_service(svc: Service, *, suffix: str) -> MeshService:
    ports = tuple(
        ServicePort(
            name=p.name,
            number=p.port,
            protocol=protocol_of(name=p.name, app_protocol=p.app_protocol, transport=p.protocol),
            target_port=p.target_port if p.target_port is not None else p.port,
        )
        for p in svc.spec.ports
    )
    # Headless (clusterIP None): no virtual address; the endpoints of its slices are load balanced by the
    # service's name like any other service's, and each pod is also reached by its own name and address
    # (`translate/headless.py`).
    addresses = (svc.spec.cluster_ip,) if svc.spec.cluster_ip and svc.spec.cluster_ip != "None" else ()
    headless = svc.spec.cluster_ip == "None" and not is_external_name(svc)
    export = svc.metadata.annotations.get(EXPORT_TO_ANNOTATION, "")
    return MeshService(
        hostname=fqdn(svc.metadata.name, svc.metadata.namespace, suffix),
        namespace=svc.metadata.namespace,
        name=svc.metadata.name,
        ports=ports,
        # ExternalName: Envoy resolves the external name (a STRICT_DNS cluster), as Istio does.
        resolution="DNS" if is_external_name(svc) else "EDS",
        addresses=addresses,
        creation=svc.metadata.creation_timestamp,
        export_to=tuple(t.strip() for t in export.split(",") if t.strip()),
        selector=tuple(sorted((svc.spec.selector or {}).items())),
        headless=headless,
    )


def is_external_name(svc: Service) -> bool:
    return svc.spec.type == "ExternalName" and bool(svc.spec.external_name)


def external_name_endpoints(svc: Service, service: MeshService) -> dict[tuple[str, int], tuple[Endpoint, ...]]:
    """An ExternalName service's one endpoint per port: the external name at the service port."""
    if not is_external_name(svc) or svc.spec.external_name is None:
        return {}
    name = svc.spec.external_name.rstrip(".")
    return {(service.hostname, p.number): (Endpoint(address=name, port=p.number),) for p in service.ports}


def serves_traffic(conditions: EndpointConditions) -> bool:
    """EndpointSlice conditions as Istio reads them for sidecars: `ready` unset means ready; an endpoint
    not ready, or terminating (even while still `serving`), leaves the load balancing set."""
    return conditions.ready is not False and conditions.terminating is not True


def slice_pod(eps: EndpointSlice, target: Any, pods: Mapping[tuple[str, str], Pod]) -> Pod | None:
    if target is not None and target.kind == "Pod":
        return pods.get((target.namespace or eps.metadata.namespace, target.name))
    return None


def slice_endpoints(
    eps: EndpointSlice,
    service: MeshService,
    *,
    pods: Mapping[tuple[str, str], Pod],
    workloads: Mapping[str, Workload],
) -> list[tuple[int, tuple[Endpoint, ...]]]:
    """(service port, sorted endpoints) for one slice; labels come from the pod behind each endpoint."""
    out = []
    for sp in service.ports:
        slice_port = next((p for p in eps.ports if p.name == sp.name), None)
        if slice_port is None and len(eps.ports) == 1 and len(service.ports) == 1:
            slice_port = eps.ports[0]
        if slice_port is None or slice_port.port is None or not valid_port(slice_port.port):
            continue
        endpoints = []
        for ep in eps.endpoints:
            if not serves_traffic(ep.conditions):
                continue
            pod = slice_pod(eps, ep.target_ref, pods)
            for address in ep.addresses:
                workload = workloads.get(address)
                if pod is not None:
                    labels = tuple(sorted(pod.metadata.labels.items()))
                    account, name = pod.spec.service_account_name, pod.metadata.name
                    locality = locality_from_labels(pod.metadata.labels)
                elif workload is not None:
                    labels, account, name = workload.labels, workload.service_account, workload.name
                    locality = workload.locality
                else:
                    labels, account, name, locality = (), "", "", ""
                if pod is not None:
                    captured = is_captured(pod.metadata.annotations)
                else:  # the pod at that address, as for its labels
                    captured = workload is not None and workload.captured
                endpoints.append(
                    Endpoint(
                        address=address,
                        port=slice_port.port,
                        labels=labels,
                        service_account=account,
                        workload=name,
                        locality=locality,
                        captured=captured,
                        hostname=ep.hostname or "",
                    )
                )
        out.append((sp.number, tuple(sorted(endpoints, key=endpoint_order))))
    return out


# ServiceEntry resolution -> MeshService resolution (STATIC endpoints are served over EDS)
_RESOLUTIONS = {"STATIC": "EDS", "DNS": "DNS", "DNS_ROUND_ROBIN": "DNS_ROUND_ROBIN"}


def service_entries(
    entries: Iterable[ServiceEntry],
    workload_entries: list[WorkloadEntry],
    *,
    taken: Mapping[str, MeshService],
    suffix: str,
) -> tuple[dict[str, MeshService], EndpointChunks, list[InvalidResource]]:
    """Services and endpoints declared by ServiceEntries (oldest first wins a host)."""
    services: dict[str, MeshService] = {}
    endpoints: EndpointChunks = defaultdict(list)
    errors: list[InvalidResource] = []
    for se in sorted(entries, key=age_key):
        ns = se.metadata.namespace
        ports = tuple(
            ServicePort(
                name=p.name or f"{p.protocol.lower()}-{p.number}",
                number=p.number,
                protocol=protocol_of(name=p.name, declared=p.protocol),
                target_port=p.target_port or p.number,
            )
            for p in se.spec.ports
        )
        resolution = {"STATIC": "EDS", "DNS": "DNS", "DNS_ROUND_ROBIN": "DNS_ROUND_ROBIN"}.get(
            se.spec.resolution, "NONE"
        )
        specs = list(se.spec.endpoints)
        if se.spec.workload_selector is not None:
            selector = se.spec.workload_selector.labels
            specs = [
                e.spec
                for e in workload_entries
                if e.metadata.namespace == ns and all(e.spec.labels.get(k) == v for k, v in selector.items())
            ]
        for host in se.spec.hosts:
            host_fqdn = resolve_host(host, namespace=ns, domain_suffix=suffix)
            if host_fqdn in taken or host_fqdn in services:
                errors.append(InvalidResource(se.key, "spec.hosts", f"host {host_fqdn} is already defined"))
                continue
            services[host_fqdn] = MeshService(
                hostname=host_fqdn,
                namespace=ns,
                name=se.metadata.name,
                ports=ports,
                resolution=resolution,
                addresses=tuple(se.spec.addresses),
                creation=se.metadata.creation_timestamp,
                export_to=tuple(se.spec.export_to),
                mesh_external=se.spec.location == "MESH_EXTERNAL",
                subject_alt_names=tuple(se.spec.subject_alt_names),
            )
            for port in ports:
                for spec in specs:
                    address = spec.address or (host if resolution in DNS_RESOLUTIONS else "")
                    if not address:
                        continue
                    endpoint_port = spec.ports.get(port.name, int(port.target_port or port.number))
                    if not valid_port(endpoint_port):  # the last guard: Envoy refuses the whole EDS update
                        errors.append(
                            InvalidResource(
                                se.key, "spec.endpoints", f"{address}: port {endpoint_port} not in 1..65535"
                            )
                        )
                        continue
                    endpoint = Endpoint(
                        address=address,
                        port=endpoint_port,
                        labels=tuple(sorted(spec.labels.items())),
                        service_account=spec.service_account,
                        weight=spec.weight,
                        locality=entry_locality(spec.locality, spec.labels),
                    )
                    endpoints[(host_fqdn, port.number)].append((endpoint,))
                if resolution in DNS_RESOLUTIONS and not specs:
                    target = int(port.target_port or port.number)
                    endpoints[(host_fqdn, port.number)].append((Endpoint(address=host, port=target),))
    return services, endpoints, errors


def virtual_services_by_host(vss: Iterable[VirtualService], *, suffix: str) -> dict[str, tuple[VirtualService, ...]]:
    by_host: dict[str, list[VirtualService]] = defaultdict(list)
    for vs in sorted(vss, key=age_key):
        if vs.spec.gateways and MESH not in vs.spec.gateways:
            continue
        for host in vs.spec.hosts:
            by_host[resolve_host(host, namespace=vs.metadata.namespace, domain_suffix=suffix)].append(vs)
    return {h: tuple(v) for h, v in sorted(by_host.items())}


def gateway_reference(name: str, *, namespace: str) -> tuple[str, str]:
    """A VirtualService's gateway name as (namespace, name): a short name is in its own namespace."""
    ns, slash, short = name.partition("/")
    return (ns, short) if slash else (namespace, name)


def gateway_bindings(vss: Iterable[VirtualService]) -> dict[tuple[str, str], tuple[VirtualService, ...]]:
    """The VirtualServices bound (top-level `gateways`) to each Gateway they name, oldest first; the
    key is the reference, whether or not that Gateway exists."""
    by_gateway: dict[tuple[str, str], list[VirtualService]] = defaultdict(list)
    for vs in sorted(vss, key=age_key):
        for name in dict.fromkeys(vs.spec.gateways):
            if name != MESH:
                by_gateway[gateway_reference(name, namespace=vs.metadata.namespace)].append(vs)
    return {key: tuple(v) for key, v in sorted(by_gateway.items())}


def gateways_by_key(gateways: Iterable[Gateway]) -> dict[tuple[str, str], Gateway]:
    """Every Gateway by (namespace, name), oldest first (the older server wins a conflict)."""
    return {(g.metadata.namespace, g.metadata.name): g for g in sorted(gateways, key=age_key)}


def source_selectors(vss: Iterable[VirtualService]) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The distinct sourceLabels selectors used by any http, tcp or tls match, sorted."""
    found: set[tuple[tuple[str, str], ...]] = set()
    for vs in vss:
        matches = [m.source_labels for http in vs.spec.http for m in http.match]
        matches += [m.source_labels for tcp in vs.spec.tcp for m in tcp.match]
        matches += [m.source_labels for tls in vs.spec.tls for m in tls.match]
        found.update(tuple(sorted(labels.items())) for labels in matches if labels)
    return tuple(sorted(found))


RuleSelector = tuple[str, tuple[tuple[str, str], ...]]  # (namespace, matchLabels) of a DestinationRule


def rule_selector(rule: DestinationRule) -> RuleSelector | None:
    """The workloads a DestinationRule's workloadSelector picks: its namespace and labels (None: every proxy
    the rule is exported to)."""
    selector = rule.spec.workload_selector
    if selector is None:
        return None
    return rule.metadata.namespace, tuple(sorted(selector.match_labels.items()))


def rule_selectors(rules_by_host: Mapping[str, tuple[DestinationRule, ...]]) -> tuple[RuleSelector, ...]:
    """The distinct workload selectors of DestinationRules, sorted (a proxy's scope records which select it)."""
    found = {s for rules in rules_by_host.values() for r in rules if (s := rule_selector(r)) is not None}
    return tuple(sorted(found))


def default_rule(
    host: str, candidates: Iterable[DestinationRule], services: Mapping[str, MeshService]
) -> DestinationRule | None:
    """The rule for a proxy with none closer: the one in the service's own namespace, else the oldest
    (rules with a workload selector apply only to the workloads they select: never a default)."""
    candidates = [r for r in candidates if r.spec.workload_selector is None]
    if not candidates:
        return None
    service = services.get(host)
    if service is not None:
        for rule in candidates:
            if rule.metadata.namespace == service.namespace:
                return rule
    return candidates[0]


def destination_rules_by_host(
    drs: Iterable[DestinationRule], *, suffix: str
) -> tuple[dict[str, tuple[DestinationRule, ...]], list[InvalidResource]]:
    """One rule per namespace per host, and one per workload selector (oldest first); another one in the same
    namespace with the same selector (or none) is reported."""
    by_host: dict[str, list[DestinationRule]] = defaultdict(list)
    errors: list[InvalidResource] = []
    for dr in sorted(drs, key=age_key):
        host = resolve_host(dr.spec.host, namespace=dr.metadata.namespace, domain_suffix=suffix)
        selector = rule_selector(dr)
        same = [
            r for r in by_host[host] if r.metadata.namespace == dr.metadata.namespace and rule_selector(r) == selector
        ]
        if same:
            field = "spec.host" if selector is None else "spec.workloadSelector"
            what = "" if selector is None else " for the same workloads"
            errors.append(
                InvalidResource(dr.key, field, f"{host} already has {same[0].key}{what}; this rule is ignored")
            )
            continue
        by_host[host].append(dr)
    return {h: tuple(v) for h, v in sorted(by_host.items())}, errors


def sidecars_by_namespace(sidecars: Iterable[Sidecar]) -> dict[str, tuple[Sidecar, ...]]:
    by_ns: dict[str, list[Sidecar]] = defaultdict(list)
    for sc in sorted(sidecars, key=age_key):
        by_ns[sc.metadata.namespace].append(sc)
    return {ns: tuple(v) for ns, v in sorted(by_ns.items())}


def peer_authentications_by_namespace(
    policies: Iterable[PeerAuthentication],
) -> dict[str, tuple[PeerAuthentication, ...]]:
    by_ns: dict[str, list[PeerAuthentication]] = defaultdict(list)
    for policy in sorted(policies, key=age_key):
        by_ns[policy.metadata.namespace].append(policy)
    return {ns: tuple(v) for ns, v in sorted(by_ns.items())}


_R = TypeVar("_R", bound=Resource)


def oldest_first_by_namespace(resources: Iterable[_R]) -> dict[str, tuple[_R, ...]]:
    """Resources grouped by namespace, each group oldest first (then by name)."""
    by_ns: dict[str, list[_R]] = defaultdict(list)
    for resource in sorted(resources, key=age_key):
        by_ns[resource.metadata.namespace].append(resource)
    return {ns: tuple(v) for ns, v in sorted(by_ns.items())}


def authorization_policies_by_namespace(
    policies: Iterable[AuthorizationPolicy],
) -> dict[str, tuple[AuthorizationPolicy, ...]]:
    """Per namespace, its policies by name (Istio evaluates them as one set: order only names rules)."""
    by_ns: dict[str, list[AuthorizationPolicy]] = defaultdict(list)
    for policy in sorted(policies, key=lambda p: (p.metadata.namespace, p.metadata.name)):
        by_ns[policy.metadata.namespace].append(policy)
    return {ns: tuple(v) for ns, v in sorted(by_ns.items())}


def envoy_filters_by_namespace(filters: Iterable[EnvoyFilter]) -> dict[str, tuple[EnvoyFilter, ...]]:
    """Per namespace, its EnvoyFilters in Istio's order of application: priority, then creation time, then name."""
    by_ns: dict[str, list[EnvoyFilter]] = defaultdict(list)
    for found in sorted(
        filters,
        key=lambda f: (f.metadata.namespace, f.spec.priority, f.metadata.creation_timestamp, f.metadata.name),
    ):
        by_ns[found.metadata.namespace].append(found)
    return {ns: tuple(v) for ns, v in sorted(by_ns.items())}


def by_namespace_and_name(plugins: Iterable[WasmPlugin]) -> dict[str, tuple[WasmPlugin, ...]]:
    """Per namespace, its WasmPlugins by name (translation orders them by phase and priority)."""
    by_ns: dict[str, list[WasmPlugin]] = defaultdict(list)
    for plugin in sorted(plugins, key=lambda p: (p.metadata.namespace, p.metadata.name)):
        by_ns[plugin.metadata.namespace].append(plugin)
    return {ns: tuple(v) for ns, v in sorted(by_ns.items())}


def merge_chunks(chunks: list[tuple[Endpoint, ...]]) -> tuple[Endpoint, ...]:
    """Endpoints of one (host, port) from its slices; a single slice's sorted tuple is kept as is."""
    if len(chunks) == 1:
        return chunks[0]
    return tuple(sorted((e for chunk in chunks for e in chunk), key=endpoint_order))
