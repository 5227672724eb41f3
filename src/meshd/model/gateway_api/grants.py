"""ReferenceGrants: which cross-namespace references (a route's backendRefs, a Gateway's certificateRefs)
the owner of the target namespace allows. A reference to another namespace without one is refused
(RefNotPermitted)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from meshd.api.gateway_api import ReferenceGrant
from meshd.api.meta import GATEWAY_API_GROUP

# the group of each kind that may be on either side of a grant meshd checks
_GROUPS = {
    "HTTPRoute": GATEWAY_API_GROUP,
    "GRPCRoute": GATEWAY_API_GROUP,
    "TCPRoute": GATEWAY_API_GROUP,
    "TLSRoute": GATEWAY_API_GROUP,
    "Gateway": GATEWAY_API_GROUP,
    "Service": "",
    "Secret": "",
}


@dataclass(frozen=True)
class Grants:
    grants: tuple[ReferenceGrant, ...]

    @classmethod
    def of(cls, grants: Iterable[ReferenceGrant]) -> Grants:
        return cls(tuple(sorted(grants, key=lambda g: g.key)))

    def allows(self, *, from_kind: str, from_namespace: str, to_kind: str, to_namespace: str, name: str) -> bool:
        for grant in self.grants:
            if grant.metadata.namespace != to_namespace:
                continue
            sources = any(
                f.kind == from_kind and f.namespace == from_namespace and _group(f.group) == _GROUPS[from_kind]
                for f in grant.spec.from_
            )
            targets = any(
                t.kind == to_kind and _group(t.group) == _GROUPS[to_kind] and t.name in ("", name)
                for t in grant.spec.to
            )
            if sources and targets:
                return True
        return False


def secret_grants(grants: Iterable[ReferenceGrant]) -> Mapping[tuple[str, str, str], bool]:
    """(Gateway namespace, Secret namespace, Secret name or "" for all) for every Secret a ReferenceGrant lets
    Gateways of another namespace reference: what their proxies may be served (translate/secrets.py). A mapping
    (to True): a cached build's reads of it are recorded key by key."""
    out: set[tuple[str, str, str]] = set()
    for grant in grants:
        sources = [
            f.namespace for f in grant.spec.from_ if f.kind == "Gateway" and _group(f.group) == GATEWAY_API_GROUP
        ]
        names = [t.name for t in grant.spec.to if t.kind == "Secret" and _group(t.group) == ""]
        out.update((source, grant.metadata.namespace, name) for source in sources for name in names)
    return MappingProxyType(dict.fromkeys(sorted(out), True))


def _group(group: str) -> str:
    return "" if group == "core" else group
