"""The checks of one World that do not depend on which proxies are connected: VirtualService
routes per host, port collisions, Sidecars, credentialNames, certificate files, PeerAuthentications,
RequestAuthentications,
AuthorizationPolicies.
Each check is carried from the previous generation while the inputs it read are the same objects,
so a push re-checks only what changed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping

from meshd.api.destinationrule import DestinationRule
from meshd.api.meshconfig import MeshPolicy
from meshd.api.meta import InvalidResource
from meshd.api.networking import exported_to
from meshd.api.virtualservice import VirtualService
from meshd.generate.reads import MissedInput
from meshd.generate.tls_files import FileCheck
from meshd.model.derive import RuleSelector, rule_selector
from meshd.model.services import MeshService, Workload, is_http
from meshd.model.world import World
from meshd.translate import jwt_authn
from meshd.translate.authz.checks import authorization_errors
from meshd.translate.listener_plan import RESERVED_PORTS, ListenerPlan, l4_check_inputs, validate_l4_routes
from meshd.translate.peer_auth import check_policies
from meshd.translate.protocol import bound_inbound_errors
from meshd.translate.routes import delegate_inputs, validate_host_routes, wildcard_ports
from meshd.translate.scope import Scope, ScopeKey, same_items, select_sidecar
from meshd.translate.secrets import check_credentials
from meshd.translate.spec import Ident
from meshd.translate.telemetry.problems import telemetry_errors
from meshd.translate.upstream_tls import credential_settings

MESH_SCOPE = ScopeKey("", None)
BoundCheck = tuple[
    Mapping[tuple[str, int], object], Mapping[str, MeshService], dict[tuple[str, int], list[InvalidResource]]
]


def _host_checks(world: World, host: str) -> list[InvalidResource]:
    """The HTTP routes and the TCP/TLS routes of a host's VirtualServices, against the default rules and
    against the rules each DestinationRule workload selector picks instead (its proxies see those)."""
    found = validate_host_routes(world, host) + validate_l4_routes(world, host)
    for selector in world.rule_selectors:
        rule_for = _selected_rules(world, selector)
        found += validate_host_routes(world, host, rule_for) + validate_l4_routes(world, host, rule_for)
    return list(dict.fromkeys(found))


def _selected_rules(world: World, selector: RuleSelector) -> Callable[[str], DestinationRule | None]:
    """The rule a proxy picked by `selector` gets for a host: the selected one, else the default."""

    def rule_for(host: str) -> DestinationRule | None:
        selected = next((r for r in world.rules_by_host.get(host, ()) if rule_selector(r) == selector), None)
        return selected if selected is not None else world.destination_rules.get(host)

    return rule_for


class WorldChecks:
    def __init__(
        self,
        world: World,
        *,
        root_namespace: str,
        files: FileCheck,
        previous: WorldChecks | None,
        check: bool = False,
        mesh: MeshPolicy | None = None,
        sidecar_port: int | None = None,
    ) -> None:
        """`check`: a carried result is computed again and must be equal (its key covers its inputs)."""
        self.world = world
        self._check = check
        self._sidecar_port = sidecar_port  # workloads with a sidecar but no capture are reached on it
        self._root = root_namespace
        self._mesh = mesh or MeshPolicy()
        self._files = files
        self.route_checks: dict[Hashable, list[InvalidResource]] = {}  # per host and its inputs
        self._prev_route_checks = previous.route_checks if previous is not None else {}
        # everything the route checks' keys are made of: when each is the previous World's own object, every
        # key is the same, and the previous checks are carried whole (an endpoint change walks no host)
        self.route_inputs: tuple[object, ...] = ()
        self._prev_route_inputs = previous.route_inputs if previous is not None else ()
        self.port_check: tuple[tuple[MeshService, ...], list[InvalidResource]] | None = None
        self._prev_port_check = previous.port_check if previous is not None else None
        # whole-World checks by name: (the inputs they read, their result)
        self.carried: dict[str, tuple[tuple[object, ...], list[InvalidResource]]] = {}
        self._prev_carried = previous.carried if previous is not None else {}
        # the bound-inbound check: (the endpoints and services it read, its errors per endpoint set)
        self.bound: BoundCheck | None = None
        self._prev_bound = previous.bound if previous is not None else None
        # the namespaces holding workloads: (the workloads counted, the count per namespace, those namespaces)
        self.namespaces: tuple[Mapping[str, Workload], dict[str, int], frozenset[str]] | None = None
        self._prev_namespaces = previous.namespaces if previous is not None else None
        self._prev_world = previous.world if previous is not None else None

    def run(self, destinations: Callable[[VirtualService], list[str]]) -> list[InvalidResource]:
        """`destinations`: the hosts a VirtualService routes to. Passed per call, never kept: holding the
        generator's bound method would make a cycle that keeps every old generation alive until a full
        GC (and meshd freezes GC between pushes)."""
        errors: dict[InvalidResource, None] = {}
        world = self.world
        self.route_inputs = inputs = (
            world.virtual_services,
            world.services,
            world.rules_by_host,
            world.rule_selectors,
            world.virtual_services_by_name,
        )
        carried = bool(self._prev_route_inputs) and _same_inputs(self._prev_route_inputs, inputs)
        if carried and not self._check:
            self.route_checks = self._prev_route_checks
            for found in self.route_checks.values():
                errors.update(dict.fromkeys(found))
        else:
            self._route_checks(destinations, errors)
            if carried and self.route_checks.keys() != self._prev_route_checks.keys():
                raise MissedInput("route checks would have been carried whole, but their keys changed")
        self._other_checks(errors)
        return list(errors)

    def _route_checks(
        self, destinations: Callable[[VirtualService], list[str]], errors: dict[InvalidResource, None]
    ) -> None:
        world = self.world
        for host, candidates in world.virtual_services.items():
            deps = tuple(
                (Ident(world.services.get(h)), Ident(world.rules_by_host.get(h)))
                for vs in candidates
                for h in destinations(vs)
            )
            delegates = tuple(delegate_inputs(world, vs) for vs in candidates)
            # a wildcard host's check covers the ports of every service it routes
            target: Hashable = (
                (tuple((p, s.hostname) for p, s in wildcard_ports(world, host).items()), l4_check_inputs(world, host))
                if host.startswith("*")
                else Ident(world.services.get(host))
            )
            rules = Ident(world.rules_by_host.get(host))
            key = (host, Ident(candidates), target, rules, deps, delegates, world.rule_selectors)
            found = self.route_checks.get(key) or self._prev_route_checks.get(key)
            if found is None:
                found = _host_checks(world, host)
            elif self._check and found != _host_checks(world, host):
                raise MissedInput(f"route check of {host} reused under key {key!r} but its result changed")
            self.route_checks[key] = found
            errors.update(dict.fromkeys(found))

    def _other_checks(self, errors: dict[InvalidResource, None]) -> None:
        world = self.world
        services = tuple(world.services.values())
        previous = self._prev_port_check
        if previous is not None and previous[0] == services and not self._check:
            port_errors = previous[1]
        else:
            mesh = Scope(world, key=MESH_SCOPE, sidecar=None, root_namespace=self._root)
            port_errors = ListenerPlan(mesh.services).errors
            if previous is not None and previous[0] == services and port_errors != previous[1]:
                raise MissedInput("port collision check reused with the same services but its result changed")
        self.port_check = (services, port_errors)
        errors.update(dict.fromkeys(port_errors))
        errors.update(dict.fromkeys(self._carry("sidecars", (world.sidecars,), self._sidecar_errors)))
        with_workloads = self._namespaces_with_workloads()
        credential_inputs = (with_workloads, world.rules_by_host, world.secrets)
        errors.update(dict.fromkeys(self._carry("credentials", credential_inputs, self._credentials)))
        errors.update(dict.fromkeys(self._carry("tunnels", (world.services, world.rules_by_host), self._tunnels)))
        errors.update(dict.fromkeys(self._carry("ingress", (world.sidecars,), self._ingress_ports)))
        errors.update(dict.fromkeys(self._files.errors))
        errors.update(dict.fromkeys(check_policies(world.peer_authentications)))
        errors.update(dict.fromkeys(jwt_authn.check_policies(world.request_authentications)))
        errors.update(dict.fromkeys(jwt_authn.target_errors(world.request_authentications, root_namespace=self._root)))
        errors.update(dict.fromkeys(authorization_errors(world, mesh=self._mesh, root_namespace=self._root)))
        errors.update(
            dict.fromkeys(
                telemetry_errors(
                    world.telemetries,
                    mesh=self._mesh.telemetry,
                    services=world.services,
                    domain_suffix=world.domain_suffix,
                    root_namespace=self._root,
                )
            )
        )
        if self._sidecar_port is not None:
            errors.update(dict.fromkeys(self._bound_inbound()))

    def _namespaces_with_workloads(self) -> frozenset[str]:
        """The namespaces holding a workload (the same object while that set is the same), from the workloads
        per namespace, counted again over the World's changed addresses only."""
        workloads, held = self.world.workloads, self._prev_namespaces
        changes = self.world.changes_since(self._prev_world)
        if held is not None and held[0] is workloads:
            counts, found = held[1], held[2]
        elif (
            changes is not None
            and held is not None
            and self._prev_world is not None
            and held[0] is self._prev_world.workloads
        ):
            then, counts = held[0], dict(held[1])
            for ip in changes.workloads:
                old, new = then.get(ip), workloads.get(ip)
                if old is not new and old is not None:
                    counts[old.namespace] -= 1
                    if not counts[old.namespace]:
                        del counts[old.namespace]
                if old is not new and new is not None:
                    counts[new.namespace] = counts.get(new.namespace, 0) + 1
            found = held[2] if counts.keys() == held[1].keys() else frozenset(counts)
        else:
            counts = dict(Counter(w.namespace for w in workloads.values()))
            found = frozenset(counts)
        if self._check and found != frozenset(w.namespace for w in workloads.values()):
            raise MissedInput("namespaces with workloads counted over the changes but the set differs")
        self.namespaces = (workloads, counts, found)
        return found

    def _carry(
        self, name: str, inputs: tuple[object, ...], compute: Callable[[], list[InvalidResource]]
    ) -> list[InvalidResource]:
        """A whole-World check, carried while every input is the same (a mapping: the same object per key)."""
        previous = self._prev_carried.get(name)
        if previous is not None and _same_inputs(previous[0], inputs):
            found = previous[1]
            if self._check and found != compute():
                raise MissedInput(f"check {name!r} carried with the same inputs but its result changed")
        else:
            found = compute()
        self.carried[name] = (inputs, found)
        return found

    def _bound_inbound(self) -> list[InvalidResource]:
        """`bound_inbound_errors` per endpoint set, checked again only for the sets that changed (the
        incremental World keeps an unchanged set as the same object) while every service is the same."""
        world = self.world
        now = world.endpoints
        previous = self._prev_bound
        changes = world.changes_since(self._prev_world)
        if previous is not None and same_items(previous[1], world.services):
            then, by_key = previous[0], dict(previous[2])
            if changes is not None and self._prev_world is not None and then is self._prev_world.endpoints:
                changed = [k for k in changes.endpoints if now.get(k) is not then.get(k)]
            else:
                changed = [k for k, v in now.items() if then.get(k) is not v] + [k for k in then if k not in now]
        else:
            by_key, changed = {}, list(now)
        for key in changed:
            found = bound_inbound_errors(world, only=key) if key in now else []
            if found:
                by_key[key] = found
            else:
                by_key.pop(key, None)
        self.bound = (now, world.services, by_key)
        result = [e for key in sorted(by_key) for e in by_key[key]]
        if self._check and result != bound_inbound_errors(world):
            raise MissedInput("bound inbound check carried but its result changed")
        return result

    def _sidecar_errors(self) -> list[InvalidResource]:
        found: list[InvalidResource] = []
        for namespace in self.world.sidecars:
            _, sidecar_errors = select_sidecar(self.world, namespace=namespace, labels={}, root_namespace=self._root)
            found += sidecar_errors
        return found

    def _tunnels(self) -> list[InvalidResource]:
        return _tunnels(self.world)

    def _ingress_ports(self) -> list[InvalidResource]:
        return _ingress_ports(self.world)

    def _credentials(self) -> list[InvalidResource]:
        """credentialNames that do not resolve in a namespace with workloads the rule is exported to
        (Istio reads them from the proxy's namespace). Only rules that name one are looked at."""
        world = self.world
        namespaces = sorted({w.namespace for w in world.workloads.values()})
        found: list[InvalidResource] = []
        for rules in world.rules_by_host.values():
            for rule in rules:
                if not any(credential_settings(rule)):
                    continue
                export, owner = rule.spec.export_to, rule.metadata.namespace
                seen = [ns for ns in namespaces if exported_to(export, owner_namespace=owner, namespace=ns)]
                if rule.spec.workload_selector is not None:  # it applies in its own namespace only
                    seen = [ns for ns in seen if ns == owner]
                found += check_credentials(rule, world.secrets, namespaces=seen)
        return found


def _tunnels(world: World) -> list[InvalidResource]:
    """A DestinationRule `tunnel` applies to TCP and TLS ports (as in Istio): its HTTP ports are reported as
    not tunnelled (a warning: the rule is served)."""
    found: list[InvalidResource] = []
    for host, rules in world.rules_by_host.items():
        service = world.services.get(host)
        if service is None:
            continue
        http = [p.number for p in service.ports if is_http(p.protocol)]
        for rule in rules:
            policies = [("spec.trafficPolicy", rule.spec.traffic_policy)]
            policies += [
                (f"spec.subsets[{i}].trafficPolicy", s.traffic_policy) for i, s in enumerate(rule.spec.subsets)
            ]
            for path, policy in policies:
                if policy is not None and policy.tunnel is not None and http:
                    ports = ", ".join(map(str, http))
                    message = f"applies to TCP and TLS ports only: HTTP port(s) {ports} of {host} are not tunnelled"
                    found.append(InvalidResource(rule.key, f"{path}.tunnel", message, severity="warning"))
    return found


def _ingress_ports(world: World) -> list[InvalidResource]:
    """A Sidecar's ingress listener on one of Envoy's own ports is left out."""
    found: list[InvalidResource] = []
    for sidecars in world.sidecars.values():
        for sidecar in sidecars:
            for i, listener in enumerate(sidecar.spec.ingress):
                if listener.port.number in RESERVED_PORTS:
                    message = (
                        f"port {listener.port.number} is reserved for the sidecar; this ingress listener is left out"
                    )
                    found.append(InvalidResource(sidecar.key, f"spec.ingress[{i}].port.number", message))
    return found


def _same_inputs(before: tuple[object, ...], after: tuple[object, ...]) -> bool:
    return len(before) == len(after) and all(
        a is b or (same_items(a, b) if isinstance(a, Mapping) and isinstance(b, Mapping) else a == b)
        for a, b in zip(before, after, strict=True)
    )
