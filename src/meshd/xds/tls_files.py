"""Certificate files named by DestinationRules (`clientCertificate`, `privateKey`, `caCertificates`,
`caCrl`) must exist where the sidecar runs, or Envoy rejects the whole cluster update. Standalone
sidecars share meshd's filesystem (the standalone conventions), so meshd checks the paths: a rule
naming a missing file is reported, and the clusters that would open it are left out (their traffic
fails closed, 503, instead of Envoy NACKing every cluster). Istio serves such files through its
node agent's SDS instead, where a missing file leaves the cluster without a certificate: closed too.
"""

from __future__ import annotations

from collections.abc import Callable

from meshd.api.destinationrule import DestinationRule
from meshd.api.meta import InvalidResource
from meshd.model.world import World
from meshd.translate.spec import Ident
from meshd.translate.upstream_tls import rule_files


class FileCheck:
    """Which certificate files of the World's rules are missing, looked up once per push."""

    def __init__(
        self, world: World, *, exists: Callable[[str], bool] | None, previous: FileCheck | None = None
    ) -> None:
        self._files: dict[Ident, tuple[tuple[str, str], ...]] = {}
        self._missing: dict[Ident, frozenset[str]] = {}
        self.errors: list[InvalidResource] = []
        if exists is None:
            self.state: tuple[tuple[str, bool], ...] = ()
            return
        known = previous._files if previous is not None else {}
        checked: dict[str, bool] = {}
        for rules in world.rules_by_host.values():
            for rule in rules:
                key = Ident(rule)
                files = known.get(key)
                if files is None:
                    files = rule_files(rule)
                self._files[key] = files
                if not files:
                    continue
                missing = set()
                for field, path in files:
                    if checked.setdefault(path, exists(path)):
                        continue
                    missing.add(path)
                    self.errors.append(
                        InvalidResource(
                            rule.key,
                            field,
                            f"{path} does not exist on this host (the sidecar would refuse the cluster); "
                            "the clusters that use it are left out",
                        )
                    )
                if missing:
                    self._missing[key] = frozenset(missing)
        self.state = tuple(sorted(checked.items()))

    def missing(self, rule: DestinationRule | None) -> frozenset[str]:
        """The files of this rule that do not exist (empty when files are not checked)."""
        if rule is None or not self._missing:
            return frozenset()
        return self._missing.get(Ident(rule), frozenset())
