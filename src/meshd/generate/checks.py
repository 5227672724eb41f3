"""The checks of one World that do not depend on which proxies are connected: VirtualService
routes per host, port collisions, Sidecars, credentialNames, certificate files, PeerAuthentications.
Each check is carried from the previous generation while the inputs it read are the same objects,
so a push re-checks only what changed."""

from __future__ import annotations

from collections.abc import Callable, Hashable

from meshd.api.meta import InvalidResource
from meshd.api.networking import exported_to
from meshd.api.virtualservice import VirtualService
from meshd.generate.reads import MissedInput
from meshd.generate.tls_files import FileCheck
from meshd.model.services import MeshService
from meshd.model.world import World
from meshd.translate.listeners import ListenerPlan
from meshd.translate.peer_auth import check_policies
from meshd.translate.protocol import bound_inbound_errors
from meshd.translate.routes import delegate_inputs, validate_host_routes, wildcard_ports
from meshd.translate.scope import Scope, ScopeKey, select_sidecar
from meshd.translate.secrets import check_credentials
from meshd.translate.spec import Ident
from meshd.translate.upstream_tls import credential_settings

MESH_SCOPE = ScopeKey("", None)


class WorldChecks:
    def __init__(
        self,
        world: World,
        *,
        root_namespace: str,
        files: FileCheck,
        previous: WorldChecks | None,
        check: bool = False,
        sidecar_port: int | None = None,
    ) -> None:
        """`check`: a carried result is computed again and must be equal (its key covers its inputs)."""
        self.world = world
        self._check = check
        self._sidecar_port = sidecar_port  # workloads with a sidecar but no capture are reached on it
        self._root = root_namespace
        self._files = files
        self.route_checks: dict[Hashable, list[InvalidResource]] = {}  # per host and its inputs
        self._prev_route_checks = previous.route_checks if previous is not None else {}
        self.port_check: tuple[tuple[MeshService, ...], list[InvalidResource]] | None = None
        self._prev_port_check = previous.port_check if previous is not None else None

    def run(self, destinations: Callable[[VirtualService], list[str]]) -> list[InvalidResource]:
        """`destinations`: the hosts a VirtualService routes to. Passed per call, never kept: holding the
        generator's bound method would make a cycle that keeps every old generation alive until a full
        GC (and meshd freezes GC between pushes)."""
        errors: dict[InvalidResource, None] = {}
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
                tuple((p, s.hostname) for p, s in wildcard_ports(world, host).items())
                if host.startswith("*")
                else Ident(world.services.get(host))
            )
            key = (host, Ident(candidates), target, Ident(world.rules_by_host.get(host)), deps, delegates)
            found = self.route_checks.get(key) or self._prev_route_checks.get(key)
            if found is None:
                found = validate_host_routes(world, host)
            elif self._check and found != validate_host_routes(world, host):
                raise MissedInput(f"route check of {host} reused under key {key!r} but its result changed")
            self.route_checks[key] = found
            errors.update(dict.fromkeys(found))
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
        for namespace in world.sidecars:
            _, sidecar_errors = select_sidecar(world, namespace=namespace, labels={}, root_namespace=self._root)
            errors.update(dict.fromkeys(sidecar_errors))
        errors.update(dict.fromkeys(self._credentials()))
        errors.update(dict.fromkeys(self._files.errors))
        errors.update(dict.fromkeys(check_policies(world.peer_authentications)))
        if self._sidecar_port is not None:
            errors.update(dict.fromkeys(bound_inbound_errors(world)))
        return list(errors)

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
                found += check_credentials(rule, world.secrets, namespaces=seen)
        return found
