"""Which worker serves a connection to the secure port (`meshd serve --workers N --worker-placement
namespace`, the default).

Each worker builds the config of the proxies it serves, one scope at a time (a scope: what a namespace's
Sidecar lets its proxies see). When the kernel spreads connections (SO_REUSEPORT), every worker soon
holds proxies of every namespace and builds every scope, so generation and memory grow with N. Instead,
the main process (which holds the Pods) accepts the connection and picks the worker by the namespace of
the pod at the caller's address. The proxies of a namespace then meet in one worker, and its scopes are
built once.

- A namespace's worker is its first choice by rendezvous hashing, unless that worker would then serve
  more than `SLACK` over its share of the addresses. In that case it is the next choice that would not
  (bounded loads, filled largest namespace first). The choice depends only on the addresses the store
  holds, so it is the same in every run.
- While a namespace's worker is down (restarting), its callers go to the next live worker in the
  namespace's rendezvous order, and come back when it does.
- A namespace that holds more than its share of the addresses (more than 1/N of them) is spread by pod
  address instead, so that one large namespace does not load one worker.
- An address no Pod or WorkloadEntry has (a NAT in between, an unregistered VM, a client on loopback) goes
  to a live worker at random, as the kernel spreads connections. (Not in turn: a client that opens
  connections in a fixed pattern, such as a node agent's CSR and then its Envoy's xDS, would always land
  on the same worker.)
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meshd.api.kube import Pod
from meshd.api.meta import Resource
from meshd.api.networking import WorkloadEntry


def rendezvous(key: str, workers: Iterable[int]) -> list[int]:
    """`workers` in the order `key` prefers them (highest random weight first); the first live one serves."""
    return sorted(workers, key=lambda w: hashlib.blake2b(f"{key}|{w}".encode(), digest_size=8).digest(), reverse=True)


def plain_address(address: str) -> str:
    """An IPv4 caller as accepted by a dual-stack socket (`::ffff:10.0.0.1`) as its IPv4 address."""
    return address[7:] if address.startswith("::ffff:") and "." in address else address


SLACK = 0.1  # how far above its share of the addresses a worker may be loaded by a namespace's first choice


@dataclass(frozen=True)
class AddressBook:
    namespace_of: Mapping[str, str]  # workload address -> its namespace
    spread: frozenset[str]  # namespaces holding more than their share: placed by address
    owner: Mapping[str, int] = field(default_factory=dict)  # namespace -> the worker that serves it

    @classmethod
    def of(cls, addresses: Iterable[tuple[str, str]], workers: int) -> AddressBook:
        """The book of (address, namespace) pairs, for `workers` workers."""
        namespace_of = dict(addresses)
        sizes = Counter(namespace_of.values())
        share = len(namespace_of) / max(1, workers)
        spread = frozenset(ns for ns, size in sizes.items() if workers > 1 and size > share)
        cap = math.ceil((1 + SLACK) * share)
        load = [0] * max(1, workers)
        owner: dict[str, int] = {}
        for namespace in sorted(sizes, key=lambda ns: (-sizes[ns], ns)):
            if namespace in spread:
                continue
            choices = rendezvous(f"namespace/{namespace}", range(len(load)))
            fits = [w for w in choices if load[w] + sizes[namespace] <= cap]
            chosen = fits[0] if fits else min(choices, key=lambda w: load[w])
            owner[namespace] = chosen
            load[chosen] += sizes[namespace]
        return cls(namespace_of=namespace_of, spread=spread, owner=owner)

    def key(self, address: str) -> str | None:
        """What places a caller at `address`: its namespace, or its address in a spread namespace; None
        for an address of no known workload."""
        address = plain_address(address)
        namespace = self.namespace_of.get(address)
        if namespace is None:
            return None
        return f"address/{address}" if namespace in self.spread else f"namespace/{namespace}"

    def owner_of(self, address: str) -> int | None:
        """The worker the bounded packing gave the namespace at `address`; None for an address placed by
        itself (unknown, or in a spread namespace)."""
        namespace = self.namespace_of.get(plain_address(address))
        return self.owner.get(namespace) if namespace is not None else None


def workload_addresses(resources: Iterable[Resource]) -> list[tuple[str, str]]:
    """(address, namespace) of the Pods (their pod IP) and WorkloadEntries (their address) given."""
    pairs: list[tuple[str, str]] = []
    for resource in resources:
        if isinstance(resource, Pod) and resource.status.pod_ip:
            pairs.append((resource.status.pod_ip, resource.metadata.namespace))
        elif isinstance(resource, WorkloadEntry) and resource.spec.address:
            pairs.append((resource.spec.address, resource.metadata.namespace))
    return pairs


class Placement:
    """Picks the worker for each caller: by its key's preference among the live workers, or at random."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def order(self, book: AddressBook, address: str, live: Sequence[int]) -> list[int]:
        """The live workers to try for a caller at `address`, best first (empty: none is live)."""
        key = book.key(address)
        if key is None:
            return self._rng.sample(list(live), len(live))
        ranked = rendezvous(key, live)
        owner = book.owner_of(address)
        if owner in ranked:
            ranked.remove(owner)
            ranked.insert(0, owner)
        return ranked
