"""A small global rate-limit service for the tests, speaking Envoy's envoy.service.ratelimit.v3 API over
gRPC (what envoy.filters.http.ratelimit calls): per domain and descriptor, `limit` requests are allowed,
the next ones are OVER_LIMIT. It records every descriptor it is asked about."""

from __future__ import annotations

from collections import Counter
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

# The rate-limit service's Service (`ratelimit.default`, gRPC port 8081) and its endpoint at `{ip}`, as Istio's
# rate-limit tasks name it (`outbound|8081||ratelimit.default.svc.cluster.local`)
RATELIMIT_SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: ratelimit, namespace: default}}
spec:
  ports: [{{name: grpc, port: 8081, targetPort: 8081}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: ratelimit-1, namespace: default, labels: {{kubernetes.io/service-name: ratelimit}}}}
addressType: IPv4
ports: [{{name: grpc, port: 8081}}]
endpoints:
- addresses: [{ip}]
"""


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    def __init__(self, *, limits: dict[tuple[str, str, str], int]) -> None:
        """`limits`: (domain, descriptor key, value) -> requests allowed; any other descriptor: unlimited."""
        self.limits = limits
        self.used: Counter[tuple[str, str, str]] = Counter()
        self.seen: list[tuple[str, tuple[tuple[str, str], ...]]] = []

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
        overall = rls_pb2.RateLimitResponse.OK
        statuses = []
        for descriptor in request.descriptors:
            entries = tuple((e.key, e.value) for e in descriptor.entries)
            self.seen.append((request.domain, entries))
            code = rls_pb2.RateLimitResponse.OK
            for key, value in entries:
                limit = self.limits.get((request.domain, key, value))
                if limit is not None:
                    self.used[(request.domain, key, value)] += 1
                    if self.used[(request.domain, key, value)] > limit:
                        code = overall = rls_pb2.RateLimitResponse.OVER_LIMIT
            statuses.append(rls_pb2.RateLimitResponse.DescriptorStatus(code=code))
        return rls_pb2.RateLimitResponse(overall_code=overall, statuses=statuses)


async def start_rate_limit_service(
    host: str, port: int, *, limits: dict[tuple[str, str, str], int]
) -> tuple[grpc.aio.Server, RateLimitService]:
    service = RateLimitService(limits=limits)
    server = grpc.aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(service, server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, service
