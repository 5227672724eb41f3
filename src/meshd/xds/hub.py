"""The hub between the push loop and the ADS streams: it holds the current generation and the
connected proxies, and wakes every stream when a new generation is published. It sees generation
only through the small `Generation` protocol (as go-control-plane's server sees a ConfigWatcher).

Building one proxy's snapshot may fail (a bug, or an input no validation caught): that proxy keeps
what it held (the last good snapshot; nothing yet for a new one), every other proxy is still updated,
and the failure is kept in `failures` for the push loop to report. Nothing here stops meshd."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from meshd.gcpolicy import GcPolicy
from meshd.translate.envoyfilter.bootstrap import BOOTSTRAP_PATCH
from meshd.translate.proxy import Proxy
from meshd.xds.inbox import Inbox
from meshd.xds.isolation import Isolation, Rejected
from meshd.xds.resource import EMPTY_SNAPSHOT, Snapshot
from meshd.xds.stream import DeltaStream, SotwStream


class Generation(Protocol):
    """What the hub needs of one generation of config."""

    @property
    def revision(self) -> int:
        """The store revision it was built from."""
        ...

    def scope_key(self, proxy: Proxy) -> Hashable:
        """What decides the proxy's config besides its address (proxies with equal keys share layers)."""
        ...

    def snapshot(self, proxy: Proxy) -> Snapshot: ...

    def still_current_many(self, key: Hashable, held: Sequence[tuple[Proxy, Snapshot]]) -> Sequence[bool] | bool:
        """For proxies that held a snapshot built by the previous generation under scope `key`: whether it
        is what this one would build (asked once per scope: what the proxies share is looked at once).
        A bare True: every one of them is (the hub then looks at none of them). `held` is the same list object
        from push to push while no proxy of the scope came, went or was given another snapshot."""
        ...


@dataclass(frozen=True)
class BuildFailure:
    """A proxy whose snapshot could not be built by the current generation."""

    node_id: str
    error: str  # exception type and message


@dataclass
class Connection:
    conn_id: str
    proxy: Proxy
    stream: SotwStream | DeltaStream
    connected_at: float
    inbox: Inbox = field(default_factory=Inbox)  # requests and the pending push; publish never waits on it
    snapshot: Snapshot | None = None  # what this proxy should hold now
    scope_key: Hashable | None = None  # the scope that snapshot was built for
    # type URL -> (nonce of the last response, time of the config change it carried): for the
    # convergence time; one entry per type, so superseded responses leave nothing behind
    change_times: dict[str, tuple[str, float]] = field(default_factory=dict)
    verified_namespace: str | None = None  # the caller's namespace verified on the secure port, else None
    isolation: Isolation = field(default_factory=Isolation)  # what it rejected, held back (isolation.py)
    secret_refusals: int = 0  # SDS requests refused on this stream (access.py)

    @property
    def delta(self) -> bool:
        return isinstance(self.stream, DeltaStream)

    @property
    def agent_only(self) -> bool:
        """A node agent's stream for its EnvoyFilter bootstrap patches, not an Envoy (istioctl's proxy list
        and config dumps leave it out)."""
        return bool(self.stream.types) and set(self.stream.types) <= {BOOTSTRAP_PATCH}

    @property
    def push_pending(self) -> bool:
        return self.inbox.push_pending

    def notify(self) -> None:
        self.inbox.push()


class Hub:
    def __init__(self, *, gc_policy: GcPolicy | None = None) -> None:
        """`gc_policy`: a proxy's build when it connects runs under `GcPolicy.building` (gcpolicy.py)."""
        self._gc = gc_policy
        self.generator: Generation | None = None
        self.changed_at = 0.0  # when the change behind the current generation was first seen
        self.generation = 0
        self.connections: dict[str, Connection] = {}
        # the connections holding a snapshot, by the scope it was built for (kept between pushes, so a push
        # asks about each scope once and looks at no connection of a scope whose proxies keep what they hold)
        self._scopes: dict[Hashable, dict[str, Connection]] = {}
        self._unplaced: dict[str, Connection] = {}  # holding nothing yet (a failed build): looked up each push
        # per scope: its connections and what they hold, as a push asks about them; kept while no connection of the
        # scope comes, goes or is given another snapshot (so an unchanged scope is asked with the very same list,
        # which the generation may recognise: `Generation.still_current_many`)
        self._held: dict[Hashable, tuple[list[Connection], list[tuple[Proxy, Snapshot]]]] = {}
        self._ids = itertools.count(1)
        # node id -> why its snapshot could not be built by the current generation
        self.failures: dict[str, BuildFailure] = {}

    @property
    def ready(self) -> bool:
        return self.generator is not None

    def publish(self, generator: Generation, *, changed_at: float) -> int:
        """Install a new generation; wake only the streams whose snapshot changed. Returns their number."""
        self.generator, self.changed_at = generator, changed_at
        self.generation += 1
        self.failures = {}
        stale = list(self._unplaced.values())
        for key, members in self._scopes.items():  # (refiled only below, once every scope was asked)
            cached = self._held.get(key)
            if cached is None:
                conns = list(members.values())
                cached = self._held[key] = (conns, [(conn.proxy, conn.snapshot) for conn in conns])  # type: ignore[misc]
            held, pairs = cached
            current: Sequence[bool | None] | bool
            try:
                current = generator.still_current_many(key, pairs)
            except Exception:  # asked again one by one: only a proxy that fails keeps its last snapshot
                current = [self._still_current(generator, key, conn) for conn in held]
            if current is True:
                continue
            assert not isinstance(current, bool)
            stale += (conn for conn, kept in zip(held, current, strict=True) if kept is False)
        woken = 0
        for conn in stale:
            try:
                new_key, snapshot = generator.scope_key(conn.proxy), generator.snapshot(conn.proxy)
            except Exception as exc:  # this proxy keeps its last good snapshot; the others go on
                self._failed(conn.proxy, exc)
                continue
            self._place(conn, new_key)
            if snapshot is not conn.snapshot:
                conn.snapshot = snapshot
                conn.notify()
                woken += 1
        return woken

    def _place(self, conn: Connection, key: Hashable | None) -> None:
        """File the connection under the scope its snapshot is built for (None: under none); called whenever its
        snapshot may have changed."""
        self._unplaced.pop(conn.conn_id, None)
        self._held.pop(conn.scope_key, None)
        self._held.pop(key, None)
        if conn.scope_key is not None and conn.scope_key != key:
            members = self._scopes.get(conn.scope_key)
            if members is not None:
                members.pop(conn.conn_id, None)
                if not members:
                    del self._scopes[conn.scope_key]
        conn.scope_key = key
        if key is not None:
            self._scopes.setdefault(key, {})[conn.conn_id] = conn

    def _still_current(self, generator: Generation, key: Hashable, conn: Connection) -> bool | None:
        """One proxy's verdict; None when it could not be told (the proxy keeps what it holds)."""
        assert conn.snapshot is not None
        try:
            verdict = generator.still_current_many(key, [(conn.proxy, conn.snapshot)])
            return verdict if isinstance(verdict, bool) else verdict[0]
        except Exception as exc:
            self._failed(conn.proxy, exc)
            return None

    def _failed(self, proxy: Proxy, exc: Exception) -> None:
        self.failures[proxy.node_id] = BuildFailure(proxy.node_id, f"{type(exc).__name__}: {exc}")

    def snapshot_for(self, proxy: Proxy) -> Snapshot:
        return self.generator.snapshot(proxy) if self.generator is not None else EMPTY_SNAPSHOT

    def connect(
        self, *, proxy: Proxy, stream: SotwStream | DeltaStream, now: float, inbox: Inbox | None = None
    ) -> Connection:
        conn = Connection(
            conn_id=f"{proxy.node_id}-{next(self._ids)}",
            proxy=proxy,
            stream=stream,
            connected_at=now,
            inbox=inbox if inbox is not None else Inbox(),
        )
        if self.generator is not None:
            try:
                with self._gc.building() if self._gc is not None else contextlib.nullcontext():
                    key, conn.snapshot = self.generator.scope_key(proxy), self.generator.snapshot(proxy)
                self._place(conn, key)
            except Exception as exc:  # served nothing until a generation builds it
                conn.snapshot = None
                self._failed(proxy, exc)
        if conn.scope_key is None:
            self._unplaced[conn.conn_id] = conn
        self.connections[conn.conn_id] = conn
        return conn

    def disconnect(self, conn: Connection) -> None:
        if self.connections.pop(conn.conn_id, None) is not None:
            self._place(conn, None)

    def rejected(self) -> list[tuple[Proxy, Rejected]]:
        """Every resource version a connected proxy rejected and is held back from it (isolation.py)."""
        return [(c.proxy, r) for c in self.connections.values() if c.isolation.holding for r in c.isolation.rejected]

    def find(self, proxy_id: str) -> Connection | None:
        """By full node id or Istio's short `<pod>.<namespace>` proxy id; newest connection wins."""
        for conn in reversed(list(self.connections.values())):
            p = conn.proxy
            if proxy_id in (p.node_id, f"{p.pod}.{p.namespace}") and not conn.agent_only:
                return conn
        return None
