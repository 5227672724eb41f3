"""Which scope a proxy belongs to: everything about a proxy that can change its outbound config
(namespace, Sidecar, locality and failover labels, sourceLabels matches, DestinationRule workload
selectors, SDS, traffic capture), computed once per
distinct (namespace, labels, locality, SDS, capture) for one World."""

from __future__ import annotations

from meshd.model.world import World
from meshd.translate.policy import failover_priority_labels
from meshd.translate.proxy import Proxy
from meshd.translate.scope import ScopeKey, same_items, select_sidecar


class ScopeKeys:
    def __init__(self, world: World, *, root_namespace: str, previous: ScopeKeys | None = None) -> None:
        self.world = world
        self._root = root_namespace
        self._keys: dict[tuple[str, tuple[tuple[str, str], ...], str, bool, bool], ScopeKey] = {}
        self._failover_labels: frozenset[str] | None = None
        # one object per distinct key, the previous generation's when equal: proxies of one scope with other
        # labels share it, so grouping and looking up by key compares identities, not fields
        self._interned: dict[ScopeKey, ScopeKey] = {}
        self._prev_interned = previous._interned if previous is not None else {}
        # whether nothing a key reads of the World changed since the previous generation: a proxy whose
        # workload did not change has the key it had
        self.carried = False
        if previous is not None and previous._root == root_namespace and _same_key_inputs(previous.world, world):
            self.carried = True
            # nothing a key is derived from changed: the keys found so far hold (the cache key holds the rest)
            self._keys = dict(previous._keys)
            self._interned = dict(previous._interned)
            self._failover_labels = previous._failover_labels

    def for_proxy(self, proxy: Proxy) -> ScopeKey:
        workload = self.world.workloads.get(proxy.ip)
        labels = workload.labels if workload is not None else ()
        locality = workload.locality if workload is not None else ""
        cached = self._keys.get((proxy.namespace, labels, locality, proxy.sds, proxy.capture))
        if cached is None:
            sidecar, _ = select_sidecar(
                self.world, namespace=proxy.namespace, labels=dict(labels), root_namespace=self._root
            )
            # The proxy's locality matters to its endpoints (locality failover / distribute), and so
            # do its values of the labels a failoverPriority names.
            named = self._failover_label_names()
            failover_labels = tuple((k, v) for k, v in labels if k in named) if locality else ()
            source = tuple(all((k, v) in labels for k, v in sel) for sel in self.world.source_selectors)
            rule_selection = tuple(
                namespace == proxy.namespace and all((k, v) in labels for k, v in sel)
                for namespace, sel in self.world.rule_selectors
            )
            made = ScopeKey(
                proxy.namespace,
                sidecar.key if sidecar is not None else None,
                locality=locality,
                failover_labels=failover_labels,
                source=source,
                sds=proxy.sds,
                capture=proxy.capture,
                rule_selection=rule_selection,
            )
            cached = self._interned.get(made)
            if cached is None:
                cached = self._interned[made] = self._prev_interned.get(made, made)
            self._keys[(proxy.namespace, labels, locality, proxy.sds, proxy.capture)] = cached
        return cached

    def _failover_label_names(self) -> frozenset[str]:
        """Every label some DestinationRule's failoverPriority names (once per World)."""
        if self._failover_labels is None:
            names: set[str] = set()
            for rules in self.world.rules_by_host.values():
                for rule in rules:
                    names.update(failover_priority_labels(rule))
            self._failover_labels = frozenset(names)
        return self._failover_labels


def _same_key_inputs(before: World, after: World) -> bool:
    """What a scope key reads of the World besides the proxy's own (namespace, labels, locality): the
    Sidecars, the DestinationRules (failover labels, workload selectors) and the sourceLabels selectors."""
    return (
        same_items(before.sidecars, after.sidecars)
        and same_items(before.rules_by_host, after.rules_by_host)
        and before.source_selectors == after.source_selectors
        and before.rule_selectors == after.rule_selectors
    )
