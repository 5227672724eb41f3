"""BackendTLSPolicies -> the DestinationRules that originate TLS to the Services they target, and the policy
status the Gateway API specifies (pure; the World builds and the status writer call it).

As istiod does, the policies targeting one Service become one DestinationRule `<service>~backend-tls` in the
Service's namespace for its host, so that every client of the Service (gateways and sidecars alike) opens TLS to
it: mode SIMPLE, `sni` = `validation.hostname`, the server certificate checked against `subjectAltNames` (none:
the hostname, as the specification requires) and against the CA of the first of `caCertificateRefs` (a ConfigMap's
`ca.crt`, served over SDS as `configmap://<namespace>/<name>`) or the system's CAs (`wellKnownCACertificates`).
A target with `sectionName` (a Service port's name) becomes port-level settings for that port. Several policies
for the same Service (and port): the oldest wins, as in Istio, and the others are reported.

A DestinationRule of the users' for the same host in the Service's namespace takes precedence (Istio: the user's
fields win, the policy fills in the rest): the policy's TLS is merged into it where that rule sets no TLS for the
port, and reported otherwise.

Security: a CA reference that does not resolve (no such ConfigMap, no `ca.crt`, another kind) still makes the
rule originate TLS, with a CA that is never served: the connection fails, it never falls back to plaintext
(ResolvedRefs False InvalidCACertificateRef / InvalidKind, Accepted False NoValidCACertificate).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshd.api.backendtls import BackendTLSPolicy, PolicyTargetReference
from meshd.api.destinationrule import ClientTLSSettings, DestinationRule, PortTrafficPolicy, TrafficPolicy
from meshd.api.kube import ConfigMap, Secret
from meshd.api.meta import GATEWAY_API_GROUP, InvalidResource, ResourceKey
from meshd.model.gateway_api.conditions import Condition, cond, rendered

RULE_SUFFIX = "~backend-tls"
PARENTS = "internal.istio.io/parents"  # on a policy rule: the policies it comes from (Istio's annotation)
MESH_CONTROLLER = "istio.io/mesh-controller"  # Istio's controller name on a Service ancestor
GATEWAY_CONTROLLER = "istio.io/gateway-controller"
UNRESOLVED = ":unresolved"  # a ConfigMap name no object can have: a CA that is never served
ServicePorts = Mapping[tuple[str, str], Mapping[str, int]]  # (namespace, name) of a Service -> port name -> number


@dataclass
class BackendTlsResult:
    rules: list[DestinationRule] = field(default_factory=list)  # one per targeted Service
    errors: list[InvalidResource] = field(default_factory=list)
    status: dict[ResourceKey, dict[str, Any]] = field(default_factory=dict)
    # (Service namespace, name) -> the policies' TLS of its rule: (port number or None for the whole Service, tls)
    applied: dict[tuple[str, str], list[tuple[int | None, ClientTLSSettings, ResourceKey]]] = field(
        default_factory=dict
    )


def credential(policy: BackendTLSPolicy) -> tuple[str, Condition | None]:
    """The credentialName of the policy's CA ("" for the system's) and, when its reference cannot be used, the
    ResolvedRefs condition saying why (the name then names a CA that is never served)."""
    validation = policy.spec.validation
    if validation.well_known_ca_certificates == "System" or not validation.ca_certificate_refs:
        return "", None  # the system's CAs (Envoy's default here: the OS bundle)
    ns = policy.metadata.namespace
    ref = validation.ca_certificate_refs[0]
    if ref.group not in ("", "core") or ref.kind != "ConfigMap":
        reason = "InvalidKind"
        message = f"caCertificateRefs[0]: {ref.group or 'core'}/{ref.kind} is not supported (only ConfigMap)"
        return f"configmap://{ns}/{UNRESOLVED}", cond("ResolvedRefs", False, reason, message)
    return f"configmap://{ns}/{ref.name}", None


def _tls(policy: BackendTLSPolicy, credential_name: str) -> ClientTLSSettings:
    validation = policy.spec.validation
    sans = [s.uri if s.type == "URI" else s.hostname for s in validation.subject_alt_names] or [validation.hostname]
    return ClientTLSSettings.model_validate(
        {"mode": "SIMPLE", "sni": validation.hostname, "subjectAltNames": sans, "credentialName": credential_name}
    )


def _order(policy: BackendTLSPolicy) -> tuple[str, str, str]:
    return (policy.metadata.creation_timestamp or "~", policy.metadata.namespace, policy.metadata.name)


def _target_problem(ref: PolicyTargetReference, ns: str, services: ServicePorts) -> str:
    if ref.group not in ("", "core") or ref.kind != "Service":
        return f"{ref.group or 'core'}/{ref.kind} {ref.name}: only Services are supported"
    if (ns, ref.name) not in services:
        return f"Service {ns}/{ref.name} does not exist"
    if ref.section_name and ref.section_name not in services[(ns, ref.name)]:
        return f"Service {ns}/{ref.name} has no port named {ref.section_name!r}"
    return ""


def backend_tls(
    policies: Iterable[BackendTLSPolicy],
    *,
    services: ServicePorts,
    ca_maps: Collection[tuple[str, str]],
    gateways_of: Mapping[tuple[str, str], Collection[tuple[str, str]]],
    domain_suffix: str,
) -> BackendTlsResult:
    """`ca_maps`: the (namespace, name) of the ConfigMaps with a usable `ca.crt`; `gateways_of`: per Service, the
    Gateways (namespace, name) with a route to it attached (their ancestors in the status)."""
    result = BackendTlsResult()
    for policy in sorted(policies, key=_order):
        ns = policy.metadata.namespace
        name, resolved = credential(policy)
        ca_ref = policy.spec.validation.ca_certificate_refs[0] if policy.spec.validation.ca_certificate_refs else None
        if resolved is None and ca_ref is not None and (ns, ca_ref.name) not in ca_maps:
            message = f"caCertificateRefs[0]: ConfigMap {ns}/{ca_ref.name} does not exist or holds no ca.crt of PEM"
            resolved = cond("ResolvedRefs", False, "InvalidCACertificateRef", message + " certificates")
        if policy.refusal is not None:  # refused by meshd: its Services keep TLS with a CA that is never served
            name = f"configmap://{ns}/{UNRESOLVED}"
            why = f"refused by meshd: {policy.refusal.field}: {policy.refusal.message}; connections are refused"
            accepted, resolved = cond("Accepted", False, "Invalid", why), None
            result.errors.append(policy.refusal)
        elif resolved is not None:
            accepted = cond("Accepted", False, "NoValidCACertificate", f"{resolved[3]}: connections are refused")
            field, _, why = resolved[3].partition(": ")
            result.errors.append(InvalidResource(policy.key, f"spec.validation.{field}", why))
        else:
            accepted = cond("Accepted", True, "Accepted", "Configuration is valid")
            resolved = cond("ResolvedRefs", True, "ResolvedRefs", "Configuration is valid")
        if len(policy.spec.validation.ca_certificate_refs) > 1:
            note = "; warning: only the first caCertificateRefs is used"
            accepted = (*accepted[:3], accepted[3] + note)
        tls = _tls(policy, name)
        ancestors: list[dict[str, Any]] = []
        gateways: set[tuple[str, str]] = set()
        for i, ref in enumerate(policy.spec.target_refs):
            problem = _target_problem(ref, ns, services)
            conditions = [accepted, resolved] if resolved is not None else [accepted]
            if problem:
                conditions[0] = cond("Accepted", False, "TargetNotFound", f"targetRefs invalid: {problem}")
                result.errors.append(InvalidResource(policy.key, f"spec.targetRefs[{i}]", problem))
            else:
                port = services[(ns, ref.name)][ref.section_name] if ref.section_name else None
                result.applied.setdefault((ns, ref.name), []).append((port, tls, policy.key))
                gateways.update(gateways_of.get((ns, ref.name), ()))
            ancestor: dict[str, Any] = {"group": ref.group, "kind": ref.kind, "name": ref.name, "namespace": ns}
            if ref.section_name:
                ancestor["sectionName"] = ref.section_name
            ancestors.append(
                {"ancestorRef": ancestor, "controllerName": MESH_CONTROLLER, "conditions": rendered(conditions)}
            )
        for gw_ns, gw_name in sorted(gateways):
            gateway = {"group": GATEWAY_API_GROUP, "kind": "Gateway", "namespace": gw_ns, "name": gw_name}
            rendered_conditions = rendered([accepted, resolved] if resolved is not None else [accepted])
            ancestors.append(
                {"ancestorRef": gateway, "controllerName": GATEWAY_CONTROLLER, "conditions": rendered_conditions}
            )
        result.status[policy.key] = {"ancestors": ancestors[:16]}
    for (ns, svc), entries in sorted(result.applied.items()):
        result.rules.append(_rule(ns, svc, entries, domain_suffix=domain_suffix, errors=result.errors))
    return result


def _rule(
    ns: str,
    svc: str,
    entries: list[tuple[int | None, ClientTLSSettings, ResourceKey]],
    *,
    domain_suffix: str,
    errors: list[InvalidResource],
) -> DestinationRule:
    whole: ClientTLSSettings | None = None
    ports: dict[int, ClientTLSSettings] = {}
    for port, tls, key in entries:  # oldest policy first
        taken = whole is not None if port is None else port in ports
        if taken:
            where = "the Service" if port is None else f"port {port}"
            message = f"an older BackendTLSPolicy already sets TLS for {where} of Service {ns}/{svc}; ignored"
            errors.append(InvalidResource(key, "spec.targetRefs", message))
        elif port is None:
            whole = tls
        else:
            ports[port] = tls
    policy = TrafficPolicy(
        tls=whole,
        port_level_settings=[
            PortTrafficPolicy.model_validate({"port": {"number": p}, "tls": t}) for p, t in sorted(ports.items())
        ],
    )
    parents = ",".join(sorted({f"{key.namespace}/{key.name}" for _, _, key in entries}))
    return DestinationRule.model_validate(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": svc + RULE_SUFFIX, "namespace": ns, "annotations": {PARENTS: parents}},
            "spec": {"host": f"{svc}.{ns}.svc.{domain_suffix}", "trafficPolicy": policy.model_dump(by_alias=True)},
        }
    )


def with_backend_tls(
    user_rules: Iterable[DestinationRule], policy_rules: Iterable[DestinationRule], *, domain_suffix: str
) -> tuple[list[DestinationRule], list[InvalidResource]]:
    """The users' DestinationRules and the policies' rules as one list: a policy rule whose host already has a
    rule of the users' in the same namespace (for every workload) is merged into the oldest such rule, which wins
    where it sets TLS for a port (reported as a warning on the policy's rule)."""
    users = sorted(user_rules, key=_rule_order)
    out: list[DestinationRule] = list(users)
    warnings: list[InvalidResource] = []
    for rule in policy_rules:
        same = [
            i
            for i, u in enumerate(out)
            if u.metadata.namespace == rule.metadata.namespace
            and u.spec.workload_selector is None
            and _host(u, domain_suffix) == rule.spec.host
            and not u.metadata.name.endswith(RULE_SUFFIX)
        ]
        if not same:
            out.append(rule)
            continue
        merged, overridden = _merge(out[same[0]], rule)
        out[same[0]] = merged
        if overridden:
            message = f"DestinationRule {merged.key.namespace}/{merged.key.name} sets TLS for {overridden}: it takes"
            for parent in rule.metadata.annotations.get(PARENTS, "").split(","):
                ns, _, name = parent.partition("/")
                key = ResourceKey("BackendTLSPolicy", ns, name)
                warnings.append(InvalidResource(key, "spec.targetRefs", message + " precedence", severity="warning"))
    return out, warnings


def _rule_order(rule: DestinationRule) -> tuple[str, str, str]:
    return (rule.metadata.creation_timestamp or "~", rule.metadata.namespace, rule.metadata.name)


def _host(rule: DestinationRule, domain_suffix: str) -> str:
    host, ns = rule.spec.host, rule.metadata.namespace
    return host if "." in host else f"{host}.{ns}.svc.{domain_suffix}"


def _merge(user: DestinationRule, policy: DestinationRule) -> tuple[DestinationRule, str]:
    mine = user.spec.traffic_policy or TrafficPolicy()
    theirs = policy.spec.traffic_policy or TrafficPolicy()
    overridden: list[str] = []
    tls = mine.tls
    if theirs.tls is not None:
        if tls is None:
            tls = theirs.tls
        else:
            overridden.append("the whole Service")
    levels = list(mine.port_level_settings)
    have = {s.port.number: i for i, s in enumerate(levels)}
    for setting in theirs.port_level_settings:
        at = have.get(setting.port.number)
        if mine.tls is not None or (at is not None and levels[at].tls is not None):
            overridden.append(f"port {setting.port.number}")
        elif at is not None:
            levels[at] = levels[at].model_copy(update={"tls": setting.tls})
        else:
            levels.append(setting)
    traffic = mine.model_copy(update={"tls": tls, "port_level_settings": levels})
    spec = user.spec.model_copy(update={"traffic_policy": traffic})
    return user.model_copy(update={"spec": spec}), ", ".join(overridden)


def ca_secrets(config_maps: Iterable[ConfigMap]) -> dict[tuple[str, str], Secret]:
    """The ConfigMaps' CAs as the World keeps them among its Secrets (`translate/secrets.py` serves them)."""
    out: dict[tuple[str, str], Secret] = {}
    for config_map in config_maps:
        secret = config_map.ca_secret()
        if secret is not None:
            out[(secret.metadata.namespace, secret.metadata.name)] = secret
    return out
