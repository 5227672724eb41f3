"""World: an immutable, indexed snapshot of the mesh, rebuilt from the store on each change.

Indexes: services by hostname, endpoints by (hostname, port), VirtualServices by host,
DestinationRules by host, workloads by address. Building it never raises: semantic problems
become InvalidResource entries in `errors`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from meshd.api.kube import EndpointSlice, Pod, Service
from meshd.api.meta import InvalidResource, Resource
from meshd.api.networking import DestinationRule, ServiceEntry, Sidecar, VirtualService, WorkloadEntry
from meshd.model.services import Endpoint, MeshService, ServicePort, Workload, protocol_of

EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"


def resolve_host(host: str, *, namespace: str, domain_suffix: str) -> str:
    """Istio's short-name rule: a host without dots is `<host>.<namespace>.svc.<suffix>`."""
    if "." in host or host == "*" or host.startswith("*"):
        return host
    return f"{host}.{namespace}.svc.{domain_suffix}"


def _age_key(resource: Resource) -> tuple[str, str, str]:
    return (resource.metadata.creation_timestamp or "~", resource.metadata.namespace, resource.metadata.name)


@dataclass(frozen=True)
class World:
    domain_suffix: str
    services: Mapping[str, MeshService]
    endpoints: Mapping[tuple[str, int], tuple[Endpoint, ...]]
    virtual_services: Mapping[str, tuple[VirtualService, ...]]  # resolved host -> oldest first
    destination_rules: Mapping[str, DestinationRule]  # host -> the rule a proxy with no closer one uses
    rules_by_host: Mapping[str, tuple[DestinationRule, ...]]  # host -> one rule per namespace, oldest first
    sidecars: Mapping[str, tuple[Sidecar, ...]]  # namespace -> Sidecars, oldest first
    workloads: Mapping[str, Workload]  # address -> workload
    errors: tuple[InvalidResource, ...]
    revision: int = 0

    def services_on_port(self, number: int) -> list[MeshService]:
        return [s for s in self.services.values() if s.port(number) is not None]


class _Builder:
    def __init__(self, domain_suffix: str) -> None:
        self.suffix = domain_suffix
        self.services: dict[str, MeshService] = {}
        self.endpoints: dict[tuple[str, int], list[Endpoint]] = defaultdict(list)
        self.errors: list[InvalidResource] = []
        self.pods: dict[tuple[str, str], Pod] = {}
        self.workloads: dict[str, Workload] = {}

    def fqdn(self, name: str, namespace: str) -> str:
        return f"{name}.{namespace}.svc.{self.suffix}"

    def add_pod(self, pod: Pod) -> None:
        self.pods[(pod.metadata.namespace, pod.metadata.name)] = pod
        if pod.status.pod_ip:
            self.workloads[pod.status.pod_ip] = Workload(
                name=pod.metadata.name,
                namespace=pod.metadata.namespace,
                address=pod.status.pod_ip,
                labels=tuple(sorted(pod.metadata.labels.items())),
                service_account=pod.spec.service_account_name,
            )

    def add_workload_entry(self, entry: WorkloadEntry) -> None:
        if entry.spec.address:
            self.workloads.setdefault(
                entry.spec.address,
                Workload(
                    name=entry.metadata.name,
                    namespace=entry.metadata.namespace,
                    address=entry.spec.address,
                    labels=tuple(sorted(entry.spec.labels.items())),
                    service_account=entry.spec.service_account or "default",
                ),
            )

    def add_service(self, svc: Service) -> None:
        host = self.fqdn(svc.metadata.name, svc.metadata.namespace)
        ports = tuple(
            ServicePort(
                name=p.name,
                number=p.port,
                protocol=protocol_of(name=p.name, app_protocol=p.app_protocol),
                target_port=p.target_port if p.target_port is not None else p.port,
            )
            for p in svc.spec.ports
        )
        addresses = (svc.spec.cluster_ip,) if svc.spec.cluster_ip and svc.spec.cluster_ip != "None" else ()
        export = svc.metadata.annotations.get(EXPORT_TO_ANNOTATION, "")
        export_to = tuple(t.strip() for t in export.split(",") if t.strip())
        self.services[host] = MeshService(
            hostname=host,
            namespace=svc.metadata.namespace,
            name=svc.metadata.name,
            ports=ports,
            addresses=addresses,
            creation=svc.metadata.creation_timestamp,
            export_to=export_to,
        )

    def add_slice(self, eps: EndpointSlice) -> None:
        name = eps.service_name
        if not name:
            return
        service = self.services.get(self.fqdn(name, eps.metadata.namespace))
        if service is None:
            return
        for sp in service.ports:
            slice_port = next((p for p in eps.ports if p.name == sp.name), None)
            if slice_port is None and len(eps.ports) == 1 and len(service.ports) == 1:
                slice_port = eps.ports[0]
            if slice_port is None or slice_port.port is None:
                continue
            for ep in eps.endpoints:
                if ep.conditions.ready is False:
                    continue
                pod = None
                if ep.target_ref is not None and ep.target_ref.kind == "Pod":
                    pod = self.pods.get((ep.target_ref.namespace or eps.metadata.namespace, ep.target_ref.name))
                for address in ep.addresses:
                    workload = self.workloads.get(address)
                    if pod is not None:
                        labels = tuple(sorted(pod.metadata.labels.items()))
                        account, wname = pod.spec.service_account_name, pod.metadata.name
                    elif workload is not None:
                        labels, account, wname = workload.labels, workload.service_account, workload.name
                    else:
                        labels, account, wname = (), "", ""
                    self.endpoints[(service.hostname, sp.number)].append(
                        Endpoint(
                            address=address,
                            port=slice_port.port,
                            labels=labels,
                            service_account=account,
                            workload=wname,
                        )
                    )

    def add_service_entry(self, se: ServiceEntry, entries: list[WorkloadEntry]) -> None:
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
        resolution = {"STATIC": "EDS", "DNS": "DNS", "DNS_ROUND_ROBIN": "DNS"}.get(se.spec.resolution, "NONE")
        specs = list(se.spec.endpoints)
        if se.spec.workload_selector is not None:
            selector = se.spec.workload_selector.labels
            specs = [
                e.spec
                for e in entries
                if e.metadata.namespace == ns and all(e.spec.labels.get(k) == v for k, v in selector.items())
            ]
        for host in se.spec.hosts:
            fqdn = resolve_host(host, namespace=ns, domain_suffix=self.suffix)
            if fqdn in self.services:
                self.errors.append(InvalidResource(se.key, "spec.hosts", f"host {fqdn} is already defined"))
                continue
            self.services[fqdn] = MeshService(
                hostname=fqdn,
                namespace=ns,
                name=se.metadata.name,
                ports=ports,
                resolution=resolution,
                addresses=tuple(se.spec.addresses),
                creation=se.metadata.creation_timestamp,
                export_to=tuple(se.spec.export_to),
            )
            for port in ports:
                for spec in specs:
                    address = spec.address or (host if resolution == "DNS" else "")
                    if not address:
                        continue
                    self.endpoints[(fqdn, port.number)].append(
                        Endpoint(
                            address=address,
                            port=spec.ports.get(port.name, int(port.target_port or port.number)),
                            labels=tuple(sorted(spec.labels.items())),
                            service_account=spec.service_account,
                            weight=spec.weight,
                        )
                    )
                if resolution == "DNS" and not specs:
                    self.endpoints[(fqdn, port.number)].append(Endpoint(address=host, port=port.number))


def default_rule(host: str, candidates: list[DestinationRule], services: Mapping[str, MeshService]) -> DestinationRule:
    """The rule for a proxy with none closer: the one in the service's own namespace, else the oldest."""
    service = services.get(host)
    if service is not None:
        for rule in candidates:
            if rule.metadata.namespace == service.namespace:
                return rule
    return candidates[0]


def build_world(resources: Iterable[Resource], *, domain_suffix: str, revision: int = 0) -> World:
    """Index every resource. Pure: the same resources always give an equal World."""
    by_kind: dict[str, list[Resource]] = defaultdict(list)
    for resource in resources:
        by_kind[resource.kind].append(resource)
    b = _Builder(domain_suffix)
    for pod in by_kind["Pod"]:
        assert isinstance(pod, Pod)
        b.add_pod(pod)
    entries = [e for e in by_kind["WorkloadEntry"] if isinstance(e, WorkloadEntry)]
    for entry in entries:
        b.add_workload_entry(entry)
    for svc in by_kind["Service"]:
        assert isinstance(svc, Service)
        b.add_service(svc)
    for eps in by_kind["EndpointSlice"]:
        assert isinstance(eps, EndpointSlice)
        b.add_slice(eps)
    for se in sorted(by_kind["ServiceEntry"], key=_age_key):
        assert isinstance(se, ServiceEntry)
        b.add_service_entry(se, entries)

    vs_by_host: dict[str, list[VirtualService]] = defaultdict(list)
    for vs in sorted(by_kind["VirtualService"], key=_age_key):
        assert isinstance(vs, VirtualService)
        if vs.spec.gateways and "mesh" not in vs.spec.gateways:
            continue
        for host in vs.spec.hosts:
            vs_by_host[resolve_host(host, namespace=vs.metadata.namespace, domain_suffix=domain_suffix)].append(vs)

    rules_by_host: dict[str, list[DestinationRule]] = defaultdict(list)
    for dr in sorted(by_kind["DestinationRule"], key=_age_key):
        assert isinstance(dr, DestinationRule)
        host = resolve_host(dr.spec.host, namespace=dr.metadata.namespace, domain_suffix=domain_suffix)
        same_ns = [r for r in rules_by_host[host] if r.metadata.namespace == dr.metadata.namespace]
        if same_ns:
            b.errors.append(
                InvalidResource(dr.key, "spec.host", f"{host} already has {same_ns[0].key}; this rule is ignored")
            )
            continue
        rules_by_host[host].append(dr)
    rules = {host: default_rule(host, candidates, b.services) for host, candidates in rules_by_host.items()}

    sidecars: dict[str, list[Sidecar]] = defaultdict(list)
    for sc in sorted(by_kind["Sidecar"], key=_age_key):
        assert isinstance(sc, Sidecar)
        sidecars[sc.metadata.namespace].append(sc)

    endpoints = {key: tuple(sorted(eps, key=lambda e: (e.address, e.port))) for key, eps in sorted(b.endpoints.items())}
    return World(
        domain_suffix=domain_suffix,
        services=MappingProxyType(dict(sorted(b.services.items()))),
        endpoints=MappingProxyType(endpoints),
        virtual_services=MappingProxyType({h: tuple(v) for h, v in sorted(vs_by_host.items())}),
        destination_rules=MappingProxyType(rules),
        rules_by_host=MappingProxyType({h: tuple(v) for h, v in sorted(rules_by_host.items())}),
        sidecars=MappingProxyType({ns: tuple(v) for ns, v in sorted(sidecars.items())}),
        workloads=MappingProxyType(dict(sorted(b.workloads.items()))),
        errors=tuple(b.errors),
        revision=revision,
    )
