"""A synthetic mesh as Kubernetes objects, for the side-by-side benchmark (scenario_peer.py): what a
cluster holds when its users run the mesh of meshdir.py, written through a real API server so that
meshd and istiod read the very same objects.

Per service `svc-i` in namespace `ns-(i % namespaces)`: a Service (port 9080 `http`, target 8080), its
Pods (labels app, version v1/v2 alternating, security.istio.io/tlsMode: istio; status Running with a
pod IP), one EndpointSlice listing them (targetRef to each Pod), a DestinationRule with subsets v1/v2;
a VirtualService (v1/v2 weights) for every tenth service; an optional Sidecar (`./*`) per namespace.
Istio objects are `networking.istio.io/v1beta1`, a version both Istio 1.14's CRDs serve and meshd reads.

With `mix` (the cell flag `/mix`: wave 2's kinds in the mix), besides: an ingress gateway in istio-system
(a Service `istio-ingressgateway` 80 -> 8080, `gateways` router pods and proxies, an Istio Gateway for
`*.example.com`, and for every service with a VirtualService a second one, `gw-svc-i`, binding
`svc-i.example.com` to it); a mesh-wide STRICT PeerAuthentication and a mesh-wide Telemetry turning on
the `envoy` access log; per namespace an ALLOW AuthorizationPolicy (from its own namespace and
istio-system, GET/POST to /api/* and /healthz), a DENY one on its first service (/admin*) and a
Telemetry removing `request_host` from the request count; an ALLOW policy on the gateway (its hosts).

Every pod is a proxy's workload: proxy k is pod k // services of service k % services, so the pods per
service are ceil(proxies / services) (at least 2). Pod IPs are 10.1.0.0/16 upwards: a real API server
refuses loopback endpoint addresses, and nothing ever dials these (the load client only talks to the
control plane on 127.0.0.1). The endpoint edit: a "moving" service has two more v1 pods, m0 and m1, and
its EndpointSlice lists one of them, in turn: one pod leaves, another joins, as in a rolling update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DOMAIN = "cluster.local"
NET = "networking.istio.io/v1beta1"
SECURITY = "security.istio.io/v1beta1"
TELEMETRY = "telemetry.istio.io/v1alpha1"
ROOT = "istio-system"  # the mesh's root namespace (meshd's and istiod's default), where the gateway runs
GATEWAY_LABELS = {"istio": "ingressgateway", "app": "istio-ingressgateway"}
ISTIO_VERSION = "1.14.6"
CLUSTER_ID = "Kubernetes"

Obj = dict[str, Any]


@dataclass(frozen=True)
class KubeMeshSpec:
    services: int
    namespaces: int
    proxies: int
    sidecar: bool
    moving: tuple[int, ...] = ()  # services whose endpoints the benchmark edits
    vs_every: int = 10  # services i with i % vs_every == 1 get a VirtualService
    port: int = 9080
    mix: bool = False  # gateways, authorization and telemetry config too (module docstring)
    gateways: int = 2  # with mix: ingress gateway pods, each a router proxy

    @property
    def pods_per_service(self) -> int:
        return max(2, -(-self.proxies // self.services))


class KubeMesh:
    def __init__(self, spec: KubeMeshSpec) -> None:
        if spec.services * (spec.pods_per_service + 2) > 62500 * 90 or spec.services > 62500:
            raise ValueError("mesh too large for the address plan")
        self.spec = spec
        self.generation = {i: 0 for i in spec.moving}
        self.weights = {i: 90 for i in range(spec.services) if i % spec.vs_every == 1}

    # -- names and addresses ---------------------------------------------------------------------

    def namespace(self, i: int) -> str:
        return f"ns-{i % self.spec.namespaces}"

    def namespaces(self) -> list[str]:
        return [f"ns-{n}" for n in range(min(self.spec.namespaces, self.spec.services))]

    def host(self, i: int) -> str:
        return f"svc-{i}.{self.namespace(i)}.svc.{DOMAIN}"

    def moving_eds_names(self, i: int) -> list[str]:
        """The EDS clusters an endpoint edit of service i changes: all its endpoints, and subset v1."""
        return [f"outbound|{self.spec.port}|{subset}|{self.host(i)}" for subset in ("", "v1")]

    def vs_refs(self, i: int) -> str:
        """How a route configuration names service i's virtual host (Istio's `host:port`), \\n-framed."""
        return f"\n{self.host(i)}:{self.spec.port}\n"

    def pod_ip(self, i: int, e: int) -> str:
        k = i * self.spec.pods_per_service + e
        return f"10.{1 + k // 62500}.{(k // 250) % 250 + 1}.{k % 250 + 1}"

    def moving_ip(self, i: int, m: int) -> str:
        return f"10.{200 + m}.{i // 250 + 1}.{i % 250 + 1}"

    def version(self, e: int) -> str:
        return "v1" if e % 2 == 0 else "v2"

    def labels(self, i: int, version: str) -> dict[str, str]:
        return {"app": f"svc-{i}", "version": version, "security.istio.io/tlsMode": "istio"}

    def proxy(self, k: int) -> tuple[str, dict[str, Any]]:
        """Node id and node metadata of proxy k, as an injected sidecar sends them (capture mode)."""
        s = self.spec.services
        i, e = k % s, k // s
        ns, pod = self.namespace(i), f"svc-{i}-{e}"
        node_id = f"sidecar~{self.pod_ip(i, e)}~{pod}.{ns}~{ns}.svc.{DOMAIN}"
        metadata = {
            "NAMESPACE": ns,
            "NAME": pod,
            "CLUSTER_ID": CLUSTER_ID,
            "ISTIO_VERSION": ISTIO_VERSION,
            "INTERCEPTION_MODE": "REDIRECT",
            "LABELS": self.labels(i, self.version(e)),
            "SDS": "true",  # a meshd agent's flag: its Envoy has SDS for workload certificates (istiod ignores it)
        }
        return node_id, metadata

    def proxies(self) -> list[tuple[str, dict[str, Any]]]:
        if self.spec.proxies > self.spec.services * self.spec.pods_per_service:
            raise ValueError("more proxies than pods")
        out = [self.proxy(k) for k in range(self.spec.proxies)]
        if self.spec.mix:
            out += [self.gateway_proxy(g) for g in range(self.spec.gateways)]
        return out

    def gateway_ip(self, g: int) -> str:
        return f"10.250.0.{g + 1}"

    def gateway_proxy(self, g: int) -> tuple[str, dict[str, Any]]:
        """Node id and metadata of ingress gateway g, as Istio's gateway deployment sends them."""
        pod = f"istio-ingressgateway-{g}"
        node_id = f"router~{self.gateway_ip(g)}~{pod}.{ROOT}~{ROOT}.svc.{DOMAIN}"
        metadata = {
            "NAMESPACE": ROOT,
            "NAME": pod,
            "CLUSTER_ID": CLUSTER_ID,
            "ISTIO_VERSION": ISTIO_VERSION,
            "LABELS": GATEWAY_LABELS,
            "SDS": "true",
        }
        return node_id, metadata

    # -- objects ----------------------------------------------------------------------------------

    def namespace_objects(self) -> list[Obj]:
        return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in self.namespaces()]

    def _pod(self, i: int, name: str, version: str, ip: str) -> tuple[Obj, Obj]:
        return _pod(name, self.namespace(i), self.labels(i, version), ip)

    def gateway_pods(self) -> list[tuple[Obj, Obj]]:
        if not self.spec.mix:
            return []
        return [
            _pod(f"istio-ingressgateway-{g}", ROOT, GATEWAY_LABELS, self.gateway_ip(g))
            for g in range(self.spec.gateways)
        ]

    def pods(self, i: int) -> list[tuple[Obj, Obj]]:
        out = [
            self._pod(i, f"svc-{i}-{e}", self.version(e), self.pod_ip(i, e)) for e in range(self.spec.pods_per_service)
        ]
        if i in self.generation:
            out += [self._pod(i, f"svc-{i}-m{m}", "v1", self.moving_ip(i, m)) for m in (0, 1)]
        return out

    def service(self, i: int) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"svc-{i}", "namespace": self.namespace(i)},
            "spec": {
                "selector": {"app": f"svc-{i}"},
                "ports": [{"name": "http", "port": self.spec.port, "targetPort": 8080, "protocol": "TCP"}],
            },
        }

    def endpoint_slice(self, i: int) -> Obj:
        ns = self.namespace(i)
        members = [(f"svc-{i}-{e}", self.pod_ip(i, e)) for e in range(self.spec.pods_per_service)]
        if i in self.generation:
            m = self.generation[i] % 2
            members.append((f"svc-{i}-m{m}", self.moving_ip(i, m)))
        return _endpoint_slice(f"svc-{i}", ns, "http", members)

    def destination_rule(self, i: int) -> Obj:
        return {
            "apiVersion": NET,
            "kind": "DestinationRule",
            "metadata": {"name": f"svc-{i}", "namespace": self.namespace(i)},
            "spec": {
                "host": f"svc-{i}",
                "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")],
            },
        }

    def virtual_service(self, i: int) -> Obj:
        v1 = self.weights[i]
        return {
            "apiVersion": NET,
            "kind": "VirtualService",
            "metadata": {"name": f"svc-{i}", "namespace": self.namespace(i)},
            "spec": {
                "hosts": [f"svc-{i}"],
                "http": [
                    {
                        "route": [
                            {"destination": {"host": f"svc-{i}", "subset": "v1"}, "weight": v1},
                            {"destination": {"host": f"svc-{i}", "subset": "v2"}, "weight": 100 - v1},
                        ]
                    }
                ],
            },
        }

    def sidecar(self, ns: str) -> Obj:
        return {
            "apiVersion": NET,
            "kind": "Sidecar",
            "metadata": {"name": "default", "namespace": ns},
            "spec": {"egress": [{"hosts": ["./*"]}]},
        }

    def config_objects(self) -> list[Obj]:
        """Everything but namespaces and pods, in an order a reader may see them in."""
        out: list[Obj] = []
        for i in range(self.spec.services):
            out += [self.service(i), self.endpoint_slice(i), self.destination_rule(i)]
        out += [self.virtual_service(i) for i in sorted(self.weights)]
        if self.spec.sidecar:
            out += [self.sidecar(ns) for ns in self.namespaces()]
        if self.spec.mix:
            out += self.mix_objects()
        return out

    # -- the mix: gateways, authorization, telemetry ----------------------------------------------

    def mix_objects(self) -> list[Obj]:
        ips = [self.gateway_ip(g) for g in range(self.spec.gateways)]
        out: list[Obj] = [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "istio-ingressgateway", "namespace": ROOT, "labels": GATEWAY_LABELS},
                "spec": {
                    "selector": GATEWAY_LABELS,
                    "ports": [{"name": "http2", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
                },
            },
            _endpoint_slice(
                "istio-ingressgateway", ROOT, "http2", [(f"istio-ingressgateway-{g}", ip) for g, ip in enumerate(ips)]
            ),
            {
                "apiVersion": NET,
                "kind": "Gateway",
                "metadata": {"name": "bench-gw", "namespace": ROOT},
                "spec": {
                    "selector": {"istio": "ingressgateway"},
                    "servers": [
                        {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*.example.com"]}
                    ],
                },
            },
            {
                "apiVersion": SECURITY,
                "kind": "PeerAuthentication",
                "metadata": {"name": "default", "namespace": ROOT},
                "spec": {"mtls": {"mode": "STRICT"}},
            },
            {
                "apiVersion": TELEMETRY,
                "kind": "Telemetry",
                "metadata": {"name": "mesh-default", "namespace": ROOT},
                "spec": {"accessLogging": [{"providers": [{"name": "envoy"}]}]},
            },
            {
                "apiVersion": SECURITY,
                "kind": "AuthorizationPolicy",
                "metadata": {"name": "ingress-hosts", "namespace": ROOT},
                "spec": {
                    "selector": {"matchLabels": {"istio": "ingressgateway"}},
                    "action": "ALLOW",
                    "rules": [{"to": [{"operation": {"hosts": ["*.example.com"]}}]}],
                },
            },
        ]
        out += [self.gateway_route(i) for i in sorted(self.weights)]
        first_of: dict[str, int] = {}
        for i in range(self.spec.services):
            first_of.setdefault(self.namespace(i), i)
        for ns in self.namespaces():
            out += [
                {
                    "apiVersion": SECURITY,
                    "kind": "AuthorizationPolicy",
                    "metadata": {"name": "allow-ns", "namespace": ns},
                    "spec": {
                        "action": "ALLOW",
                        "rules": [
                            {
                                "from": [{"source": {"namespaces": [ns, ROOT]}}],
                                "to": [{"operation": {"methods": ["GET", "POST"], "paths": ["/api/*", "/healthz"]}}],
                            }
                        ],
                    },
                },
                {
                    "apiVersion": SECURITY,
                    "kind": "AuthorizationPolicy",
                    "metadata": {"name": "deny-admin", "namespace": ns},
                    "spec": {
                        "selector": {"matchLabels": {"app": f"svc-{first_of[ns]}"}},
                        "action": "DENY",
                        "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}],
                    },
                },
                {
                    "apiVersion": TELEMETRY,
                    "kind": "Telemetry",
                    "metadata": {"name": "metrics", "namespace": ns},
                    "spec": {
                        "metrics": [
                            {
                                "providers": [{"name": "prometheus"}],
                                "overrides": [
                                    {
                                        "match": {"metric": "REQUEST_COUNT"},
                                        "tagOverrides": {"request_host": {"operation": "REMOVE"}},
                                    }
                                ],
                            }
                        ]
                    },
                },
            ]
        return out

    def gateway_route(self, i: int) -> Obj:
        """Service i's host on the ingress gateway: svc-i.example.com to its v1 subset."""
        return {
            "apiVersion": NET,
            "kind": "VirtualService",
            "metadata": {"name": f"gw-svc-{i}", "namespace": self.namespace(i)},
            "spec": {
                "hosts": [f"svc-{i}.example.com"],
                "gateways": [f"{ROOT}/bench-gw"],
                "http": [{"route": [{"destination": {"host": self.host(i), "subset": "v1"}}]}],
            },
        }

    # -- edits ------------------------------------------------------------------------------------

    def vs_services(self) -> list[int]:
        return sorted(self.weights)

    def shift_weights(self, i: int) -> Obj:
        """Service i's VirtualService with a different v1 weight (cycles within 10..90, never equal)."""
        current = self.weights[i]
        self.weights[i] = 10 + (current - 10 + 7) % 81
        return self.virtual_service(i)

    def move_endpoint(self, i: int) -> Obj:
        """Service i's EndpointSlice with the other moving pod in place of the current one."""
        self.generation[i] += 1
        return self.endpoint_slice(i)


def _pod(name: str, namespace: str, labels: dict[str, str], ip: str) -> tuple[Obj, Obj]:
    """A Pod to create and the status to write on its /status subresource."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "app", "ports": [{"containerPort": 8080}]}]},
    }
    status = {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    return pod, status


def _endpoint_slice(service: str, namespace: str, port_name: str, members: list[tuple[str, str]]) -> Obj:
    """The one EndpointSlice of `service`: its pods (name, IP), ready, on target port 8080."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-1",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace},
            }
            for pod, ip in members
        ],
    }
