"""A synthetic mesh on disk, as meshd's directory source reads it: one YAML file per service
(Service, its Pods, EndpointSlice, DestinationRule with subsets v1/v2), one VirtualService file per
tenth service, one Sidecar file per namespace. Files are replaced atomically, so a benchmark can
time an event from the moment the file is in place.

Every pod has its own loopback address (127.1.x.y): a simulated proxy's node id carries the IP of
a pod, so each proxy is a workload of a service; a real Envoy can bind its listeners there.
Each service also has a "moving" pod whose address changes with the service's generation: that is
the endpoint change.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

DOMAIN = "cluster.local"


@dataclass(frozen=True)
class MeshSpec:
    services: int
    namespaces: int
    pods_per_service: int = 2
    sidecar: bool = True
    vs_every: int = 10  # services i with i % vs_every == 1 get a VirtualService
    envoy_services: tuple[int, ...] = ()  # services with one extra pod for a real Envoy
    envoy_subnet: str = "127.0.240"
    port: int = 9080


class MeshDir:
    def __init__(self, spec: MeshSpec, directory: pathlib.Path) -> None:
        if spec.services * spec.pods_per_service > 62500 * 90 or spec.services > 62500:
            raise ValueError("mesh too large for the address plan")
        self.spec = spec
        self.dir = directory
        self.generation = [0] * spec.services
        self.weights = {i: 90 for i in range(spec.services) if i % spec.vs_every == 1}

    # -- names and addresses ---------------------------------------------------------------------

    def namespace(self, i: int) -> str:
        return f"ns-{i % self.spec.namespaces}"

    def host(self, i: int) -> str:
        return f"svc-{i}.{self.namespace(i)}.svc.{DOMAIN}"

    def eds_names(self, i: int, subsets: tuple[str, ...] = ("", "v1", "v2")) -> list[str]:
        host, port = self.host(i), self.spec.port
        return [f"outbound|{port}|{subset}|{host}" for subset in subsets]

    def moving_eds_names(self, i: int) -> list[str]:
        """The EDS clusters holding service i's moving pod (labelled v1): what an endpoint change changes."""
        return self.eds_names(i, ("", "v1"))

    def pod_ip(self, i: int, e: int) -> str:
        k = i * self.spec.pods_per_service + e
        return f"127.{1 + k // 62500}.{(k // 250) % 250 + 1}.{k % 250 + 1}"

    def moving_ip(self, i: int, generation: int) -> str:
        return f"127.{100 + generation % 100}.{i // 250 + 1}.{i % 250 + 1}"

    def envoy_ip(self, j: int) -> str:
        return f"{self.spec.envoy_subnet}.{j + 1}"

    def node_id(self, *, ip: str, pod: str, namespace: str) -> str:
        return f"sidecar~{ip}~{pod}.{namespace}~{namespace}.svc.{DOMAIN}"

    def proxies(self, n: int) -> list[str]:
        """Node ids of n pods, spread over the services first (pod 0 of each, then pod 1, ...)."""
        s, pods = self.spec.services, self.spec.pods_per_service
        if n > s * pods:
            raise ValueError(f"{n} proxies but only {s * pods} pods")
        return [self.pod_node_id(k % s, k // s) for k in range(n)]

    def pod_node_id(self, i: int, e: int) -> str:
        return self.node_id(ip=self.pod_ip(i, e), pod=f"svc-{i}-{e}", namespace=self.namespace(i))

    def services_in(self, namespaces: int) -> list[int]:
        """The services of the first `namespaces` namespaces."""
        return [i for i in range(self.spec.services) if i % self.spec.namespaces < namespaces]

    def envoys(self) -> list[tuple[str, str]]:
        """(node id, ip) of the extra pods meant for real Envoys."""
        return [
            (self.node_id(ip=self.envoy_ip(j), pod=f"svc-{i}-envoy", namespace=self.namespace(i)), self.envoy_ip(j))
            for j, i in enumerate(self.spec.envoy_services)
        ]

    # -- YAML --------------------------------------------------------------------------------------

    def _pod(self, *, name: str, ns: str, app: str, version: str, ip: str) -> str:
        return (
            f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n"
            f"    app: {app}\n    version: {version}\n    security.istio.io/tlsMode: istio\n"
            f"status:\n  podIP: {ip}\n---\n"
        )

    def service_yaml(self, i: int) -> str:
        name, ns, port = f"svc-{i}", self.namespace(i), self.spec.port
        pods = [
            (f"{name}-{e}", "v1" if e % 2 == 0 else "v2", self.pod_ip(i, e)) for e in range(self.spec.pods_per_service)
        ]
        pods.append((f"{name}-moving", "v1", self.moving_ip(i, self.generation[i])))
        for j, svc in enumerate(self.spec.envoy_services):
            if svc == i:
                pods.append((f"{name}-envoy", "v1", self.envoy_ip(j)))
        out = [
            f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n"
            f"spec:\n  selector:\n    app: {name}\n  ports:\n"
            f"  - name: http\n    port: {port}\n    targetPort: 8080\n---\n"
        ]
        out += [self._pod(name=p, ns=ns, app=name, version=v, ip=ip) for p, v, ip in pods]
        endpoints = "".join(
            f'- addresses: ["{ip}"]\n  conditions: {{ready: true}}\n'
            f"  targetRef: {{kind: Pod, name: {p}, namespace: {ns}}}\n"
            for p, _, ip in pods
        )
        out.append(
            f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {ns}\n"
            f"  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\n"
            f"ports:\n- name: http\n  port: 8080\nendpoints:\n{endpoints}---\n"
        )
        out.append(
            f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  namespace: {ns}\n"
            f"spec:\n  host: {name}\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n"
            f"  - name: v2\n    labels: {{version: v2}}\n"
        )
        return "".join(out)

    def vs_yaml(self, i: int) -> str:
        name, ns, v1 = f"svc-{i}", self.namespace(i), self.weights[i]
        return (
            f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: {ns}\n"
            f"spec:\n  hosts: [{name}]\n  http:\n  - route:\n"
            f"    - destination: {{host: {name}, subset: v1}}\n      weight: {v1}\n"
            f"    - destination: {{host: {name}, subset: v2}}\n      weight: {100 - v1}\n"
        )

    def sidecar_yaml(self, ns: str) -> str:
        return (
            f"apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: default\n  namespace: {ns}\n"
            f'spec:\n  egress:\n  - hosts: ["./*"]\n'
        )

    # -- files -------------------------------------------------------------------------------------

    def _write(self, name: str, text: str) -> None:
        path = self.dir / name
        tmp = self.dir / (name + ".tmp")  # not a suffix meshd reads
        tmp.write_text(text)
        os.replace(tmp, path)

    def write_all(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.spec.services):
            self._write(f"svc-{i}.yaml", self.service_yaml(i))
        for i in self.weights:
            self._write(f"vs-svc-{i}.yaml", self.vs_yaml(i))
        if self.spec.sidecar:
            for n in range(self.spec.namespaces):
                self._write(f"sidecar-ns-{n}.yaml", self.sidecar_yaml(f"ns-{n}"))

    def move_endpoint(self, i: int) -> str:
        """Next generation of service i: its moving pod gets a new address. Returns the address."""
        self.generation[i] += 1
        self._write(f"svc-{i}.yaml", self.service_yaml(i))
        return self.moving_ip(i, self.generation[i])

    def vs_services(self) -> list[int]:
        return sorted(self.weights)

    def shift_weights(self, i: int) -> int:
        """Rewrite service i's VirtualService with a different v1 weight; returns it."""
        current = self.weights[i]
        self.weights[i] = 10 + (current - 10 + 7) % 81  # cycles within 10..90, never equal
        self._write(f"vs-svc-{i}.yaml", self.vs_yaml(i))
        return self.weights[i]
