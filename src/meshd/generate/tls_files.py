"""Certificate files named by DestinationRules (`clientCertificate`, `privateKey`, `caCertificates`,
`caCrl`) and by Sidecar ingress listeners (`serverCertificate`, `privateKey`, `caCertificates`, `caCrl`)
must exist and hold what Envoy loads where the sidecar runs, or Envoy rejects the whole cluster (or
listener) update. Standalone sidecars share meshd's filesystem (the standalone conventions), so meshd
reads them: a rule naming a missing or unusable file is reported with its field, and the clusters
(ingress listeners) that would open it are left out (their traffic fails closed, 503, instead of Envoy NACKing every
cluster). Istio serves such files through its node agent's SDS instead, where a bad file leaves the
cluster without a certificate: closed too. A file that changes is seen at the next push.

Gateway servers' `serverCertificate` / `privateKey` / `caCertificates` / `caCrl` (and `tlsCertificates`)
are read the same way: a server naming a file Envoy could not load is left out (`problem(path)`),
rather than Envoy refusing every listener of the update.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from meshd.api import pem
from meshd.api.destinationrule import ClientTLSSettings, DestinationRule
from meshd.api.gateway import Gateway
from meshd.api.meta import InvalidResource
from meshd.api.networking import Sidecar
from meshd.api.sidecar_ingress import IngressTLSSettings
from meshd.model.world import World
from meshd.translate.gateway.tls import server_files
from meshd.translate.spec import Ident
from meshd.translate.upstream_tls import rule_files, tls_files

ReadFile = Callable[[str], bytes | None]


def _problem(tls: ClientTLSSettings, field: str, data: dict[str, bytes | None]) -> str | None:
    """Why Envoy would not load this file of the block, or None."""
    path = dict(tls_files(tls))[field]
    content = data[path]
    if content is None:
        return f"{path} does not exist or cannot be read on this host"
    try:
        if field == "privateKey":
            cert = data.get(tls.client_certificate)
            if cert is not None:
                pem.check_key_pair(cert, content, cert_field=tls.client_certificate, key_field=path)
        elif field == "caCrl":
            pem.check_crl(content, what=path)
        else:
            pem.certificates(content, what=path)
    except ValueError as exc:
        return str(exc)
    return None


def server_tls_files(tls: IngressTLSSettings) -> tuple[tuple[str, str], ...]:
    """(field, path) of each certificate file an ingress listener's TLS makes Envoy open."""
    fields = [
        ("serverCertificate", tls.server_certificate),
        ("privateKey", tls.private_key),
        ("caCertificates", tls.ca_certificates),
        ("caCrl", tls.ca_crl),
    ]
    return tuple((field, path) for field, path in fields if path)


def _server_problem(tls: IngressTLSSettings, field: str, data: dict[str, bytes | None]) -> str | None:
    path = dict(server_tls_files(tls))[field]
    content = data[path]
    if content is None:
        return f"{path} does not exist or cannot be read on this host"
    try:
        if field == "privateKey":
            cert = data.get(tls.server_certificate)
            if cert is not None:
                pem.check_key_pair(cert, content, cert_field=tls.server_certificate, key_field=path)
        elif field == "caCrl":
            pem.check_crl(content, what=path)
        else:
            pem.certificates(content, what=path)
    except ValueError as exc:
        return str(exc)
    return None


def _state(data: dict[str, bytes | None]) -> tuple[tuple[str, str], ...]:
    """(path, content digest) of each file read, by path ("" for one that could not be read)."""
    return tuple(sorted((p, hashlib.sha256(c).hexdigest() if c is not None else "") for p, c in data.items()))


class FileCheck:
    """Which certificate files of the World's rules Envoy could not load, looked up once per push."""

    def __init__(self, world: World, *, read: ReadFile | None, previous: FileCheck | None = None) -> None:
        self._blocks: dict[Ident, tuple[tuple[str, ClientTLSSettings], ...]] = {}
        self._bad: dict[Ident, frozenset[str]] = {}
        self._bad_ingress: dict[Ident, frozenset[str]] = {}
        self.errors: list[InvalidResource] = []
        self.state: tuple[tuple[str, str], ...] = ()  # (path, content digest): what the clusters were built on
        self._gateway_problems: dict[str, str] = {}  # path -> why Envoy could not load it
        # what the files are named by: while each is the previous World's object and no file's content changed,
        # the previous check holds whole (an endpoint change walks no rule, Sidecar or Gateway)
        self._inputs: tuple[object, ...] = ()
        if read is None:
            return
        self._inputs = (world.rules_by_host, world.sidecars, world.gateways)
        if previous is not None and self._carried(previous, read):
            return
        known = previous._blocks if previous is not None else {}
        data: dict[str, bytes | None] = {}
        for rules in world.rules_by_host.values():
            for rule in rules:
                key = Ident(rule)
                blocks = known.get(key)
                if blocks is None:
                    blocks = rule_files(rule)
                self._blocks[key] = blocks
                bad: set[str] = set()
                for path, tls in blocks:
                    for _, file in tls_files(tls):
                        if file not in data:
                            data[file] = read(file)
                    for field, file in tls_files(tls):
                        problem = _problem(tls, field, data)
                        if problem is not None:
                            bad.add(file)
                            message = f"{problem}; the clusters that use it are left out (Envoy would refuse them)"
                            self.errors.append(InvalidResource(rule.key, f"{path}.{field}", message))
                if bad:
                    self._bad[key] = frozenset(bad)
        self._ingress_files(world, read, data)
        for gateway in world.gateways.values():
            self._gateway_files(gateway, data, read)
        self.state = _state(data)

    def _carried(self, previous: FileCheck, read: ReadFile) -> bool:
        """Take the previous check's findings when its inputs are these very objects and every file it read
        holds what it held."""
        if len(previous._inputs) != len(self._inputs) or any(
            a is not b for a, b in zip(previous._inputs, self._inputs, strict=True)
        ):
            return False
        if _state({path: read(path) for path, _ in previous.state}) != previous.state:
            return False
        self._blocks, self._bad, self._bad_ingress = previous._blocks, previous._bad, previous._bad_ingress
        self.errors, self.state, self._gateway_problems = previous.errors, previous.state, previous._gateway_problems
        return True

    def _ingress_files(self, world: World, read: ReadFile, data: dict[str, bytes | None]) -> None:
        for sidecars in world.sidecars.values():
            for sidecar in sidecars:
                bad: set[str] = set()
                for i, listener in enumerate(sidecar.spec.ingress):
                    tls = listener.tls
                    if tls is None:
                        continue
                    files = server_tls_files(tls)
                    for _, file in files:
                        if file not in data:
                            data[file] = read(file)
                    for field, file in files:
                        problem = _server_problem(tls, field, data)
                        if problem is not None:
                            bad.add(file)
                            message = f"{problem}; this ingress listener is left out (Envoy would refuse it)"
                            self.errors.append(InvalidResource(sidecar.key, f"spec.ingress[{i}].tls.{field}", message))
                if bad:
                    self._bad_ingress[Ident(sidecar)] = frozenset(bad)

    def missing_ingress(self, sidecar: Sidecar | None) -> frozenset[str]:
        """The files of a Sidecar's ingress listeners Envoy could not load (empty when not checked)."""
        if sidecar is None or not self._bad_ingress:
            return frozenset()
        return self._bad_ingress.get(Ident(sidecar), frozenset())

    def missing(self, rule: DestinationRule | None) -> frozenset[str]:
        """The files of this rule Envoy could not load (empty when files are not checked)."""
        if rule is None or not self._bad:
            return frozenset()
        return self._bad.get(Ident(rule), frozenset())

    def _gateway_files(self, gateway: Gateway, data: dict[str, bytes | None], read: ReadFile) -> None:
        for server in gateway.spec.servers:
            if server.tls is None:
                continue
            files = server_files(server.tls)
            for _, path in files:
                if path not in data:
                    data[path] = read(path)
            by_field = dict(files)
            for field, path in files:
                content = data[path]
                if content is None:
                    self._gateway_problems[path] = f"{path} does not exist or cannot be read on this host"
                    continue
                try:
                    if field.endswith("privateKey"):
                        cert = data.get(by_field[field.replace("privateKey", "serverCertificate")])
                        if cert is not None:
                            pem.check_key_pair(cert, content, cert_field="serverCertificate", key_field=path)
                    elif field.endswith("caCrl"):
                        pem.check_crl(content, what=path)
                    else:
                        pem.certificates(content, what=path)
                except ValueError as exc:
                    self._gateway_problems[path] = str(exc)

    def problem(self, path: str) -> str | None:
        """Why Envoy could not load a gateway server's file, or None (also when files are not checked)."""
        return self._gateway_problems.get(path)
