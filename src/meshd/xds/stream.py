"""The xDS stream state machine, pure: requests and snapshots in, responses out.

Rules (Envoy's xDS protocol): per-stream nonces; a request echoing the last nonce with
`error_detail` is a NACK, without it an ACK; a SotW request with an older nonce is stale and
ignored, except the first request of a type on the stream, which is the initial request whatever
nonce it echoes (a reconnecting Envoy sends the previous server's); subscription changes are
honoured (in delta even with a stale nonce); LDS/CDS with no names are wildcard; a version Envoy
rejected is never sent again; pushes go CDS, EDS, LDS, RDS; after a CDS push EDS is answered again
so the updated clusters can finish warming.
A stream may be built with `refused` type URLs (SDS secrets on a stream without a verified identity):
a request for one is answered `refused`, never subscribed, and nothing of that type is ever sent.
What one stream may subscribe is bounded: MAX_TYPES type URLs (known or not: an unknown type gets an
empty response, as before) and MAX_NAMES names per type; a request beyond is answered `limit`, not
subscribed (the servicer ends the stream with RESOURCE_EXHAUSTED). So every request costs at most
MAX_TYPES types' work: many unknown types cannot make a stream's work quadratic (issue 20, defect 11).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshd.xds.resource import CLUSTER, ENDPOINT, PUSH_ORDER, WILDCARD_TYPES, Snapshot, XdsResource

MAX_TYPES = 16  # Envoy's xDS has about a dozen type URLs; meshd serves five
MAX_NAMES = 100_000  # resource names subscribed per type


@dataclass(frozen=True)
class Request:
    type_url: str
    version_info: str = ""
    response_nonce: str = ""
    resource_names: tuple[str, ...] = ()
    error_detail: str | None = None
    # delta only
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()
    initial_versions: tuple[tuple[str, str], ...] = ()
    # SotW: the bytes of the request's node and names (request_bytes.py), None when it was not laid out so
    names_key: bytes | None = None


@dataclass(frozen=True)
class Response:
    type_url: str
    nonce: str
    version: str
    resources: tuple[XdsResource, ...]
    removed: tuple[str, ...] = ()  # delta only


@dataclass(frozen=True)
class Outcome:
    """What a request meant: initial, ack, nack, stale, subscribe (a changed subscription), refused
    (a type this stream never serves) or limit (more types or names than a stream may subscribe)."""

    kind: str
    type_url: str
    version: str = ""  # the version acked or rejected
    error: str = ""


@dataclass
class TypeState:
    names: frozenset[str] | None = frozenset()  # None = wildcard
    subscribed: bool = False
    sent_version: str | None = None
    sent_nonce: str | None = None
    acked_version: str | None = None
    nack_version: str | None = None
    nack_error: str | None = None
    respond: bool = False  # answer the next time responses are computed
    after_cds: bool = False  # SotW EDS: a CDS push went out; answer the next EDS request
    # version sent per outstanding nonce, to know what an ACK/NACK refers to
    nonce_versions: dict[str, str] = field(default_factory=dict)
    # what the client holds (name -> version): delta, and SotW endpoints/routes
    known: dict[str, str] = field(default_factory=dict)
    # the snapshot `known` was last brought up to date with (SotW endpoints/routes, every delta type; weakly:
    # an old one is not kept alive for this), so the next response looks only at the names changed since
    # (Snapshot.changed_names) instead of every subscribed one
    basis: weakref.ref[Snapshot] | None = None
    requested: tuple[str, ...] | None = None  # SotW: the names of the request `names` was last made from
    requested_key: bytes | None = None  # and that request's names_key


class NameSets:
    """One object per distinct set of subscribed names, shared by the streams given it: a snapshot's
    versions are cached by (type, names), and a lookup with the very same set skips comparing its
    elements (every proxy of a scope subscribes the same hundreds of endpoint names). Bounded: when
    full it starts again (an uninterned set costs a comparison, never a wrong answer)."""

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._sets: dict[frozenset[str], frozenset[str]] = {}

    def __call__(self, names: frozenset[str]) -> frozenset[str]:
        found = self._sets.get(names)
        if found is None:
            if len(self._sets) >= self._limit:
                self._sets.clear()
            found = self._sets[names] = names
        return found


class _Base:
    def __init__(
        self, *, nonce_prefix: str, refused: frozenset[str] = frozenset(), names: NameSets | None = None
    ) -> None:
        self._nonces = (f"{nonce_prefix}-{i}" for i in itertools.count(1))
        self._intern: NameSets = names if names is not None else NameSets(limit=MAX_TYPES)
        self.types: dict[str, TypeState] = {}
        self._order: list[str] | None = None  # the types in push order (_push_order)
        self.refused = refused  # type URLs never served on this stream

    def _refused(self, req: Request) -> Outcome | None:
        if req.type_url in self.refused:
            return Outcome("refused", req.type_url)
        if req.type_url not in self.types and len(self.types) >= MAX_TYPES:
            return Outcome("limit", req.type_url, error=f"more than {MAX_TYPES} type URLs on one stream")
        if len(req.resource_names) + len(req.subscribe) > MAX_NAMES:
            return Outcome("limit", req.type_url, error=f"more than {MAX_NAMES} resource names in one request")
        return None

    def state(self, type_url: str) -> TypeState:
        st = self.types.get(type_url)
        if st is None:
            st = self.types[type_url] = TypeState()
            self._order = None
        return st

    def _push_order(self) -> list[str]:
        """The stream's type URLs in push order (refused ones left out); sorted again only when one is added."""
        if self._order is None:  # (types are added only by state())
            self._order = _ordered(self.types, self.refused)
        return self._order

    def _sent(self, st: TypeState, version: str) -> str:
        nonce = next(self._nonces)
        st.sent_version, st.sent_nonce, st.respond = version, nonce, False
        st.nonce_versions = {nonce: version}  # older nonces are now stale
        return nonce

    def _ack_or_nack(self, st: TypeState, req: Request) -> Outcome:
        version = st.nonce_versions.get(req.response_nonce, req.version_info)
        if req.error_detail is not None:
            st.nack_version, st.nack_error = version, req.error_detail
            return Outcome("nack", req.type_url, version=version, error=req.error_detail)
        st.acked_version = version
        return Outcome("ack", req.type_url, version=version)


class SotwStream(_Base):
    """State-of-the-world ADS stream."""

    def requested_names(self, type_url: str, names_key: bytes | None) -> tuple[str, ...] | None:
        """The names of the last request of `type_url` when `names_key` is that request's names_key
        (the caller then need not read a request's names to know them); else None."""
        st = self.types.get(type_url)
        if names_key is None or st is None or st.requested_key != names_key:
            return None
        return st.requested

    def on_request(self, req: Request) -> Outcome:
        if (refused := self._refused(req)) is not None:
            return refused
        st = self.state(req.type_url)
        names: frozenset[str] | None
        if st.subscribed and (req.resource_names is st.requested or req.resource_names == st.requested):
            names = st.names  # Envoy's ACK repeats its list: no set built (thousands of endpoint names)
        else:
            names = self._intern(frozenset(req.resource_names))
            if not req.resource_names and req.type_url in WILDCARD_TYPES:
                names = None
        if not req.response_nonce or not st.subscribed:
            # The first request of a type on this stream is the initial request even when it echoes a
            # nonce and version this stream never issued: Envoy reconnecting (to a restarted meshd) keeps
            # them. Answered whatever version Envoy holds, as go-control-plane and istiod do.
            st.subscribed, st.names, st.respond, st.requested = True, names, True, req.resource_names
            st.requested_key = req.names_key
            return Outcome("initial", req.type_url)
        if req.response_nonce != st.sent_nonce:
            return Outcome("stale", req.type_url)
        st.requested = req.resource_names  # (st.names now stands for it: set below when it differs)
        st.requested_key = req.names_key
        outcome = self._ack_or_nack(st, req)
        if names is not st.names and names != st.names:  # (an ACK of the same names: the very set, not compared)
            st.names, st.respond = names, True
        if st.after_cds and req.error_detail is None:  # a NACK never re-sends what it rejected
            st.respond, st.after_cds = True, False
        return outcome

    def responses(self, snapshot: Snapshot, *, ready: bool = True) -> list[Response]:
        out: list[Response] = []
        if not ready:
            return out
        for type_url in self._push_order():
            st = self.types[type_url]
            if not st.subscribed:
                continue
            version = snapshot.version(type_url, st.names)
            if not st.respond and version == st.sent_version:
                st.basis = weakref.ref(snapshot)  # the same content: what `known` holds is still current
                continue
            if type_url in WILDCARD_TYPES or st.respond:
                selected = snapshot.select(type_url, st.names)
                resources = tuple(selected)
                st.known = {r.name: r.version for r in selected}
            else:
                # Only Listener and Cluster responses must carry the whole state; endpoints and
                # routes are sent as they change (Envoy keeps the ones a response leaves out).
                resources = _changed(st, snapshot, type_url)
            st.basis = weakref.ref(snapshot)
            if not resources and type_url not in WILDCARD_TYPES and not st.respond:
                st.sent_version = version
                continue
            out.append(Response(type_url, self._sent(st, version), version, resources))
            if type_url == CLUSTER and ENDPOINT in self.types:
                # Envoy re-requests EDS for clusters it is warming; answer that request even if
                # the endpoints did not change, or the cluster waits for its fetch timeout.
                self.types[ENDPOINT].after_cds = True
        return out


class DeltaStream(_Base):
    """Incremental (delta) ADS stream."""

    def on_request(self, req: Request) -> Outcome:
        if (refused := self._refused(req)) is not None:
            return refused
        st = self.state(req.type_url)
        first = not st.subscribed
        changed = False
        if first:
            st.subscribed = True
            st.known = dict(req.initial_versions)
            if req.type_url in WILDCARD_TYPES and (not req.subscribe or "*" in req.subscribe):
                st.names = None
            changed = True
        if req.subscribe:
            explicit = frozenset(n for n in req.subscribe if n != "*")
            if "*" in req.subscribe:
                st.names = None
            elif st.names is not None:
                if len(st.names | explicit) > MAX_NAMES:
                    return Outcome("limit", req.type_url, error=f"more than {MAX_NAMES} resource names subscribed")
                st.names = self._intern(st.names | explicit)
            changed = True
            for name in () if first else explicit:
                # A re-subscription asks for the resource even if the client had it (on the first
                # request, initial_versions says what the client already holds).
                st.known.pop(name, None)
        if req.unsubscribe:
            if st.names is not None:
                st.names = self._intern(st.names - frozenset(req.unsubscribe))
            for name in req.unsubscribe:
                st.known.pop(name, None)
            changed = True
        if changed:
            st.respond = True
        if req.response_nonce:
            if req.response_nonce not in st.nonce_versions:  # (on the first request: a previous server's)
                return Outcome("initial" if first else "subscribe" if changed else "stale", req.type_url)
            outcome = self._ack_or_nack(st, req)
            st.nonce_versions.pop(req.response_nonce, None)
            return outcome
        return Outcome("initial" if first else "subscribe", req.type_url)

    def responses(self, snapshot: Snapshot, *, ready: bool = True) -> list[Response]:
        out: list[Response] = []
        if not ready:
            return out
        for type_url in self._push_order():
            st = self.types[type_url]
            if not st.subscribed:
                continue
            before = st.basis() if st.basis is not None and not st.respond else None
            candidates = snapshot.changed_names(before, type_url) if before is not None else None
            st.basis = weakref.ref(snapshot)  # `known` is brought up to date with it below
            if candidates is None:
                selected = {r.name: r for r in snapshot.select(type_url, st.names)}
                changed = tuple(r for n, r in selected.items() if st.known.get(n) != r.version)
                gone = [n for n in st.known if n not in selected]
                if st.names is not None:
                    gone += [n for n in st.names if n not in selected and n not in st.known and st.respond]
            else:  # only the names that may have changed since `known` was last brought up to date
                changed, gone = _changes_among(st, snapshot, type_url, candidates)
            removed = tuple(sorted(set(gone)))
            if not changed and not removed and not st.respond:
                continue
            if not changed and not removed and st.names is not None and not st.names:
                st.respond = False
                continue
            version = snapshot.version(type_url, st.names)
            nonce = next(self._nonces)
            st.sent_version, st.sent_nonce, st.respond = version, nonce, False
            st.nonce_versions[nonce] = version
            for r in changed:
                st.known[r.name] = r.version
            for name in removed:
                st.known.pop(name, None)
            out.append(Response(type_url, nonce, version, changed, removed))
            if type_url == CLUSTER and ENDPOINT in self.types:
                eds = self.types[ENDPOINT]
                for r in changed:
                    # An updated cluster warms again and needs its endpoints re-sent.
                    eds.known.pop(r.name, None)
                if changed:
                    eds.basis = None  # what it knows no longer follows a snapshot: compare every name next
        return out


def _changes_among(
    st: TypeState, snapshot: Snapshot, type_url: str, candidates: frozenset[str]
) -> tuple[tuple[XdsResource, ...], list[str]]:
    """Of the names that may have changed, the subscribed resources the client does not hold at their
    version, and the names it holds that are gone (SotW and delta alike)."""
    changed: list[XdsResource] = []
    gone: list[str] = []
    for name in sorted(candidates if st.names is None else candidates & st.names):
        resource = snapshot.get(type_url, name)
        if resource is None:
            if name in st.known:
                gone.append(name)
        elif st.known.get(name) != resource.version:
            changed.append(resource)
    return tuple(changed), gone


def _changed(st: TypeState, snapshot: Snapshot, type_url: str) -> tuple[XdsResource, ...]:
    """SotW endpoints and routes: the subscribed resources whose version the client does not hold, and
    `known` brought up to date (a name gone from the snapshot is forgotten: sent again if it returns).
    Looks only at the names changed since `basis` when the snapshots' layers tell them."""
    names, known = st.names, st.known
    before = st.basis() if st.basis is not None else None
    candidates = snapshot.changed_names(before, type_url) if before is not None else None
    if candidates is None:
        selected = snapshot.select(type_url, names)
        st.known = {r.name: r.version for r in selected}
        return tuple(r for r in selected if known.get(r.name) != r.version)
    changed, gone = _changes_among(st, snapshot, type_url, candidates)
    known.update((r.name, r.version) for r in changed)
    for name in gone:
        del known[name]
    return changed


def _ordered(types: Iterable[str], refused: frozenset[str]) -> list[str]:
    rank = {t: i for i, t in enumerate(PUSH_ORDER)}
    return sorted((t for t in types if t not in refused), key=lambda t: (rank.get(t, len(rank)), t))
