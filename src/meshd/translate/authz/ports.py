"""Port conditions on a sidecar without traffic capture (bound mode).

Such a sidecar's inbound listener serves every port of its workload on one address and port (15006):
the connection's destination port says nothing about which of the workload's ports a request is for;
the route does (one virtual host per service port, forwarding to its target port). So where a workload's
RBAC filters test the destination port (`ports`, `notPorts`, `destination.port`: the workload's port, as
in Istio), each virtual host gets a per-route copy of them with those tests decided for its target port:
`destination_port == target` becomes `any`, another port `not any`. A captured sidecar needs none of
this: its connections keep their original destination port.
"""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import any_pb2

from meshd.translate.proto import pack

_ANY = rbac_pb2.Permission(any=True)
_NEVER = rbac_pb2.Permission(not_rule=_ANY)


def _decided(permission: rbac_pb2.Permission, port: int) -> rbac_pb2.Permission:
    kind = permission.WhichOneof("rule")
    if kind == "destination_port":
        return _ANY if permission.destination_port == port else _NEVER
    if kind == "destination_port_range":
        found = permission.destination_port_range
        return _ANY if found.start <= port < found.end else _NEVER
    if kind in ("and_rules", "or_rules"):
        rules = [_decided(r, port) for r in getattr(permission, kind).rules]
        return rbac_pb2.Permission(**{kind: rbac_pb2.Permission.Set(rules=rules)})
    if kind == "not_rule":
        return rbac_pb2.Permission(not_rule=_decided(permission.not_rule, port))
    return permission


def _has_port(permission: rbac_pb2.Permission) -> bool:
    kind = permission.WhichOneof("rule")
    if kind in ("destination_port", "destination_port_range"):
        return True
    if kind in ("and_rules", "or_rules"):
        return any(_has_port(r) for r in getattr(permission, kind).rules)
    return kind == "not_rule" and _has_port(permission.not_rule)


def _policies(config: http_rbac_pb2.RBAC) -> Iterator[rbac_pb2.Policy]:
    yield from config.rules.policies.values()
    yield from config.shadow_rules.policies.values()


def _config(http_filter: hcm_pb2.HttpFilter) -> http_rbac_pb2.RBAC | None:
    config = http_rbac_pb2.RBAC()
    if not http_filter.typed_config.Unpack(config):
        return None  # not an RBAC filter (ext_authz)
    return config


def port_dependent(filters: tuple[hcm_pb2.HttpFilter, ...]) -> bool:
    """Whether any RBAC filter tests the destination port."""
    for http_filter in filters:
        config = _config(http_filter)
        if config is not None and any(_has_port(p) for pol in _policies(config) for p in pol.permissions):
            return True
    return False


def per_route(filters: tuple[hcm_pb2.HttpFilter, ...], port: int) -> dict[str, any_pb2.Any]:
    """`typed_per_filter_config` of a route to `port`: every RBAC filter with the port tests decided."""
    out: dict[str, any_pb2.Any] = {}
    for http_filter in filters:
        config = _config(http_filter)
        if config is None:
            continue
        for rules in (config.rules, config.shadow_rules):
            for policy in rules.policies.values():
                decided = [_decided(p, port) for p in policy.permissions]
                del policy.permissions[:]
                policy.permissions.extend(decided)
        out[http_filter.name] = pack(http_rbac_pb2.RBACPerRoute(rbac=config))
    return out
