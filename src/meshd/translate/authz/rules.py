"""One rule of an AuthorizationPolicy -> one Envoy RBAC policy (principals and permissions).

A rule matches when one of its `from` sources, one of its `to` operations and all its `when` conditions
match; the fields of a source or an operation are ANDed, the values of one field ORed, `notX` fields
negate. An empty `from` / `to` / `when` matches anything, so an empty rule matches every request.
Conditions about the caller (IP, identity, JWT, headers, filter metadata) go with the principals, those
about the destination (IP, port, SNI) with the permissions: Envoy requires both to match.

On TCP (the network RBAC filter) the HTTP-only parts of a rule (hosts, methods, paths, request principals,
`request.headers` and `request.auth.*` conditions, and their `not` forms) cannot be evaluated. As Istio:
- in an ALLOW (or AUDIT) policy, such a rule is left out: it cannot allow a TCP connection;
- in a DENY (or CUSTOM) policy, those parts are left out of the rule, which becomes broader: a DENY of
  `GET /admin` on port 9000 denies every connection to port 9000.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from envoy.config.rbac.v3 import rbac_pb2

from meshd.api.authorization import Condition, Operation, Rule, Source, claim_path, filter_metadata_key, header_name
from meshd.translate.authz import matchers as m

HTTP_SOURCE_FIELDS = ("request_principals", "not_request_principals")
HTTP_OPERATION_FIELDS = ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths")
# conditions about the destination: the permission side
PERMISSION_KEYS = frozenset({"destination.ip", "destination.port", "connection.sni"})


def is_http_condition(key: str) -> bool:
    return key.startswith(("request.headers", "request.auth."))


def http_only_fields(rule: Rule) -> list[str]:
    """The HTTP-only parts of a rule, as field paths within it (empty: the rule applies to TCP as it is)."""
    found: list[str] = []
    for i, source in enumerate(rule.from_):
        if source.source is not None:
            found += [f"from[{i}].source.{_camel(f)}" for f in HTTP_SOURCE_FIELDS if getattr(source.source, f)]
    for i, to in enumerate(rule.to):
        if to.operation is not None:
            found += [f"to[{i}].operation.{_camel(f)}" for f in HTTP_OPERATION_FIELDS if getattr(to.operation, f)]
    found += [f"when[{i}]" for i, c in enumerate(rule.when) if is_http_condition(c.key)]
    return found


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def without_http_fields(rule: Rule) -> Rule:
    """The rule with its HTTP-only parts removed (a DENY rule on TCP: broader)."""
    sources = [
        f.model_copy(update={"source": f.source.model_copy(update={key: [] for key in HTTP_SOURCE_FIELDS})})
        for f in rule.from_
        if f.source is not None
    ]
    operations = [
        t.model_copy(update={"operation": t.operation.model_copy(update={key: [] for key in HTTP_OPERATION_FIELDS})})
        for t in rule.to
        if t.operation is not None
    ]
    # a source or operation left with nothing to match matches anything (so does its whole list)
    if any(f.source is not None and f.source.empty for f in sources):
        sources = []
    if any(t.operation is not None and t.operation.empty for t in operations):
        operations = []
    conditions = [c for c in rule.when if not is_http_condition(c.key)]
    return rule.model_copy(update={"from_": sources, "to": operations, "when": conditions})


def _field(
    values: Sequence[str], make: Callable[[str], rbac_pb2.Principal], *, negate: bool
) -> list[rbac_pb2.Principal]:
    if not values:
        return []
    found = [make(v) for v in values]
    return [m.none_of(found) if negate else m.any_of(found)]


def _rule_field(
    values: Sequence[str], make: Callable[[str], rbac_pb2.Permission], *, negate: bool
) -> list[rbac_pb2.Permission]:
    if not values:
        return []
    found = [make(v) for v in values]
    return [m.no_rule(found) if negate else m.any_rule(found)]


def source_principal(source: Source, *, bundle: Sequence[str]) -> rbac_pb2.Principal:
    def principal(value: str) -> rbac_pb2.Principal:
        return m.principal(value, bundle=bundle)

    parts: list[rbac_pb2.Principal] = []
    for values, make, negate in (
        (source.principals, principal, False),
        (source.not_principals, principal, True),
        (source.request_principals, m.request_principal, False),
        (source.not_request_principals, m.request_principal, True),
        (source.namespaces, m.namespace, False),
        (source.not_namespaces, m.namespace, True),
        (source.ip_blocks, m.source_ip, False),
        (source.not_ip_blocks, m.source_ip, True),
        (source.remote_ip_blocks, m.remote_ip, False),
        (source.not_remote_ip_blocks, m.remote_ip, True),
    ):
        parts += _field(values, make, negate=negate)
    return m.all_of(parts)


def operation_permission(operation: Operation) -> rbac_pb2.Permission:
    parts: list[rbac_pb2.Permission] = []
    for values, make, negate in (
        (operation.hosts, m.host, False),
        (operation.not_hosts, m.host, True),
        (operation.ports, m.destination_port, False),
        (operation.not_ports, m.destination_port, True),
        (operation.methods, m.method, False),
        (operation.not_methods, m.method, True),
        (operation.paths, m.path, False),
        (operation.not_paths, m.path, True),
    ):
        parts += _rule_field(values, make, negate=negate)
    return m.all_rules(parts)


def _condition_principal(condition: Condition, *, bundle: Sequence[str]) -> Callable[[str], rbac_pb2.Principal]:
    key = condition.key
    if key == "source.ip":
        return m.source_ip
    if key == "remote.ip":
        return m.remote_ip
    if key == "source.namespace":
        return m.namespace
    if key == "source.principal":
        return lambda v: m.principal(v, bundle=bundle)
    if key == "request.auth.principal":
        return m.request_principal
    if key in ("request.auth.audiences", "request.auth.presenter"):
        field = "aud" if key.endswith("audiences") else "azp"
        return lambda v: m.claim([field], v)
    name = header_name(key)
    if name is not None:
        return lambda v: m.header(name, v)
    claims = claim_path(key)
    if claims is not None:
        return lambda v: m.claim(claims, v)
    found = filter_metadata_key(key)
    assert found is not None, key  # the model accepts no other key
    return lambda v: m.filter_metadata(found[0], found[1], v)


def _condition_permission(condition: Condition) -> Callable[[str], rbac_pb2.Permission]:
    key = condition.key
    if key == "destination.ip":
        return m.destination_ip
    if key == "destination.port":
        return m.destination_port
    return m.sni


def rule_policy(rule: Rule, *, bundle: Sequence[str]) -> rbac_pb2.Policy:
    """The RBAC policy of one rule as it is (HTTP)."""
    principals: list[rbac_pb2.Principal] = []
    permissions: list[rbac_pb2.Permission] = []
    sources = [source_principal(f.source, bundle=bundle) for f in rule.from_ if f.source is not None]
    if sources:
        principals.append(m.any_of(sources))
    operations = [operation_permission(t.operation) for t in rule.to if t.operation is not None]
    if operations:
        permissions.append(m.any_rule(operations))
    for condition in rule.when:
        if condition.key in PERMISSION_KEYS:
            make_permission = _condition_permission(condition)
            permissions += _rule_field(condition.values, make_permission, negate=False)
            permissions += _rule_field(condition.not_values, make_permission, negate=True)
        else:
            make = _condition_principal(condition, bundle=bundle)
            principals += _field(condition.values, make, negate=False)
            principals += _field(condition.not_values, make, negate=True)
    return rbac_pb2.Policy(permissions=[m.all_rules(permissions)], principals=[m.all_of(principals)])


def tcp_rule_policy(rule: Rule, *, action: str, bundle: Sequence[str]) -> rbac_pb2.Policy | None:
    """The RBAC policy of one rule for TCP: None when it is left out (ALLOW/AUDIT with HTTP-only parts)."""
    if not http_only_fields(rule):
        return rule_policy(rule, bundle=bundle)
    if action in ("ALLOW", "AUDIT"):
        return None
    return rule_policy(without_http_fields(rule), bundle=bundle)


MATCH_ALL = rbac_pb2.Policy(permissions=[m.ANY_PERMISSION], principals=[m.ANY_PRINCIPAL])
