"""networking.istio.io VirtualService: the resource, its HTTP routes (matching in `http_match.py`, actions
in `http_actions.py`, faults in `http_fault.py`) and TCP/TLS routes (`l4route.py`), validated the way
Istio validates them plus what Envoy would otherwise reject (RE2 regexes, header names, redirect codes),
so an accepted VirtualService always translates into config Envoy accepts.

Cross-field validators raise `ValueError("<field>: <message>")`; the parser folds the field into
the error's path (`spec.http[2].fault.abort.httpStatus`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from meshd.api.destination import MAX_TOTAL_WEIGHT, MAX_WEIGHT, Destination, PortSelector, check_weights
from meshd.api.http_actions import (
    CorsPolicy,
    Delegate,
    Headers,
    HTTPDirectResponse,
    HTTPMirrorPolicy,
    HTTPRedirect,
    HTTPRetry,
    HTTPRewrite,
    HTTPRouteDestination,
)
from meshd.api.http_fault import HTTPFaultInjection, Percentage
from meshd.api.http_match import HTTPMatchRequest
from meshd.api.l4route import TCPRoute, TLSRoute, check_sni_hosts
from meshd.api.meta import Resource, StrictModel, refused
from meshd.api.values import DurationOrZero

__all__ = ["MAX_TOTAL_WEIGHT", "MAX_WEIGHT", "Destination", "PortSelector", "TCPRoute", "TLSRoute"]


class HTTPRoute(StrictModel):
    name: str = ""
    match: list[HTTPMatchRequest] = Field(default_factory=list)
    route: list[HTTPRouteDestination] = Field(default_factory=list)
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: DurationOrZero | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirrors: list[HTTPMirrorPolicy] = Field(default_factory=list)
    mirror_percentage: Percentage | None = None
    mirror_percent: int | None = Field(default=None, ge=0, le=100)  # deprecated integer form
    mirror_percent_snake: int | None = refused(
        "Istio's deprecated snake_case spelling; use mirrorPercentage", alias="mirror_percent"
    )
    cors_policy: CorsPolicy | None = None
    headers: Headers | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPRoute:
        actions = [f for f in ("route", "redirect", "direct_response", "delegate") if getattr(self, f)]
        if not actions:
            raise ValueError("route: one of route, redirect, directResponse or delegate is required")
        if self.redirect is not None and self.direct_response is not None:
            raise ValueError("redirect: only one of redirect or directResponse may be set")
        if self.route and (self.redirect is not None or self.direct_response is not None):
            raise ValueError("route: a route cannot also redirect or answer directly")
        if self.delegate is not None and len(actions) > 1:
            raise ValueError("delegate: a delegating route cannot also route, redirect or answer")
        if self.redirect is not None and self.rewrite is not None:
            raise ValueError("rewrite: a redirect cannot be combined with a rewrite")
        if self.mirror is not None and self.mirrors:
            raise ValueError("mirrors: only one of mirror or mirrors may be set")
        # As Istio does today: weights that do not add up to 100 are relative (Envoy divides by their sum);
        # only a total of 0 (nowhere to send traffic) is refused.
        check_weights([d.weight for d in self.route])
        return self

    def weights(self) -> list[int]:
        """Effective weights: a single destination gets 100."""
        if len(self.route) == 1:
            return [100]
        return [d.weight for d in self.route]


class VirtualServiceSpec(StrictModel):
    hosts: list[str] = Field(default_factory=list)
    gateways: list[str] = Field(default_factory=list)
    http: list[HTTPRoute] = Field(default_factory=list)
    tcp: list[TCPRoute] = Field(default_factory=list)
    tls: list[TLSRoute] = Field(default_factory=list)
    export_to: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> VirtualServiceSpec:
        for i, host in enumerate(self.hosts):
            if not host:
                raise ValueError(f"hosts[{i}]: a host cannot be empty")
            if "/" in host:
                raise ValueError(f"hosts[{i}]: {host!r} must be a host name, not <namespace>/<host>")
            if "*" in host and host != "*" and (not host.startswith("*") or "*" in host[1:]):
                raise ValueError(f"hosts[{i}]: {host!r}: a wildcard is only allowed as the leftmost label")
        for i, gateway in enumerate(self.gateways):
            namespace, slash, name = gateway.partition("/")
            if not gateway or (slash and (not namespace or not name or "/" in name)):
                raise ValueError(f"gateways[{i}]: {gateway!r} must be <gateway name>, <namespace>/<name> or mesh")
        if self.is_delegate and (self.tcp or self.tls):
            raise ValueError("tcp: a delegate VirtualService (without hosts) may only have http routes")
        check_sni_hosts(self.tls, self.hosts)
        return self

    @property
    def is_delegate(self) -> bool:
        """A VirtualService without hosts is a delegate: only reachable from another's `delegate`."""
        return not self.hosts


class VirtualService(Resource):
    kind: Literal["VirtualService"]
    spec: VirtualServiceSpec
