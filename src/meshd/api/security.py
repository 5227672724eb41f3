"""Istio security.istio.io models: PeerAuthentication (the mTLS mode of a workload's inbound side).

Field names follow Istio's CRD schema (camelCase on the wire). The rules Istio's validation enforces
are checked here, so translation and admission give the same message.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshd.api.meta import Resource, StrictModel

SECURITY_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


class PeerAuthenticationMtls(StrictModel):
    mode: MtlsMode = "UNSET"


class LabelSelector(StrictModel):
    match_labels: dict[str, str] = Field(default_factory=dict)


class PeerAuthenticationSpec(StrictModel):
    selector: LabelSelector | None = None
    mtls: PeerAuthenticationMtls | None = None
    # keyed by the workload's (container / target) port, as Istio reads it
    port_level_mtls: dict[int, PeerAuthenticationMtls] = Field(default_factory=dict)

    @field_validator("port_level_mtls")
    @classmethod
    def _ports(cls, value: dict[int, PeerAuthenticationMtls]) -> dict[int, PeerAuthenticationMtls]:
        for port in value:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is not in 1..65535")
        return value

    @model_validator(mode="after")
    def _port_level_needs_selector(self) -> PeerAuthenticationSpec:
        if self.port_level_mtls and not self.has_selector:
            raise ValueError("portLevelMtls: requires a workload selector (selector.matchLabels), as Istio does")
        return self

    @property
    def has_selector(self) -> bool:
        """An absent or empty selector makes a namespace-wide (or, in the root namespace, mesh-wide) policy."""
        return self.selector is not None and bool(self.selector.match_labels)

    @property
    def mode(self) -> str:
        return self.mtls.mode if self.mtls is not None else "UNSET"


class PeerAuthentication(Resource):
    kind: Literal["PeerAuthentication"]
    spec: PeerAuthenticationSpec = Field(default_factory=PeerAuthenticationSpec)

    def selects(self, labels: dict[str, str]) -> bool:
        selector = self.spec.selector
        if selector is None:
            return False
        return all(labels.get(k) == v for k, v in selector.match_labels.items())
