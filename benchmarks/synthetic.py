"""Synthetic meshes: N services in M namespaces, each with endpoints in two versions, a
DestinationRule with subsets and (for every tenth service) a weighted VirtualService."""

from __future__ import annotations

from meshd.api.destinationrule import DestinationRule
from meshd.api.kube import EndpointSlice, Pod, Service
from meshd.api.meta import Resource
from meshd.api.virtualservice import VirtualService


def mesh(*, services: int, namespaces: int, endpoints: int = 3, port: int = 9080) -> list[Resource]:
    out: list[Resource] = []
    for i in range(services):
        ns = f"ns-{i % namespaces}"
        name = f"svc-{i}"
        out.append(
            Service.model_validate(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"ports": [{"name": "http", "port": port, "targetPort": 8080}]},
                }
            )
        )
        eps = []
        for e in range(endpoints):
            ip = f"10.{(i >> 8) & 255}.{i & 255}.{e + 1}"
            pod = f"{name}-{e}"
            version = "v1" if e % 2 == 0 else "v2"
            out.append(
                Pod.model_validate(
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            "name": pod,
                            "namespace": ns,
                            "labels": {"app": name, "version": version, "security.istio.io/tlsMode": "istio"},
                        },
                        "status": {"podIP": ip},
                    }
                )
            )
            eps.append({"addresses": [ip], "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}})
        out.append(
            EndpointSlice.model_validate(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": f"{name}-1",
                        "namespace": ns,
                        "labels": {"kubernetes.io/service-name": name},
                    },
                    "ports": [{"name": "http", "port": 8080}],
                    "endpoints": eps,
                }
            )
        )
        out.append(
            DestinationRule.model_validate(
                {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "DestinationRule",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {
                        "host": name,
                        "subsets": [
                            {"name": "v1", "labels": {"version": "v1"}},
                            {"name": "v2", "labels": {"version": "v2"}},
                        ],
                    },
                }
            )
        )
        if i % 10 == 1:
            out.append(virtual_service(name=name, namespace=ns, v1=90, v2=10))
    return out


def virtual_service(*, name: str, namespace: str, v1: int, v2: int) -> VirtualService:
    return VirtualService.model_validate(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "hosts": [name],
                "http": [
                    {
                        "route": [
                            {"destination": {"host": name, "subset": "v1"}, "weight": v1},
                            {"destination": {"host": name, "subset": "v2"}, "weight": v2},
                        ]
                    }
                ],
            },
        }
    )
