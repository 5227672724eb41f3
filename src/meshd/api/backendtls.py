"""Kubernetes Gateway API BackendTLSPolicy (gateway.networking.k8s.io v1alpha3 and v1), as meshd reads it.

A BackendTLSPolicy tells every client of a Service (a port of it with `sectionName`) that its pods expect TLS:
the connection is originated with TLS, SNI = `validation.hostname`, the server certificate verified against the
CA of the ConfigMap `caCertificateRefs` names (key `ca.crt`) or the system's CAs (`wellKnownCACertificates:
System`), its SAN against `subjectAltNames` (else the hostname). As Istio, meshd turns the policies of a Service
into a DestinationRule for it (`model/gateway_api/backend_tls.py`).

Strict: an unknown field is refused by name; `options` (implementation-specific settings, none of which meshd
implements) is refused when set. A policy whose spec is refused fails closed (`refused_backend_tls_policy`, in
`api/parse.py` FAIL_CLOSED): its targets keep TLS with a CA that is never served.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, model_validator

from meshd.api.gateway_api import PreciseHostname
from meshd.api.meta import GATEWAY_API_GROUP, InvalidResource, ObjectMeta, Resource, StrictModel, refused

BACKEND_TLS_VERSIONS = (f"{GATEWAY_API_GROUP}/v1", f"{GATEWAY_API_GROUP}/v1alpha3")
CA_CERT_KEY = "ca.crt"  # the ConfigMap key the CA is read from


class PolicyTargetReference(StrictModel):
    group: str
    kind: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)
    section_name: str = Field(default="", max_length=253)


class CACertificateReference(StrictModel):
    group: str
    kind: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)


class SubjectAltName(StrictModel):
    type: Literal["Hostname", "URI"]
    hostname: str = ""
    uri: str = ""

    @model_validator(mode="after")
    def _check(self) -> SubjectAltName:
        if self.type == "Hostname" and (not self.hostname or self.uri):
            raise ValueError("hostname: a Hostname subjectAltName sets hostname (and not uri)")
        if self.type == "URI" and (not self.uri or self.hostname):
            raise ValueError("uri: a URI subjectAltName sets uri (and not hostname)")
        return self


class BackendTLSPolicyValidation(StrictModel):
    ca_certificate_refs: list[CACertificateReference] = Field(default_factory=list, max_length=8)
    well_known_ca_certificates: Literal["System"] | None = Field(default=None, alias="wellKnownCACertificates")
    hostname: PreciseHostname
    subject_alt_names: list[SubjectAltName] = Field(default_factory=list, max_length=5)

    @model_validator(mode="after")
    def _check(self) -> BackendTLSPolicyValidation:
        if bool(self.ca_certificate_refs) == (self.well_known_ca_certificates is not None):
            raise ValueError("caCertificateRefs: exactly one of caCertificateRefs and wellKnownCACertificates is set")
        return self


class BackendTLSPolicySpec(StrictModel):
    target_refs: list[PolicyTargetReference] = Field(min_length=1, max_length=16)
    validation: BackendTLSPolicyValidation
    options: dict[str, str] | None = refused(
        "no implementation-specific TLS option is applied by meshd (the connection would not be what was asked)"
    )


class BackendTLSPolicy(Resource):
    kind: Literal["BackendTLSPolicy"]
    spec: BackendTLSPolicySpec
    # Set on a policy whose spec failed validation (`refused_backend_tls_policy`; never read from a document)
    _refusal: InvalidResource | None = PrivateAttr(default=None)

    @property
    def refusal(self) -> InvalidResource | None:
        return self._refusal


REFUSED_HOSTNAME = "refused.invalid"  # the SNI of a refused policy's connections (which fail: no CA is served)


def refused_backend_tls_policy(doc: dict[str, Any], error: InvalidResource) -> BackendTLSPolicy | None:
    """A policy whose spec failed validation, kept with its targets so that it fails closed: the Services it
    targets still get TLS, with a CA that is never served (their pods expect TLS; nothing goes in plaintext).
    None when its metadata or targetRefs cannot be read on their own (then it is refused outright)."""
    try:
        metadata = ObjectMeta.model_validate(doc.get("metadata"))
        raw = doc.get("spec")
        spec = raw if isinstance(raw, dict) else {}
        targets = [PolicyTargetReference.model_validate(t) for t in spec.get("targetRefs") or []]
    except (ValidationError, TypeError, ValueError, AttributeError):
        return None
    if not targets or len(targets) > 16:
        return None
    validation = {"hostname": REFUSED_HOSTNAME, "wellKnownCACertificates": "System"}
    policy = BackendTLSPolicy(
        api_version=str(doc.get("apiVersion")),
        kind="BackendTLSPolicy",
        metadata=metadata,
        spec=BackendTLSPolicySpec(
            target_refs=targets, validation=BackendTLSPolicyValidation.model_validate(validation)
        ),
    )
    policy._refusal = error
    return policy
