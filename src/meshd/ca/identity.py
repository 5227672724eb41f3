"""A workload identity: a Kubernetes service account, written as a SPIFFE id in certificates."""

from __future__ import annotations

import re
from dataclasses import dataclass

# DNS-1123 label (namespace) and subdomain (service account), as Kubernetes validates them.
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SA_USERNAME = "system:serviceaccount:"


class InvalidIdentity(ValueError):
    pass


@dataclass(frozen=True)
class Identity:
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not _LABEL.match(self.namespace):
            raise InvalidIdentity(f"namespace {self.namespace!r} is not a valid Kubernetes namespace name")
        if not _SUBDOMAIN.match(self.service_account):
            raise InvalidIdentity(f"service account {self.service_account!r} is not a valid name")

    def spiffe_id(self, trust_domain: str) -> str:
        return f"spiffe://{trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @classmethod
    def from_username(cls, username: str) -> Identity:
        """`system:serviceaccount:<ns>:<sa>` (a TokenReview's user) -> Identity; anything else is refused."""
        if not username.startswith(_SA_USERNAME):
            raise InvalidIdentity(f"user {username!r} is not a service account")
        parts = username[len(_SA_USERNAME) :].split(":")
        if len(parts) != 2:
            raise InvalidIdentity(f"user {username!r} is not system:serviceaccount:<namespace>:<name>")
        return cls(namespace=parts[0], service_account=parts[1])

    @classmethod
    def from_spiffe_id(cls, uri: str, *, trust_domain: str) -> Identity:
        """`spiffe://<trust-domain>/ns/<ns>/sa/<sa>` -> Identity; another trust domain or shape is refused."""
        prefix = f"spiffe://{trust_domain}/"
        if not uri.startswith(prefix):
            raise InvalidIdentity(f"{uri!r} is not a SPIFFE id in trust domain {trust_domain!r}")
        parts = uri[len(prefix) :].split("/")
        if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
            raise InvalidIdentity(f"{uri!r} is not spiffe://{trust_domain}/ns/<namespace>/sa/<name>")
        return cls(namespace=parts[1], service_account=parts[3])
